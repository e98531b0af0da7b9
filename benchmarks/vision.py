"""`duplex bench vision`: per-step cost with an image shown vs none, and image-to-token latency (live engine)."""

from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np
import torch

from benchmarks.timing import device_name, summary, time_steps
from models.codec import FRAME_SIZE as FRAME
from models.codec import SAMPLE_RATE


def _step_times(pool, frames: int, rng) -> list[float]:
    inputs = ((0.05 * rng.standard_normal((pool.active, FRAME))).astype(np.float32) for _ in range(frames + 3))
    return time_steps(pool.step, inputs)


def step_cost(bundle, frames: int) -> tuple[list[float], list[float], float]:
    from agent.images import prepare
    from agent.training.scenes import render
    from models.lm import LMGenerator
    from streaming.slots import SlotPool

    pool = SlotPool(bundle.codec, LMGenerator(bundle.lm, bundle.sampling), 1,
                    bundle.files.input_noise_floor)
    pool.add(0)
    size = bundle.lm.image_encoder.cfg.image_size
    img = prepare(render("circle", "red", 3, size=size), size)
    rng = np.random.default_rng(0)
    off, on = [], []
    t0 = time.perf_counter()
    tokens = pool.encode_image(img)
    encode_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(2):  # interleave off/on runs so drift hits both
        pool.set_image(0, None)
        off += _step_times(pool, frames // 2, rng)
        pool.set_image(0, tokens)
        on += _step_times(pool, frames // 2, rng)
    return off, on, encode_ms


def _question_audio() -> np.ndarray:
    """'what do you see', spoken by the held-out voice (silence if flite is missing)."""
    try:
        from agent.training.tts import HELD_OUT_VOICE, synthesize

        return synthesize("what do you see", HELD_OUT_VOICE)
    except Exception:  # noqa: BLE001 - no TTS: measure with silence instead
        return np.zeros(SAMPLE_RATE, np.float32)


async def image_to_token(bundle, trials: int) -> tuple[list[float], list[float]]:
    """The user asks "what do you see"; as the question ends a new camera view arrives. Measured from the
    view's arrival: when the model sees it, and when the first text token of the answer comes."""
    from agent import Agent, AgentConfig, ImageUpdated, TextToken
    from agent.training.scenes import render

    question = _question_audio()
    swap_ms, token_ms = [], []
    async with Agent(bundle, AgentConfig(max_sessions=1, vision_fps=25)) as agent:
        for i in range(trials):
            async with agent.session(seed=i) as s:
                for k in range(0, question.size, FRAME):  # the question, paced in real time
                    s.send_audio_nowait(question[k:k + FRAME])
                    await asyncio.sleep(0.08)
                shape, colour = ["circle", "square", "triangle"][i % 3], ["red", "green", "blue", "yellow"][i % 4]
                t0 = time.monotonic()
                s.send_image(render(shape, colour, 1 + i % 4, size=64, seed=i))
                swapped = None
                silence_until = t0 + 3
                while time.monotonic() < silence_until:
                    s.send_audio_nowait(np.zeros(FRAME, np.float32))
                    try:
                        async with asyncio.timeout(0.08):
                            ev = await s._queue.get()
                    except TimeoutError:
                        continue
                    if isinstance(ev, ImageUpdated) and swapped is None:
                        swapped = time.monotonic()
                        swap_ms.append((swapped - t0) * 1e3)
                    elif isinstance(ev, TextToken) and swapped is not None:
                        token_ms.append((time.monotonic() - t0) * 1e3)
                        break
    return swap_ms, token_ms


def run_vision_bench(args) -> int:
    from agent.bundle import load_bundle
    from agent.registry import resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve(args.model), device=args.device)
    if bundle.lm.image_encoder is None:
        print(f"model '{bundle.name}' has no vision adapter")
        return 1
    print(f"device: {device_name()}  model: {bundle.name}  image tokens: {bundle.lm.num_image_tokens}  "
          f"cross-attention layers: {bundle.lm.cfg.vision.layers or 'all'}")
    off, on, encode_ms = step_cost(bundle, args.frames)
    added = statistics.median(on) / statistics.median(off) - 1
    print(f"step without image: {summary(off)}")
    print(f"step with image:    {summary(on)}   added {added * 100:+.1f}% (goal < 10%)")
    print(f"image encode (off the audio path, once per new view): {encode_ms:.1f} ms")
    swap, token = asyncio.run(image_to_token(bundle, args.trials))
    if swap:
        print(f"camera frame -> model sees it (sampled, encoded, swapped between steps): median "
              f"{statistics.median(swap):.0f} ms over {len(swap)} views")
    if token:
        print(f"camera frame -> first answer token (\"what do you see\" just asked): median "
              f"{statistics.median(token):.0f} ms ({len(token)} of {len(swap)} views)")
    else:
        print("camera frame -> first text token: the model emitted no text within 3 s of the swaps")
    return 0
