"""`duplex train codec`: train the default codec on the synthesized dialogues (user and agent tracks).

Reconstruction losses only (waveform L1 + multi-resolution log-mel), EMA codebooks with dead-code restarts.
Checkpoints every `--save-every` steps to `RUN/codec_train.pt` (resumed automatically) and exports the
inference weights to `RUN/codec.safetensors`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.training.common import (
    add_loop_args,
    data_folders,
    load_checkpoint,
    pick_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)

# The half of the codec that turns codes back into audio: `--decoder-only` trains just these, and everything else
# (encoder, bottleneck, codebooks) decides the codes (`lm_data.encoder_fingerprint`).
DECODER_HALF = ("upsample.", "decoder_transformer.", "decoder.")


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codec", help="train the codec (reconstruction + EMA vector quantization)")
    add_loop_args(p, run="runs/codec", batch=8, lr=1e-3, save_every=250)
    p.add_argument("--segment", type=float, default=0.96, help="seconds per training crop (multiple of 80 ms)")
    p.add_argument("--init", help="start a new run from these codec weights (e.g. agent/weights/default/"
                                  "codec.safetensors); ignored when the run has a checkpoint")
    p.add_argument("--tracks", choices=["both", "agent"], default="both",
                   help="train on both speakers' tracks, or only the agent's (its decoder only ever speaks the "
                        "agent's voice; default both)")
    p.add_argument("--codebooks", type=int, default=4,
                   help="codebooks the codec uses, 1-8 of 256 entries (100 bit/s each; default 4; the vocoder codec "
                        "always learns 8 and uses this many)")
    p.add_argument("--filters", type=int, default=8, help="SEANet base width (default 8; compute grows ~ its square)")
    p.add_argument("--kind", choices=["neural", "vocoder"], default="neural",
                   help="neural: the Mimi-topology codec trained by gradient descent; vocoder: speech parameters "
                        "(envelope, pitch, voicing) every 20 ms with k-means residual codebooks (minutes on a CPU, "
                        "and its round trip stays intelligible; --steps/--batch/--lr do not apply)")
    p.add_argument("--max-frames", type=int, default=150_000,
                   help="vocoder: 80 ms frames sampled for k-means (default 150000)")
    p.add_argument("--iters", type=int, default=15, help="vocoder: k-means iterations per codebook (default 15)")
    p.add_argument("--decoder-only", action="store_true",
                   help="train only the decoder half with the encoder and codebooks frozen: every code stays the "
                        "same, so an LM trained on them stays valid while the speech gets clearer")
    p.set_defaults(handler=run)


class CropSampler:
    """Random crops of speech (mostly non-silent) from every user and agent track."""

    def __init__(self, dialogues: list[dict], segment: int, rng: np.random.Generator,
                 tracks: tuple[str, ...] = ("user", "agent")):
        self.tracks = [d[k].astype(np.float32) / 32767 for d in dialogues for k in tracks
                       if np.abs(d[k]).max() > 300 and d[k].size > segment]
        self.segment, self.rng = segment, rng

    def batch(self, n: int) -> torch.Tensor:
        out = np.zeros((n, self.segment), np.float32)
        for i in range(n):
            for _ in range(10):
                t = self.tracks[self.rng.integers(len(self.tracks))]
                s = self.rng.integers(0, t.size - self.segment)
                crop = t[s:s + self.segment]
                if np.abs(crop).max() > 0.05:
                    break
            out[i] = crop * self.rng.uniform(0.5, 1.5)
        return torch.from_numpy(np.clip(out, -1, 1))


def codec_forward(codec, vqs, wav: torch.Tensor, update: bool = True, frozen_encoder: bool = False):
    """Training forward of the whole codec on [B, T] audio -> (reconstruction [B, T], commitment loss).

    `frozen_encoder`: the encoder half and the codebooks run without gradients or codebook updates."""
    n_q = codec.num_codebooks
    frames = wav.shape[-1] // codec.frame_size
    state = codec.init_state(wav.shape[0], device=wav.device, chunk=2 * frames + 2)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_encoder):
        x = codec.encoder(wav[:, None], state.encoder)
        x = codec.encoder_transformer(x, state.encoder_transformer)
        x = codec.downsample(x, state.downsample)
        first, c1 = vqs[0].quantize(x, 1, update and not frozen_encoder)
        rest, c2 = vqs[1].quantize(x, n_q - 1, update and not frozen_encoder)
    y = codec.upsample(first + rest, state.upsample)
    y = codec.decoder_transformer(y, state.decoder_transformer)
    y = codec.decoder(y, state.decoder)
    return y[:, 0], (c1 + c2) / 2


def run(args) -> int:
    if args.kind == "vocoder":
        from agent.training.vocoder_train import train_vocoder

        return train_vocoder(args)
    from agent.default_model import codec_config
    from agent.training.losses import reconstruction_loss
    from agent.training.synth import load_dialogues
    from agent.training.vq import EMACodebooks
    from models.codec import Codec, save_codec

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    run_dir = Path(args.run)
    seed_everything(args.seed)
    codec = Codec(codec_config(args.codebooks, args.filters)).to(device).train()
    vqs = [EMACodebooks(codec.quantizer.rvq_first), EMACodebooks(codec.quantizer.rvq_rest)]
    params = [p for n, p in codec.named_parameters() if not args.decoder_only or n.startswith(DECODER_HALF)]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    step = 0
    ckpt_path = run_dir / "codec_train.pt"
    ckpt = load_checkpoint(ckpt_path)
    data_rng = np.random.default_rng(args.seed)
    if ckpt is not None:
        try:
            codec.load_state_dict(ckpt["codec"])
        except RuntimeError as exc:
            from agent.errors import UserFacingError

            raise UserFacingError(f"{ckpt_path} holds a codec of another size (--filters): use the flags it was "
                                  f"started with, or another --run\n{str(exc)[:300]}") from exc
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        for vq, s in zip(vqs, ckpt["vq"]):
            vq.load_state_dict(s)
        step = ckpt["step"]
        set_rng_state(ckpt["rng"])
        data_rng.bit_generator.state = ckpt["data_rng"]
        print(f"resumed from {ckpt_path} at step {step}")
    elif args.init:
        from models.codec import load_codec

        codec.load_state_dict(load_codec(args.init).state_dict())
        vqs = [EMACodebooks(codec.quantizer.rvq_first), EMACodebooks(codec.quantizer.rvq_rest)]
        print(f"initialized from {args.init}")
    dialogues = [d for f in data_folders(args.data) for d in load_dialogues(f)]
    segment = int(round(args.segment * codec.cfg.frame_rate)) * codec.frame_size
    sampler = CropSampler(dialogues, segment, data_rng, ("user", "agent") if args.tracks == "both" else ("agent",))
    print(f"codec: {sum(p.numel() for p in params) / 1e6:.2f}M params, {len(sampler.tracks)} tracks, device {device}")
    t0 = time.time()

    def save():
        save_checkpoint(ckpt_path, codec=codec.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                        vq=[vq.state_dict() for vq in vqs], step=step, rng=rng_state(),
                        data_rng=data_rng.bit_generator.state)
        save_codec(codec, run_dir / "codec.safetensors")

    with tqdm(total=args.steps, initial=step, desc="train codec", unit="step") as bar:
        while step < args.steps:
            wav = sampler.batch(args.batch).to(device)
            recon, commit = codec_forward(codec, vqs, wav, frozen_encoder=args.decoder_only)
            loss, parts = reconstruction_loss(recon, wav)
            total = loss + (0 if args.decoder_only else 0.25 * commit)
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            bar.update()
            bar.set_postfix(mel=f"{parts['mel']:.3f}", wave=f"{parts['wave']:.4f}", commit=f"{float(commit):.4f}")
            if step % args.save_every == 0 or step == args.steps:
                save()
    print(f"done: step {step}, {time.time() - t0:.0f} s this run; weights in {run_dir / 'codec.safetensors'}")
    return 0
