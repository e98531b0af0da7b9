"""`duplex train distill`: teach a converted hybrid (the student) to behave like its source (the teacher).

The teacher is frozen; on the same batches as `train lm` (teacher-forced, both streams) the student minimises
the KL divergence from the teacher's text and audio distributions, optionally plus the distance between the
teacher's and its own outputs of the converted layers (`--hidden-weight`: aligns the new Mamba2 mixers layer by
layer first; then set it to 0 for end-to-end distillation). Checkpoints are atomic, a rerun resumes, at any
world size: under `torchrun` every rank trains its slice of one seeded global batch (DDP, or FSDP2 with `--fsdp`),
exactly as `duplex train lm` does (agent/training/distributed.py).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
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
from agent.training.lm_train import add_batch_args


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a converted hybrid (student) from its source model (teacher)",
                       description="KL divergence of the text and audio distributions, teacher frozen, on the "
                                   "same dialogues as `train lm`; optional per-layer alignment of the converted "
                                   "layers. Export writes a model folder duplex run/serve/bench load.")
    add_loop_args(p, run="runs/distill", batch=8, lr=5e-4, save_every=100, steps=1000)
    p.add_argument("--teacher", required=True, help="the source model (name or folder)")
    p.add_argument("--student", required=True, help="the converted model folder (`duplex convert hybrid`)")
    p.add_argument("--frames", type=int, default=80, help="frames per training sequence (80 = 6.4 s)")
    p.add_argument("--temperature", type=float, default=1.0, help="softening of both distributions (default 1)")
    p.add_argument("--hidden-weight", type=float, default=0.0,
                   help="weight of the converted layers' output alignment (MSE to the teacher's layer outputs)")
    p.add_argument("--export", help="write the distilled model folder here")
    add_batch_args(p)
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the student (FSDP2 per backbone block) instead of a replica per rank")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (weights and optimizer stay float32)")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute each student block in the backward pass (less memory, more compute)")
    p.set_defaults(handler=run)


def _logits(model, inputs, targets, images):
    """(text logits [B, T, V], audio logits [B*T, K, card]) teacher-forced, as `lm_loss` computes them."""
    from models.vision.cross_attention import VisionState

    B, _, T = inputs.shape
    state = model.init_state(B, chunk=T)
    if state.vision is not None:
        present = torch.tensor([im is not None for im in images], device=inputs.device)
        if present.any():
            stack = torch.stack([im if im is not None else torch.zeros_like(next(i for i in images if i is not None))
                                 for im in images]).to(inputs.device).float() / 255
            keys, values = model.transformer.shared_xa.project_kv(model.encode_image(stack))
            state.vision = VisionState(keys=keys, values=values, present=present, gate=state.vision.gate)
    hidden, text_logits = model.forward_text(inputs, state)
    prev = targets.permute(0, 2, 1).reshape(B * T, -1)[:, :-1].clamp_min(0)
    return text_logits, model.depformer_parallel(hidden.reshape(B * T, -1), prev)


def kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), scaled by T^2 as usual for softened targets."""
    t = F.log_softmax(teacher.float() / temperature, -1)
    s = F.log_softmax(student.float() / temperature, -1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


def distill_loss(teacher, student, inputs, targets, images, temperature: float = 1.0, hidden_weight: float = 0.0,
                 layers: list[int] | None = None) -> tuple[torch.Tensor, dict]:
    captured: dict[str, dict[int, torch.Tensor]] = {"t": {}, "s": {}}
    hooks = []
    if hidden_weight > 0 and layers:
        for tag, model in (("t", teacher), ("s", student)):
            for i in layers:
                hooks.append(model.transformer.layers[i].register_forward_hook(
                    lambda mod, inp, out, tag=tag, i=i: captured[tag].__setitem__(i, out)))
    try:
        with torch.no_grad():
            t_text, t_audio = _logits(teacher, inputs, targets, images)
        s_text, s_audio = _logits(student, inputs, targets, images)
    finally:
        for h in hooks:
            h.remove()
    text = kl(t_text, s_text, temperature)
    audio = kl(t_audio, s_audio, temperature)
    loss = text + audio
    parts = {"kl_text": float(text.detach()), "kl_audio": float(audio.detach())}
    if captured["s"]:
        hidden = sum(F.mse_loss(captured["s"][i].float(), captured["t"][i].float().detach()) for i in captured["s"])
        loss = loss + hidden_weight * hidden
        parts["hidden"] = float(hidden.detach())
    return loss, parts


def converted_layers(teacher_cfg, student_cfg) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(teacher_cfg.layer_kinds, student_cfg.layer_kinds)) if a != b]


class DistillObjective(nn.Module):
    """The student as one module whose forward is the distillation loss: what DDP and FSDP wrap. The teacher is
    held outside the module tree (frozen: never wrapped, never sharded, never saved; each rank has a replica)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, hidden_weight: float,
                 layers: list[int], sharded_blocks: list[nn.Module] = ()):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)
        self.temperature, self.hidden_weight, self.layers = temperature, hidden_weight, layers
        self._touched = names_outside(self, sharded_blocks)

    def forward(self, inputs, targets, images):
        loss, parts = distill_loss(self._teacher[0], self.student, inputs, targets, images, self.temperature,
                                   self.hidden_weight, self.layers)
        # the KL is a mean over the positions of equal slices, so the ranks' mean gradient is one process's
        # gradient on the whole batch
        return loss + zero_touch(self, self._touched), parts


def run(args) -> int:
    from agent.bundle import MANIFEST
    from agent.errors import UserFacingError
    from agent.registry import resolve
    from agent.training.distributed import describe, full_state, init_distributed, memory_figures, resume, wrap
    from agent.training.lm_data import load_or_encode
    from agent.training.lm_train import Batcher, check_speaker_warps, save_weights
    from models.codec import load_codec
    from models.lm import load_lm
    from models.lm.tokenizer import TextTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    device = ctx.device
    if args.batch % ctx.world:
        raise UserFacingError(f"--batch {args.batch} must be a multiple of the number of processes ({ctx.world})")
    say = print if ctx.main else (lambda *a, **k: None)
    teacher_files, student_files = resolve(args.teacher), resolve(args.student)
    if student_files.tokenizer is None:
        raise UserFacingError(f"{student_files.folder} has no tokenizer: distil a folder from `duplex convert`")
    seed_everything(args.seed)
    teacher = load_lm(teacher_files.lm, cfg=teacher_files.lm_config, device=device, dtype=torch.float32).eval()
    student = load_lm(student_files.lm, device=device, dtype=torch.float32).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if (teacher.cfg.n_q, teacher.cfg.card, teacher.cfg.text_card) != (student.cfg.n_q, student.cfg.card,
                                                                     student.cfg.text_card):
        raise UserFacingError("teacher and student do not share their token layout (codebooks, vocabularies)")
    layers = converted_layers(teacher.cfg, student.cfg)
    codec = load_codec(student_files.codec, device=device, num_codebooks=student.cfg.user_streams)
    tokenizer = TextTokenizer(student_files.tokenizer)
    run_dir = Path(args.run)
    image_size = student.image_encoder.cfg.image_size if student.image_encoder is not None else 64
    check_speaker_warps(args.speaker_warps, codec, student_files.codec)

    def examples_now():
        return load_or_encode(data_folders(args.data), run_dir / "examples.pt", codec, tokenizer, image_size,
                              speaker_warps=args.speaker_warps)

    examples = ctx.main_first(examples_now)  # rank 0 encodes and caches; the others read its cache
    with torch.no_grad():
        silence = codec.encode(torch.zeros(1, 1, codec.frame_size * 4, device=device))[0, :, -1].cpu()
    rng = random.Random(args.seed)  # the global batch sampler: the same stream on every rank and world size
    batcher = Batcher(examples, student.cfg, silence, args.frames + 1, rng, kind_weights=args.kind_weights,
                      fresh_scenes=not args.fixed_scenes)
    student.checkpoint_layers = args.grad_checkpoint
    blocks = [layer for layer in student.transformer.layers if layer.cross_attention is None]
    objective = DistillObjective(student, teacher, args.temperature, args.hidden_weight, layers,
                                 blocks if args.fsdp else [])
    trained = wrap(objective, ctx, fsdp=args.fsdp, blocks=blocks)
    params = [p for p in trained.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warm = min(100, args.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warm, args.steps))
    step = 0
    ckpt_path = run_dir / "distill.pt"
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None:
        model_sd = {f"student.{k}": v for k, v in ckpt["model"].items()}
        step = resume(ckpt, model_sd, trained, opt, sched, rng, ctx, args.fsdp)
        say(f"resumed from {ckpt_path} at step {step}" + (f" (written by {ckpt['world']} processes)"
                                                          if ckpt.get("world", 1) != ctx.world else ""))
    say(f"teacher {teacher_files.name} ({teacher.cfg.layer_kinds}), student {student_files.name} "
        f"({student.cfg.layer_kinds}; converted layers {layers}), {len(examples)} dialogues, device {device}, "
        f"{describe(ctx, args.fsdp, args.batch)}")

    def save():
        model_sd, opt_sd = full_state(trained, opt, ctx, args.fsdp)  # every rank takes part; rank 0 writes
        if not ctx.main:
            return
        student_sd = {k[len("student."):]: v for k, v in model_sd.items() if k.startswith("student.")}
        save_checkpoint(ckpt_path, model=student_sd, opt=opt_sd, sched=sched.state_dict(), step=step,
                        rng=rng_state(), batch_rng=rng.getstate(), format=2, world=ctx.world)
        save_weights(student, student_sd, None, run_dir)
        tqdm.write(f"saved {ckpt_path} (step {step})")

    log = run_dir / "log.jsonl"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    t0 = time.time()
    with tqdm(total=args.steps, initial=step, desc="distill", unit="step", disable=not ctx.main) as bar:
        while step < args.steps:
            inputs, targets, images, _ = Batcher.rows(batcher.batch(args.batch), ctx.slice(args.batch))
            with autocast:
                loss, parts = trained(inputs.to(device), targets.to(device), images)
            optimizer_step(loss, opt, sched, params)
            step += 1
            parts = ctx.mean({"loss": float(loss.detach()), **parts})
            bar.update()
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items() if k != "loss"})
            if ctx.main:
                append_log(log, step=step, lr=sched.get_last_lr()[0], world=ctx.world,
                            **{k: round(v, 6) for k, v in parts.items()})
            if step % args.save_every == 0 or step == args.steps:
                save()
    memory = ctx.gather(memory_figures(trained, opt))
    say(f"done: step {step}, {time.time() - t0:.0f} s this run; per rank: "
        + ", ".join(f"state {m['state_mb']:.0f} MB, peak RSS {m['peak_rss_mb']:.0f} MB" for m in memory))
    if args.export and ctx.main:
        out = Path(args.export)
        out.mkdir(parents=True, exist_ok=True)
        for f in (student_files.codec, student_files.tokenizer, student_files.folder / MANIFEST):
            if f and f.is_file() and f.resolve() != (out / f.name).resolve():
                shutil.copyfile(f, out / f.name)
        shutil.copyfile(run_dir / "lm.safetensors", out / "lm.safetensors")
        manifest = json.loads((out / MANIFEST).read_text())
        manifest.update(trained=True, description=f"{student_files.name} distilled from {teacher_files.name} "
                                                  f"({step} steps)")
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"exported the distilled model folder to {out}")
    ctx.close()
    return 0
