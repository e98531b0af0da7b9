"""`duplex train codec --kind vocoder`: learn the vocoder codec's feature scaling and residual codebooks.

The analysis and synthesis are fixed signal processing (`models.codec.vocoder`); what is learnt is how to spend
the bits: per-dimension normalization, then one k-means codebook per residual stage over 80 ms frames of speech
parameters from both tracks of the training dialogues. Each finished stage is checkpointed in
`RUN/vocoder_train.pt`, so an interrupted run resumes at the next stage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.training.common import data_folders, load_checkpoint, save_checkpoint

# how much each parameter counts in the codebooks' distance (after scaling to unit variance): pitch matters more
# than any single one of the 32 band energies
PITCH_WEIGHT, VOICING_WEIGHT = 2.0, 1.0
# log of the band energies summed (40 ms window) below which a frame counts as quiet: white noise of RMS ~0.015
# (the training noise floors reach 0.008; speech is ~0.05-0.15)
QUIET_LOG_ENERGY = 1.0


@torch.no_grad()
def collect_frames(folders: list[Path], codec, max_frames: int, seed: int) -> torch.Tensor:
    """80 ms frames of speech parameters [N, frame_dim] from both tracks, a seeded sample of at most `max_frames`."""
    from agent.training.synth import load_dialogues

    frames = []
    for folder in folders:  # one folder's audio in memory at a time
        for d in tqdm(load_dialogues(folder), desc=f"analyse {folder.name}", unit="dialogue"):
            frames += _dialogue_frames(d, codec)
    out = speech_frames(torch.cat(frames), codec.cfg, seed)
    if out.shape[0] > max_frames:
        g = torch.Generator().manual_seed(seed)
        out = out[torch.randperm(out.shape[0], generator=g)[:max_frames]]
    return out


def _dialogue_frames(d: dict, codec) -> list[torch.Tensor]:
    frames = []
    for track in ("user", "agent"):
        x = torch.from_numpy(d[track].astype(np.float32) / 32767)
        n = x.numel() // codec.frame_size * codec.frame_size
        if n == 0:
            continue
        feats = codec.features_step(x[None, :n].to(codec.device), codec.init_state(1))
        frames.append(feats.reshape(-1, codec.cfg.frame_dim).cpu())
    return frames


def at_speech_level(frames: torch.Tensor, cfg) -> torch.Tensor:
    """frames [N, frame_dim] (or the same numbers as [4N, features]) -> [N] True where the loudest 20 ms of the
    frame reaches speech level."""
    mel = frames.reshape(-1, cfg.subframes, cfg.features)[..., : cfg.n_mels]
    return torch.logsumexp(mel, -1).amax(-1) > QUIET_LOG_ENERGY  # log energy summed over bands, loudest subframe


def speech_frames(frames: torch.Tensor, cfg, seed: int, keep_quiet: float = 0.05) -> torch.Tensor:
    """Most of both tracks is silence or a noise floor; left in, it would dominate the k-means distortion and
    the feature scaling. Keep the frames whose loudest 20 ms reaches speech level, and a few quiet ones."""
    loud = at_speech_level(frames, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    keep = loud | (torch.rand(frames.shape[0], generator=g) < keep_quiet)
    return frames[keep]


def feature_scaling(frames: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    mean = frames.mean(0)
    weight = torch.ones(cfg.features)
    weight[cfg.n_mels], weight[cfg.n_mels + 1] = PITCH_WEIGHT, VOICING_WEIGHT
    scale = weight.repeat(cfg.subframes) / frames.std(0).clamp(min=1e-3)
    return mean, scale


def nearest(x: torch.Tensor, book: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    """The codec's own nearest-code rule, in chunks (the distance matrix of all frames would not fit)."""
    from models.codec.vocoder import nearest_code

    return torch.cat([nearest_code(x[s:s + chunk], book) for s in range(0, x.shape[0], chunk)])


def kmeans(x: torch.Tensor, k: int, iters: int, g: torch.Generator, bar: tqdm | None = None) -> torch.Tensor:
    """Lloyd's k-means from a random sample of points; empty clusters restart at random points."""
    centres = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        assign = nearest(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        restart = x[torch.randint(0, x.shape[0], (k,), generator=g)]
        centres = torch.where(empty[:, None], restart, sums / counts.clamp(min=1)[:, None])
        if bar is not None:
            bar.update()
    return centres


def train_vocoder(args) -> int:
    from models.codec import save_codec
    from models.codec.vocoder import VocoderCodec, VocoderConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    cfg = VocoderConfig(n_q=8, num_codebooks=args.codebooks)
    codec = VocoderCodec(cfg)
    ckpt_path = run_dir / "vocoder_train.pt"
    ckpt = load_checkpoint(ckpt_path)
    g = torch.Generator().manual_seed(args.seed)
    if ckpt is None:
        frames = collect_frames(data_folders(args.data), codec, args.max_frames, args.seed)
        mean, scale = feature_scaling(frames, cfg)
        ckpt = {"mean": mean, "scale": scale, "books": [], "frames": frames, "rng": g.get_state()}
        save_checkpoint(ckpt_path, **ckpt)
    else:
        g.set_state(ckpt["rng"])
        print(f"resumed from {ckpt_path} after {len(ckpt['books'])} of {cfg.n_q} codebooks")
    residual = (ckpt["frames"] - ckpt["mean"]) * ckpt["scale"]
    for book in ckpt["books"]:
        residual = residual - book[nearest(residual, book)]
    print(f"vocoder codec: {residual.shape[0]} frames of {cfg.frame_dim} parameters, {cfg.n_q} codebooks x "
          f"{cfg.bins}; residual energy {residual.square().mean():.3f}")
    with tqdm(total=cfg.n_q * args.iters, initial=len(ckpt["books"]) * args.iters, desc="k-means codebooks",
              unit="iter") as bar:
        while len(ckpt["books"]) < cfg.n_q:
            book = kmeans(residual, cfg.bins, args.iters, g, bar)
            residual = residual - book[nearest(residual, book)]
            ckpt["books"].append(book)
            ckpt["rng"] = g.get_state()
            save_checkpoint(ckpt_path, **ckpt)
            bar.set_postfix(stage=len(ckpt["books"]), residual=f"{residual.square().mean():.3f}")
    codec.feature_mean.copy_(ckpt["mean"])
    codec.feature_scale.copy_(ckpt["scale"])
    codec.codebooks.copy_(torch.stack(ckpt["books"]))
    out = run_dir / "codec.safetensors"
    save_codec(codec, out)
    print(f"done: weights in {out}")
    return 0
