"""`duplex train distill`: teach a converted hybrid (the student) to behave like its source (the teacher).

The teacher is frozen; on the same batches as `train lm` (teacher-forced, both streams) the student minimises
the KL divergence from the teacher's text and audio distributions, optionally plus the distance between the
teacher's and its own outputs of the converted layers (`--hidden-weight`: aligns the new Mamba2 mixers layer by
layer first; then set it to 0 for end-to-end distillation). Checkpoints are atomic, a rerun resumes.
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


def run(args) -> int:
    from agent.bundle import MANIFEST
    from agent.errors import UserFacingError
    from agent.registry import resolve
    from agent.training.lm_data import load_or_encode
    from agent.training.lm_train import Batcher
    from models.codec import load_codec
    from models.lm import load_lm, save_lm
    from models.lm.tokenizer import TextTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    teacher_files, student_files = resolve(args.teacher), resolve(args.student)
    if student_files.tokenizer is None:
        raise UserFacingError(f"{student_files.folder} has no tokenizer: distil a folder from `duplex convert`")
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
    seed_everything(args.seed)
    image_size = student.image_encoder.cfg.image_size if student.image_encoder is not None else 64
    examples = load_or_encode(data_folders(args.data), run_dir / "examples.pt", codec, tokenizer, image_size)
    with torch.no_grad():
        silence = codec.encode(torch.zeros(1, 1, codec.frame_size * 4, device=device))[0, :, -1].cpu()
    rng = random.Random(args.seed)
    batcher = Batcher(examples, student.cfg, silence, args.frames + 1, rng)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=args.lr, betas=(0.9, 0.95),
                            weight_decay=0.0)
    warm = min(100, args.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warm, args.steps))
    step = 0
    ckpt_path = run_dir / "distill.pt"
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None:
        student.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        step = ckpt["step"]
        set_rng_state(ckpt["rng"])
        rng.setstate(ckpt["batch_rng"])
        print(f"resumed from {ckpt_path} at step {step}")
    print(f"teacher {teacher_files.name} ({teacher.cfg.layer_kinds}), student {student_files.name} "
          f"({student.cfg.layer_kinds}; converted layers {layers}), {len(examples)} dialogues, device {device}")

    def save():
        save_checkpoint(ckpt_path, model=student.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                        step=step, rng=rng_state(), batch_rng=rng.getstate())
        save_lm(student, run_dir / "lm.safetensors")

    t0 = time.time()
    with tqdm(total=args.steps, initial=step, desc="distill", unit="step") as bar:
        while step < args.steps:
            inputs, targets, images, _ = batcher.batch(args.batch)
            loss, parts = distill_loss(teacher, student, inputs.to(device), targets.to(device), images,
                                       args.temperature, args.hidden_weight, layers)
            optimizer_step(loss, opt, sched, student.parameters())
            step += 1
            bar.update()
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
            if step % args.save_every == 0 or step == args.steps:
                save()
    print(f"done: step {step}, {time.time() - t0:.0f} s this run")
    if args.export:
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
    return 0
