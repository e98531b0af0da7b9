"""`duplex train lm`: train the default LM (Mamba2/attention hybrid + depformer + vision adapter) on the
synthesized dialogues, teacher-forced with exactly the token layout `LMGenerator` streams with.

Both tracks are encoded once with the trained codec (cached). Checkpoints `RUN/lm_train.pt` (resumed
automatically); `--export FOLDER` writes a complete model folder (codec + LM + tokenizer) usable by every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from agent.training.common import (
    add_loop_args,
    append_log,
    data_folders,
    load_checkpoint,
    optimizer_step,
    rng_state,
    save_checkpoint,
    seed_everything,
    warmup_cosine,
)
from agent.training.distributed import names_outside, zero_touch
from agent.training.scenes import render

IGNORE = -100


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="train the LM on codec-encoded dialogues (needs a trained codec)")
    add_loop_args(p, run="runs/lm", batch=16, lr=3e-3, save_every=200)
    p.add_argument("--codec", default="runs/codec/codec.safetensors", help="trained codec weights")
    p.add_argument("--frames", type=int, default=80, help="frames per training sequence (80 = 6.4 s)")
    p.add_argument("--context", type=int, metavar="FRAMES",
                   help="the attention layers' window in frames (default: the model's own; the default model's "
                        "is 250 = 20 s). The exported model keeps it; give it again when resuming a run")
    p.add_argument("--pattern", help="a fresh model's block pattern instead of the default model's MMA (A: "
                                     "attention, M: Mamba2; 'A' = all attention, e.g. a teacher to distil from)")
    p.add_argument("--export", help="write the trained model folder here (e.g. agent/weights/default); with --lora "
                                    "the adapter is merged into it")
    p.add_argument("--init", metavar="MODEL_OR_WEIGHTS",
                   help="start from a model: a registered name or model folder (`default`, a kyutai Moshi release "
                        "folder, a fine-tune; its codec and tokenizer are used, --codec is ignored), LM weights "
                        "(e.g. agent/weights/default/lm.safetensors), or another run's lm_train.pt (keeps its "
                        "auxiliary heads too); ignored when the run has a checkpoint. Weights of another codebook "
                        "count load where names and shapes match (the rest start fresh, and are listed)")
    p.add_argument("--lora", type=int, metavar="RANK",
                   help="fine-tune low-rank adapters on the backbone's linear layers, base weights frozen")
    p.add_argument("--lora-scale", type=float, default=2.0, help="adapter update scale (default 2.0)")
    p.add_argument("--lora-depformer", action="store_true", help="also put adapters on the depformer's layers")
    p.add_argument("--full", action="store_true", help="train every weight (the default without --lora)")
    p.add_argument("--export-adapter", metavar="FOLDER",
                   help="with --lora: also write a folder holding only the adapter, merged into --init at load")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard parameters, gradients and optimizer state (FSDP2, per backbone "
                        "block) instead of a full replica per process (DDP)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (weights and optimizer stay float32)")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute each backbone block in the backward pass: less activation memory, ~30%% slower")
    p.add_argument("--aux-weight", type=float, default=0.5,
                   help="weight of the training-only auxiliary losses (question CTC on the user track, scene "
                        "classification); 0 turns them off (default 0.5)")
    add_batch_args(p)
    p.set_defaults(handler=run)


def add_batch_args(p: argparse.ArgumentParser) -> None:
    """How dialogues are drawn into batches: shared by `train lm` and `train distill` (the same data pipeline)."""
    p.add_argument("--kind-weights", default="", type=parse_kind_weights, metavar="KIND=W,...",
                   help="draw dialogues of these kinds W times as often (e.g. add=3,see=2; kinds: add sub count "
                        "spell greet see colour howmany silence interrupted, and from --mix listen data: "
                        "refuse_near refuse_out passage unseen session); the rest weigh 1")
    p.add_argument("--speaker-warps", type=int, default=0, metavar="N",
                   help="also encode each dialogue's user track as said by N speakers drawn in the vocoder "
                        "codec's feature space (formant shift, tilt, channel colour, pitch); each draw of a "
                        "dialogue then picks one of its N + 1 versions (default 0: the recorded voice only)")
    p.add_argument("--fixed-scenes", action="store_true",
                   help="show each camera dialogue's scene in one fixed layout (rounds 1-4) instead of a freshly "
                        "drawn layout of the same shapes every time the dialogue is drawn")


def check_speaker_warps(n: int, codec, codec_path) -> None:
    from models.codec.vocoder import VocoderCodec

    if n < 0:
        _fail("--speaker-warps must be 0 or more")
    if n and not isinstance(codec, VocoderCodec):
        _fail(f"--speaker-warps needs a vocoder codec (`duplex train codec --kind vocoder`); "
              f"{codec_path} is a neural codec")


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
        """[1 + K + U, frames] undelayed rows: text, the agent's K codebooks, the user's U (K acoustic, then any
        semantic token), padded with silence."""
        K, U, T = self.cfg.dep_q, self.cfg.user_streams, self.frames
        g = torch.empty(1 + K + U, T, dtype=torch.long)
        g[0] = self.cfg.text_padding_id
        g[1:1 + K] = self.silence[:K, None]
        g[1 + K:] = self.silence[:U, None]
        # A recorded conversation (`duplex data prepare`) is longer than a sequence: a random window of it.
        a = self.rng.randrange(ex.text.shape[0] - T + 1) if ex.meta.get("crop") and ex.text.shape[0] > T else 0
        t = min(T, ex.text.shape[0] - a)
        g[0, :t] = ex.text[a:a + t]
        g[1:1 + K, :t] = ex.agent[:K, a:a + t].long()
        g[1 + K:, :t] = self.user_codes(ex)[:U, a:a + t].long()
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

    @staticmethod
    def rows(batch, sl: slice):
        """Rows `sl` of a batch (a rank's slice of the global batch)."""
        from agent.training.aux_heads import AuxTargets

        inputs, targets, images, aux = batch
        aux = None if aux is None else AuxTargets(aux.question[sl], aux.window[sl], aux.scene[sl])
        return inputs[sl], targets[sl], images[sl], aux

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


@dataclass
class LossNorms:
    """Each loss's denominator over the whole global batch, times the world size: a rank's loss on its slice is
    then its share of one process's loss, and DDP's mean of the ranks' gradients equals that process's gradient
    (a per-rank mean would weigh rows differently whenever the slices hold different amounts of speech)."""

    text: float
    audio: float
    question: float = 0.0
    scene: float = 0.0

    @classmethod
    def of(cls, targets: torch.Tensor, aux, cfg, text_pad_weight: float = 0.5, world: int = 1) -> LossNorms:
        from agent.training.aux_heads import question_rows, scene_rows

        text_t = targets[:, 0]
        valid = text_t != IGNORE
        pad = (text_t == cfg.text_padding_id) | (text_t == cfg.text_end_padding_id)
        text = float((torch.where(pad, text_pad_weight, 1.0) * valid).sum().clamp_min(1))
        audio = float((targets[:, 1:] != IGNORE).sum().clamp_min(1))
        q = s = 0.0
        if aux is not None:
            q, s = float(len(question_rows(aux))), float(len(scene_rows(aux.scene)))
        return cls(text / world, audio / world, q / world, s / world)


def lm_loss(model, inputs, targets, images, text_pad_weight: float = 0.5, aux_heads=None, aux=None,
            aux_weight: float = 0.5, norms: LossNorms | None = None):
    """Text + audio cross-entropy; with `aux_heads` and `aux` also the auxiliary question CTC and scene losses.
    `norms`: the global batch's denominators when this batch is one rank's slice of it (default: this batch's)."""
    from models.vision.cross_attention import VisionState

    cfg = model.cfg
    B, _, T = inputs.shape
    use_aux = aux_heads is not None and aux is not None
    norms = norms or LossNorms.of(targets, aux if use_aux else None, cfg, text_pad_weight)
    state = model.init_state(B, chunk=T)
    scene_loss = None
    if state.vision is not None:
        present = torch.tensor([im is not None for im in images], device=inputs.device)
        if present.any():
            stack = torch.stack([im if im is not None else torch.zeros_like(next(i for i in images if i is not None))
                                 for im in images]).to(inputs.device).float() / 255
            tokens = model.encode_image(stack)
            if use_aux:
                summary = model.image_encoder.cfg.summary  # the whole-image tokens must name the scene
                scene_loss = aux_heads.scene_loss(tokens[:, -summary:] if summary else tokens, aux.scene,
                                                  norms.scene or None)
            keys, values = model.transformer.shared_xa.project_kv(tokens)
            state.vision = VisionState(keys=keys, values=values, present=present, gate=state.vision.gate)
    hidden, text_logits = model.forward_text(inputs, state)
    text_t = targets[:, 0]
    weights = torch.where((text_t == cfg.text_padding_id) | (text_t == cfg.text_end_padding_id),
                          text_pad_weight, 1.0)
    ce_text = F.cross_entropy(text_logits.reshape(-1, text_logits.shape[-1]).float(), text_t.reshape(-1),
                              ignore_index=IGNORE, reduction="none")
    valid = (text_t.reshape(-1) != IGNORE).float()
    text_loss = (ce_text * weights.reshape(-1) * valid).sum() / norms.text
    # depformer, teacher-forced: sub-step k sees the previous target (text for k = 0)
    dep_targets = targets.permute(0, 2, 1).reshape(B * T, -1)  # [N, 1 + K]
    prev = dep_targets[:, :-1].clamp_min(0)
    logits = model.depformer_parallel(hidden.reshape(B * T, -1), prev)  # [N, K, card]
    audio_loss = F.cross_entropy(logits.reshape(-1, cfg.card).float(), dep_targets[:, 1:].reshape(-1),
                                 ignore_index=IGNORE, reduction="sum") / norms.audio
    loss = text_loss + audio_loss
    parts = {"text": float(text_loss.detach()), "audio": float(audio_loss.detach())}
    if use_aux:
        asr = aux_heads.question_loss(hidden, aux, norms.question or None)
        loss = loss + aux_weight * asr
        parts["asr"] = float(asr.detach())
        if scene_loss is not None:
            loss = loss + aux_weight * scene_loss
            parts["scene"] = float(scene_loss.detach())
    return loss, parts


class LMObjective(nn.Module):
    """The LM and its training-only heads as one module whose forward is the loss: what DDP and FSDP wrap."""

    def __init__(self, lm: nn.Module, aux_heads: nn.Module | None, aux_weight: float,
                 sharded_blocks: list[nn.Module] = ()):
        super().__init__()
        self.lm, self.aux_heads, self.aux_weight = lm, aux_heads, aux_weight
        self._touched = names_outside(self, sharded_blocks)

    def forward(self, inputs, targets, images, aux, norms: LossNorms | None = None):
        loss, parts = lm_loss(self.lm, inputs, targets, images, aux_heads=self.aux_heads, aux=aux,
                              aux_weight=self.aux_weight, norms=norms)
        # the image path and scene head get a zero gradient in a batch without a picture; the blocks are always used
        return loss + zero_touch(self, self._touched), parts


def export_bundle(folder: Path, codec_path: Path, lm_path: Path, tokenizer: Path, description: str,
                  sampling: dict | None = None, input_noise_floor: float | None = None) -> None:
    """A model folder (codec + LM + tokenizer + duplex.json) every command loads."""
    from agent.bundle import write_manifest
    from agent.training.synth import NOISE_FLOOR

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(codec_path, folder / "codec.safetensors")
    shutil.copyfile(lm_path, folder / "lm.safetensors")
    if tokenizer.resolve() != (folder / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer, folder / "tokenizer.model")
    write_manifest(folder, description, True, "tokenizer.model",
                   sampling or {"temperature": 0.6, "top_k": 50, "text_temperature": 0.3, "text_top_k": 10},
                   input_noise_floor=NOISE_FLOOR if input_noise_floor is None else input_noise_floor)


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


def zero_new_inputs(model: torch.nn.Module, fresh: list[str]) -> list[str]:
    """Input embeddings of streams the source model did not have (the ears' semantic token) start at zero: the
    new stream adds nothing until training teaches it to, so the model starts exactly as its source."""
    new = [k for k in fresh if k.startswith("emb.") and k.endswith(".weight")]
    with torch.no_grad():
        for k in new:
            model.get_parameter(k).zero_()
    return new


def _fail(message: str):
    from agent.errors import UserFacingError

    raise UserFacingError(message)


def _init_source(init: str | None):
    """--init as a model the registry resolves (a name, our model folder, a kyutai release folder): its files;
    None for a weights file, a training checkpoint, or no --init."""
    if not init or Path(init).suffix in (".pt", ".safetensors"):
        return None
    from agent.errors import DuplexError
    from agent.registry import resolve

    try:
        return resolve(init)
    except DuplexError as exc:
        _fail(f"--init {init}: {exc}")


def _build_model(args, files, codec, device):
    """The LM to train: the default model's architecture for `codec` (fresh, or from --init weights), or --init's
    model; `--context` sets its attention window (training and the exported model alike)."""
    from agent.default_model import lm_config
    from models.lm import LMModel, load_lm

    context = getattr(args, "context", None)
    if context is None and files is not None:
        context = files.context  # an --init folder's own window (duplex.json "context")
    if context is not None and context < 1:
        _fail(f"--context must be at least 1 frame (got {context})")
    if files is not None:
        if getattr(args, "pattern", None):
            _fail("--pattern shapes a fresh model; with --init the model keeps its own layers "
                  "(`duplex convert hybrid` changes them)")
        model = load_lm(files.lm, cfg=files.lm_config, device=device, dtype=torch.float32).train()
    else:
        semantic = codec.semantic_codebooks
        cfg = lm_config(codebooks=codec.num_codebooks - semantic, semantic=semantic)
        if getattr(args, "pattern", None):  # e.g. "A": an all-attention teacher for `duplex train distill`
            cfg = dataclasses.replace(cfg, pattern=args.pattern)
        model = LMModel(cfg).to(device).train()
    if context is not None:
        model.cfg.context = context  # every layer reads its window from this one config
    return model


def run(args) -> int:
    from agent.registry import EMBEDDED_DIR
    from agent.training.distributed import (
        describe,
        full_state,
        init_distributed,
        memory_figures,
        resume,
        run_mode,
        wrap,
    )
    from agent.training.lm_data import load_or_encode
    from models.codec import load_codec
    from models.lm import load_lm
    from models.lm.lora import LoRAConfig, add_lora
    from models.lm.tokenizer import TextTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lora and args.full:
        _fail("--lora and --full exclude each other: LoRA trains adapters only, --full trains every weight")
    if args.lora is not None and args.lora < 1:
        _fail("--lora RANK must be at least 1")
    ctx = init_distributed(args.device)
    device = ctx.device
    if args.batch % ctx.world:
        _fail(f"--batch {args.batch} must be a multiple of the number of processes ({ctx.world})")
    say = print if ctx.main else (lambda *a, **k: None)
    run_dir = Path(args.run)
    files = _init_source(args.init)
    codec_path = Path(files.codec if files is not None else args.codec)
    if not codec_path.is_file():
        _fail(f"codec weights not found: {codec_path} (run `duplex train codec` first)")
    tok_path = run_dir / "tokenizer.model"
    if ctx.main and not tok_path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        src = files.tokenizer if files is not None and files.tokenizer else EMBEDDED_DIR / "default" / "tokenizer.model"
        shutil.copyfile(src, tok_path)
    ctx.barrier()
    tokenizer = TextTokenizer(tok_path)
    seed_everything(args.seed)  # the same on every rank: identical initial weights and adapters
    user_streams = files.lm_config.user_streams if files is not None and files.lm_config else None
    codec = load_codec(codec_path, device=device, num_codebooks=user_streams)
    model = _build_model(args, files, codec, device)
    if files is not None and files.tokenizer is None:
        _fail(f"--init {args.init}: the model has no text tokenizer to train its text stream with")
    cfg = model.cfg
    aux_heads = None
    if args.aux_weight > 0:
        from agent.training.aux_heads import AuxHeads

        image_dim = model.image_encoder.cfg.dim if model.image_encoder is not None else None
        aux_heads = AuxHeads(cfg.dim, cfg.text_card, image_dim).to(device).train()
    image_size = model.image_encoder.cfg.image_size if model.image_encoder is not None else 64
    check_speaker_warps(args.speaker_warps, codec, codec_path)

    def examples_now():
        return load_or_encode(data_folders(args.data), run_dir / "examples.pt", codec, tokenizer, image_size,
                              speaker_warps=args.speaker_warps)

    examples = ctx.main_first(examples_now)  # rank 0 encodes and caches; the others read its cache
    with torch.no_grad():
        silence = codec.encode(torch.zeros(1, 1, codec.frame_size * 4, device=device))[0, :, -1].cpu()
    rng = random.Random(args.seed)  # the global batch sampler: the same stream on every rank and world size
    batcher = Batcher(examples, cfg, silence, args.frames + 1, rng, tokenizer if aux_heads is not None else None,
                      kind_weights=args.kind_weights, fresh_scenes=not args.fixed_scenes)
    if args.kind_weights:
        unknown = set(args.kind_weights) - {e.meta["kind"] for e in examples}
        if unknown:
            say(f"warning: --kind-weights names kinds not in the data: {', '.join(sorted(unknown))}")
    ckpt_path = run_dir / "lm_train.pt"
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is None and args.init and files is None:  # weights to start a new run from
        init = Path(args.init)
        if init.suffix == ".pt":  # another run's training checkpoint: its LM and its auxiliary heads
            other = load_checkpoint(init)
            if other is None or "model" not in other:
                _fail(f"{init} is not an LM training checkpoint (`RUN/lm_train.pt`)")
            state = other["model"]
            if aux_heads is not None and "aux" in other:
                load_matching(aux_heads, other["aux"])
        else:
            state = load_lm(init).state_dict()
        fresh = load_matching(model, state)
        silent = zero_new_inputs(model, [k for k in fresh if k not in state])
        say(f"initialized from {args.init}" + (f"; {len(fresh)} tensors of other shapes start fresh: "
                                                f"{', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}"
                                                if fresh else "")
            + (f"; new input streams start at zero (the model starts as its source): {', '.join(silent)}"
               if silent else ""))
    elif ckpt is None and files is not None:
        say(f"initialized from {files.name} ({files.folder})")
    lora = None
    if args.lora:
        lora = LoRAConfig(rank=args.lora, scale=args.lora_scale, depformer=args.lora_depformer)
        adapted = add_lora(model, lora)
        if aux_heads is not None:
            for p in aux_heads.parameters():
                p.requires_grad_(True)
        say(f"LoRA rank {lora.rank} (scale {lora.scale}) on {len(adapted)} matrices; base weights frozen")
    model.checkpoint_layers = args.grad_checkpoint
    # FSDP units: the backbone blocks (Mamba2 ones included) but those holding the image cross-attention that
    # all vision layers share (it is also called outside their forward, to project the image once)
    blocks = [layer for layer in model.transformer.layers if layer.cross_attention is None]
    objective = LMObjective(model, aux_heads, args.aux_weight, blocks if args.fsdp else [])
    trained = wrap(objective, ctx, fsdp=args.fsdp, blocks=blocks)
    params = [p for p in trained.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 200, args.steps))
    step = 0
    if ckpt is not None:
        if (aux_heads is not None) != ("aux" in ckpt):
            _fail(f"{ckpt_path} was trained with{'out' if 'aux' not in ckpt else ''} auxiliary losses: resume "
                  "with the same --aux-weight setting (0 or not), or use a new --run")
        if bool(ckpt.get("lora")) != bool(lora):
            _fail(f"{ckpt_path} was trained {'with' if ckpt.get('lora') else 'without'} LoRA: resume with the same "
                  "--lora setting, or use a new --run")
        model_sd = {f"lm.{k}": v for k, v in ckpt["model"].items()}
        model_sd.update({f"aux_heads.{k}": v for k, v in ckpt.get("aux", {}).items()})
        step = resume(ckpt, model_sd, trained, opt, sched, rng, ctx, args.fsdp)
        say(f"resumed from {ckpt_path} at step {step}" + (f" (written by {ckpt['world']} processes)"
                                                          if ckpt.get("world", 1) != ctx.world else ""))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    n_train = sum(p.numel() for p in params) / 1e6
    say(f"LM: {n_params:.2f}M params ({n_train:.2f}M trained), {len(examples)} dialogues, device {device}, "
        f"{describe(ctx, args.fsdp, args.batch)}")

    def save():
        model_sd, opt_sd = full_state(trained, opt, ctx, args.fsdp)  # every rank takes part; rank 0 writes
        if not ctx.main:
            return
        lm_sd = {k[3:]: v for k, v in model_sd.items() if k.startswith("lm.")}
        extra = {"aux": {k[10:]: v for k, v in model_sd.items() if k.startswith("aux_heads.")}} \
            if aux_heads is not None else {}
        if lora:
            extra["lora"] = vars(lora)
        save_checkpoint(ckpt_path, model=lm_sd, opt=opt_sd, sched=sched.state_dict(), step=step, rng=rng_state(),
                        batch_rng=rng.getstate(), format=2, world=ctx.world, **extra)
        save_weights(model, lm_sd, lora, run_dir)
        tqdm.write(f"saved {ckpt_path} (step {step})")

    log = run_dir / "log.jsonl"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    t0 = time.time()
    frames_done = 0
    with tqdm(total=args.steps, initial=step, desc="train lm", unit="step", disable=not ctx.main) as bar:
        while step < args.steps:
            t_step = time.perf_counter()
            batch = batcher.batch(args.batch)  # the global batch (same on every rank), then this rank's rows
            aux_all = batch[3] if aux_heads is not None else None
            norms = LossNorms.of(batch[1], aux_all, cfg, world=ctx.world)
            inputs, targets, images, aux = Batcher.rows(batch, ctx.slice(args.batch))
            with autocast:
                loss, parts = trained(inputs.to(device), targets.to(device), images, aux, norms)
            optimizer_step(loss, opt, sched, params)
            step += 1
            frames_done += args.batch * args.frames
            # each rank's loss is its share times the world size: their mean is the global batch's loss (a slice
            # without a scene has no scene loss: its share is 0)
            names = ["text", "audio"] + (["asr", "scene"] if aux_heads is not None else [])
            parts = ctx.mean({"loss": float(loss.detach()), **{k: parts.get(k, 0.0) for k in names}})
            bar.update()
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items() if k != "loss"})
            if ctx.main:
                append_log(log, step=step, lr=sched.get_last_lr()[0], world=ctx.world,
                            frames_per_s=round(args.batch * args.frames / (time.perf_counter() - t_step), 1),
                            **{k: round(v, 6) for k, v in parts.items()})
            if step % args.save_every == 0 or step == args.steps:
                save()
    took = time.time() - t0
    memory = ctx.gather(memory_figures(trained, opt))  # every rank's own figures
    say(f"done: step {step}, {took:.0f} s this run" + (f", {frames_done / took:.0f} frames/s" if took else "")
        + "; per rank: " + ", ".join(f"state {m['state_mb']:.0f} MB, peak RSS {m['peak_rss_mb']:.0f} MB"
                                     for m in memory))
    if ctx.main and frames_done:
        append_log(log, summary=True, step=step, world=ctx.world, mode=run_mode(ctx, args.fsdp), seconds=round(took, 2),
                    frames_per_s=round(frames_done / took, 1), ranks=memory)
    if args.export and ctx.main:
        export_bundle(Path(args.export), codec_path, run_dir / "lm.safetensors", tok_path,
                      f"trained by `duplex train lm` ({step} LM steps"
                      + (f", LoRA rank {lora.rank} merged" if lora else "") + ")"
                      + (f" from {files.name}" if files is not None else " on synthesized dialogues"),
                      sampling=files.sampling if files is not None and files.kind == "duplex" else None,
                      input_noise_floor=files.input_noise_floor if files is not None else None)
        say(f"exported the model folder to {args.export}")
    if args.export_adapter and ctx.main and lora:
        _export_adapter(Path(args.export_adapter), run_dir, lora, args.init)
        say(f"wrote the adapter to {args.export_adapter}")
    ctx.close()
    return 0


def _export_adapter(folder: Path, run_dir: Path, lora, base: str | None) -> None:
    """A folder holding only the adapter and the base model's name: merged into the base at load."""
    from agent.bundle import write_adapter_manifest

    if not base:
        _fail("--export-adapter needs --init: the base model the adapter is merged into at load")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "adapter.safetensors", folder / "adapter.safetensors")
    target = Path(base).expanduser()
    write_adapter_manifest(folder, str(target.resolve()) if target.exists() else base, "adapter.safetensors",
                           lora.scale, f"LoRA rank {lora.rank} adapter of {base}")


def save_weights(model: nn.Module, lm_sd: dict, lora, run_dir: Path) -> None:
    """RUN/lm.safetensors: the weights a model folder ships (LoRA merged in), and with LoRA RUN/adapter.safetensors."""
    from models.lm import LMModel, save_lm
    from models.lm.lora import adapter_state_dict, add_lora, merge_lora

    with torch.device("meta"):
        plain = LMModel(model.cfg)
    plain = plain.to_empty(device="cpu").to(next(iter(lm_sd.values())).dtype)
    if lora:
        add_lora(plain, lora)
    plain.load_state_dict(lm_sd)
    if lora:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in adapter_state_dict(plain).items()},
                  str(run_dir / "adapter.safetensors"),
                  metadata={"rank": str(lora.rank), "scale": str(lora.scale)})
        merge_lora(plain)
    save_lm(plain, run_dir / "lm.safetensors")
