"""`duplex train lm`: train the default LM (Mamba2/attention hybrid + depformer + vision adapter) on the
synthesized dialogues, teacher-forced with exactly the token layout `LMGenerator` streams with.

Both tracks are encoded once with the trained codec (cached). Checkpoints `RUN/lm_train.pt` (resumed
automatically); `--export FOLDER` writes a complete model folder (codec + LM + tokenizer) usable by every command.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from agent.training.common import (
    add_loop_args,
    data_folders,
    load_checkpoint,
    optimizer_step,
    pick_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    warmup_cosine,
)
from agent.training.scenes import render

IGNORE = -100


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="train the LM on codec-encoded dialogues (needs a trained codec)")
    add_loop_args(p, run="runs/lm", batch=16, lr=3e-3, save_every=200)
    p.add_argument("--codec", default="runs/codec/codec.safetensors", help="trained codec weights")
    p.add_argument("--frames", type=int, default=80, help="frames per training sequence (80 = 6.4 s)")
    p.add_argument("--export", help="write the trained model folder here (e.g. agent/weights/default)")
    p.add_argument("--init", help="start a new run from these LM weights (e.g. agent/weights/default/lm.safetensors, "
                                  "or another run's lm_train.pt to keep its auxiliary heads too) instead of "
                                  "random ones; ignored when the run has a checkpoint. Weights of "
                                  "another codebook count load where names and shapes match (the rest start "
                                  "fresh, and are listed)")
    p.add_argument("--aux-weight", type=float, default=0.5,
                   help="weight of the training-only auxiliary losses (question CTC on the user track, scene "
                        "classification); 0 turns them off (default 0.5)")
    p.add_argument("--kind-weights", default="", type=parse_kind_weights, metavar="KIND=W,...",
                   help="draw dialogues of these kinds W times as often (e.g. add=3,see=2; kinds: add sub count "
                        "spell greet see colour howmany silence interrupted); the rest weigh 1")
    p.add_argument("--speaker-warps", type=int, default=0, metavar="N",
                   help="also encode each dialogue's user track as said by N speakers drawn in the vocoder "
                        "codec's feature space (formant shift, tilt, channel colour, pitch); each draw of a "
                        "dialogue then picks one of its N + 1 versions (default 0: the recorded voice only)")
    p.add_argument("--fixed-scenes", action="store_true",
                   help="show each camera dialogue's scene in one fixed layout (rounds 1-4) instead of a freshly "
                        "drawn layout of the same shapes every time the dialogue is drawn")
    p.set_defaults(handler=run)


def parse_kind_weights(spec: str) -> dict[str, float]:
    """"add=3,see=2" -> {"add": 3.0, "see": 2.0}."""
    weights = {}
    for item in filter(None, spec.split(",")):
        kind, sep, value = item.partition("=")
        try:
            weights[kind.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or weights.get(kind.strip(), -1) < 0:
            raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT (a number >= 0), got {item!r}")
    return weights


class Batcher:
    """Random batches of fixed-length token grids in the generator's delayed layout."""

    def __init__(self, examples, cfg, silence: torch.Tensor, frames: int, rng: random.Random, tokenizer=None,
                 kind_weights: dict[str, float] | None = None, fresh_scenes: bool = False):
        self.examples, self.cfg, self.frames, self.rng = examples, cfg, frames, rng
        # Kinds the model gets wrong most can be drawn more often; None keeps uniform draws (and their RNG stream).
        self.weights = ([kind_weights.get(e.meta["kind"], 1.0) for e in examples] if kind_weights else None)
        # A fresh layout per draw: the image encoder must count and name shapes, not remember pictures.
        self.fresh_scenes = fresh_scenes
        self.tokenizer = tokenizer  # given: batches also carry the auxiliary targets (question ids, scene labels)
        self.silence = silence.long()  # [K] codes of digital silence
        self.delays = torch.tensor(cfg.delays)
        self.initial = torch.tensor([cfg.text_card] + [cfg.card] * cfg.n_q)

    def grid(self, ex) -> torch.Tensor:
        """[1 + 2K, frames] undelayed rows: text, agent codebooks, user codebooks (padded with silence)."""
        K, T = self.cfg.dep_q, self.frames
        g = torch.empty(1 + 2 * K, T, dtype=torch.long)
        g[0] = self.cfg.text_padding_id
        g[1:1 + K] = self.silence[:, None]
        g[1 + K:] = self.silence[:, None]
        t = min(T, ex.text.shape[0])
        g[0, :t] = ex.text[:t]
        g[1:1 + K, :t] = ex.agent[:K, :t].long()
        g[1 + K:, :t] = self.user_codes(ex)[:K, :t].long()
        return g

    def user_codes(self, ex) -> torch.Tensor:
        """The recorded user track, or one of its drawn speakers (each version equally likely)."""
        if ex.alt_users is None:  # also examples cached before drawn speakers existed (the field's default)
            return ex.user
        pick = self.rng.randrange(ex.alt_users.shape[0] + 1)
        return ex.user if pick == 0 else ex.alt_users[pick - 1]

    def delayed(self, g: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(g)
        for r, d in enumerate(self.delays.tolist()):
            out[r, :d] = self.initial[r]
            out[r, d:] = g[r, :g.shape[1] - d]
        return out

    def batch(self, n: int):
        if self.weights is None:
            exs = [self.rng.choice(self.examples) for _ in range(n)]
        else:
            exs = self.rng.choices(self.examples, weights=self.weights, k=n)
        G = torch.stack([self.delayed(self.grid(e)) for e in exs])  # [B, R, T]
        s = torch.arange(self.frames)
        inputs = torch.where(s[None, None, :] <= self.delays[None, :, None], self.initial[None, :, None], G)
        K = self.cfg.dep_q
        targets = G[:, : 1 + K, 1:].clone()  # what step s must produce: column s + 1
        audio = targets[:, 1:]
        audio[audio >= self.cfg.card] = IGNORE
        text = targets[:, 0]
        text[text >= self.cfg.text_card] = IGNORE
        images = [self.image(e) for e in exs]
        aux = self.aux_targets(exs) if self.tokenizer is not None else None
        return inputs[:, :, :-1], targets, images, aux

    def image(self, ex) -> torch.Tensor | None:
        scene = (ex.meta.get("qa") or {}).get("scene")
        if ex.image is None or not self.fresh_scenes or not scene:
            return ex.image
        img = render(scene["shape"], scene["colour"], scene["count"], size=ex.image.shape[-1],
                     seed=self.rng.randrange(1 << 31))
        return torch.from_numpy(img).permute(2, 0, 1).contiguous()

    def aux_targets(self, exs):
        from agent.training.aux_heads import AuxTargets, scene_labels

        questions, windows, scenes = [], [], []
        for e in exs:
            qa = e.meta.get("qa") or {}
            speech = torch.nonzero((e.text != self.cfg.text_padding_id) & (e.text != self.cfg.text_end_padding_id))
            if qa.get("question") and speech.numel():
                # steps 0..first answer frame: by then the whole question has been heard (codebook 0 undelayed)
                windows.append(min(int(speech[0, 0]) + 2, self.frames - 1))
                questions.append(torch.tensor(self.tokenizer.encode(qa["question"]), dtype=torch.long))
            else:
                windows.append(0)
                questions.append(torch.zeros(0, dtype=torch.long))
            scenes.append(scene_labels(qa.get("scene")))
        return AuxTargets(questions, windows, scenes)


def lm_loss(model, inputs, targets, images, text_pad_weight: float = 0.5, aux_heads=None, aux=None,
            aux_weight: float = 0.5):
    """Text + audio cross-entropy; with `aux_heads` and `aux` also the auxiliary question CTC and scene losses."""
    from models.vision.cross_attention import VisionState

    cfg = model.cfg
    B, _, T = inputs.shape
    state = model.init_state(B, chunk=T)
    use_aux = aux_heads is not None and aux is not None
    scene_loss = None
    if state.vision is not None:
        present = torch.tensor([im is not None for im in images], device=inputs.device)
        if present.any():
            stack = torch.stack([im if im is not None else torch.zeros_like(next(i for i in images if i is not None))
                                 for im in images]).to(inputs.device).float() / 255
            tokens = model.encode_image(stack)
            if use_aux:
                summary = model.image_encoder.cfg.summary  # the whole-image tokens must name the scene
                scene_loss = aux_heads.scene_loss(tokens[:, -summary:] if summary else tokens, aux.scene)
            keys, values = model.transformer.shared_xa.project_kv(tokens)
            state.vision = VisionState(keys=keys, values=values, present=present, gate=state.vision.gate)
    hidden, text_logits = model.forward_text(inputs, state)
    text_t = targets[:, 0]
    weights = torch.where((text_t == cfg.text_padding_id) | (text_t == cfg.text_end_padding_id),
                          text_pad_weight, 1.0)
    ce_text = F.cross_entropy(text_logits.reshape(-1, text_logits.shape[-1]).float(), text_t.reshape(-1),
                              ignore_index=IGNORE, reduction="none")
    valid = (text_t.reshape(-1) != IGNORE).float()
    text_loss = (ce_text * weights.reshape(-1) * valid).sum() / (weights.reshape(-1) * valid).sum().clamp_min(1)
    # depformer, teacher-forced: sub-step k sees the previous target (text for k = 0)
    dep_targets = targets.permute(0, 2, 1).reshape(B * T, -1)  # [N, 1 + K]
    prev = dep_targets[:, :-1].clamp_min(0)
    logits = model.depformer_parallel(hidden.reshape(B * T, -1), prev)  # [N, K, card]
    audio_loss = F.cross_entropy(logits.reshape(-1, cfg.card).float(), dep_targets[:, 1:].reshape(-1),
                                 ignore_index=IGNORE)
    loss = text_loss + audio_loss
    parts = {"text": float(text_loss.detach()), "audio": float(audio_loss.detach())}
    if use_aux:
        asr = aux_heads.question_loss(hidden, aux)
        loss = loss + aux_weight * asr
        parts["asr"] = float(asr.detach())
        if scene_loss is not None:
            loss = loss + aux_weight * scene_loss
            parts["scene"] = float(scene_loss.detach())
    return loss, parts


def export_bundle(folder: Path, codec_path: Path, lm_path: Path, tokenizer: Path, description: str) -> None:
    from agent.bundle import write_manifest
    from agent.training.synth import NOISE_FLOOR

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(codec_path, folder / "codec.safetensors")
    shutil.copyfile(lm_path, folder / "lm.safetensors")
    if tokenizer.resolve() != (folder / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer, folder / "tokenizer.model")
    write_manifest(folder, description, True, "tokenizer.model",
                   {"temperature": 0.6, "top_k": 50, "text_temperature": 0.3, "text_top_k": 10},
                   input_noise_floor=NOISE_FLOOR)


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of `state` whose name and shape match `model`'s; returns the names left as they were
    (e.g. per-codebook weights when the codec's codebook count changed)."""
    own = model.state_dict()
    fresh = [k for k in own if k not in state or state[k].shape != own[k].shape]
    with torch.no_grad():
        for k, t in own.items():
            if k not in fresh:
                t.copy_(state[k])
    return fresh


def run(args) -> int:
    from agent.default_model import lm_config
    from agent.registry import EMBEDDED_DIR
    from agent.training.lm_data import load_or_encode
    from models.codec import load_codec
    from models.lm import LMModel, save_lm
    from models.lm.tokenizer import TextTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    run_dir = Path(args.run)
    codec_path = Path(args.codec)
    if not codec_path.is_file():
        from agent.cli import UserFacingError

        raise UserFacingError(f"codec weights not found: {codec_path} (run `duplex train codec` first)")
    tok_path = run_dir / "tokenizer.model"
    if not tok_path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(EMBEDDED_DIR / "default" / "tokenizer.model", tok_path)
    tokenizer = TextTokenizer(tok_path)
    codec = load_codec(codec_path, device=device)
    seed_everything(args.seed)
    cfg = lm_config(codebooks=codec.num_codebooks)
    model = LMModel(cfg).to(device).train()
    aux_heads = None
    if args.aux_weight > 0:
        from agent.training.aux_heads import AuxHeads

        image_dim = model.image_encoder.cfg.dim if model.image_encoder is not None else None
        aux_heads = AuxHeads(cfg.dim, cfg.text_card, image_dim).to(device).train()
    image_size = model.image_encoder.cfg.image_size if model.image_encoder is not None else 64
    if args.speaker_warps:
        from agent.cli import UserFacingError
        from models.codec.vocoder import VocoderCodec

        if args.speaker_warps < 0:
            raise UserFacingError("--speaker-warps must be 0 or more")
        if not isinstance(codec, VocoderCodec):
            raise UserFacingError(f"--speaker-warps needs a vocoder codec (`duplex train codec --kind vocoder`); "
                                  f"{codec_path} is a neural codec")
    examples = load_or_encode(data_folders(args.data), run_dir / "examples.pt", codec, tokenizer, image_size,
                              speaker_warps=args.speaker_warps)
    with torch.no_grad():
        silence = codec.encode(torch.zeros(1, 1, codec.frame_size * 4, device=device))[0, :, -1].cpu()
    rng = random.Random(args.seed)
    batcher = Batcher(examples, cfg, silence, args.frames + 1, rng, tokenizer if aux_heads is not None else None,
                      kind_weights=args.kind_weights, fresh_scenes=not args.fixed_scenes)
    if args.kind_weights:
        unknown = set(args.kind_weights) - {e.meta["kind"] for e in examples}
        if unknown:
            print(f"warning: --kind-weights names kinds not in the data: {', '.join(sorted(unknown))}")
    params = list(model.parameters()) + (list(aux_heads.parameters()) if aux_heads is not None else [])
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 200, args.steps))
    step = 0
    ckpt_path = run_dir / "lm_train.pt"
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if (aux_heads is not None) != ("aux" in ckpt):
            from agent.cli import UserFacingError

            raise UserFacingError(f"{ckpt_path} was trained with{'out' if 'aux' not in ckpt else ''} auxiliary "
                                  "losses: resume with the same --aux-weight setting (0 or not), or use a new --run")
        if aux_heads is not None:
            aux_heads.load_state_dict(ckpt["aux"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        step = ckpt["step"]
        set_rng_state(ckpt["rng"])
        rng.setstate(ckpt["batch_rng"])
        print(f"resumed from {ckpt_path} at step {step}")
    elif args.init:
        from models.lm import load_lm

        init = Path(args.init)
        if init.suffix == ".pt":  # another run's training checkpoint: its LM and its auxiliary heads
            other = load_checkpoint(init)
            if other is None or "model" not in other:
                from agent.cli import UserFacingError

                raise UserFacingError(f"{init} is not an LM training checkpoint (`RUN/lm_train.pt`)")
            state = other["model"]
            if aux_heads is not None and "aux" in other:
                load_matching(aux_heads, other["aux"])
        else:
            state = load_lm(init).state_dict()
        fresh = load_matching(model, state)
        print(f"initialized from {args.init}" + (f"; {len(fresh)} tensors of other shapes start fresh: "
                                                  f"{', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}"
                                                  if fresh else ""))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"LM: {n_params:.2f}M params, {len(examples)} dialogues, device {device}")

    def save():
        extra = {"aux": aux_heads.state_dict()} if aux_heads is not None else {}
        save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                        step=step, rng=rng_state(), batch_rng=rng.getstate(), **extra)
        save_lm(model, run_dir / "lm.safetensors")

    t0 = time.time()
    with tqdm(total=args.steps, initial=step, desc="train lm", unit="step") as bar:
        while step < args.steps:
            inputs, targets, images, aux = batcher.batch(args.batch)
            loss, parts = lm_loss(model, inputs.to(device), targets.to(device), images, aux_heads=aux_heads,
                                  aux=aux, aux_weight=args.aux_weight)
            optimizer_step(loss, opt, sched, params)
            step += 1
            bar.update()
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
            if step % args.save_every == 0 or step == args.steps:
                save()
    print(f"done: step {step}, {time.time() - t0:.0f} s this run")
    if args.export:
        export_bundle(Path(args.export), codec_path, run_dir / "lm.safetensors", tok_path,
                      f"trained by `duplex train` ({step} LM steps) on synthesized dialogues")
        print(f"exported the model folder to {args.export}")
    return 0
