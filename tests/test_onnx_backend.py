"""The frame step exported to ONNX and run by ONNX Runtime equals the PyTorch step: for the shipped default model
(vocoder codec, Mamba2 hybrid, vision) and a tiny random model in kyutai's layout (Mimi codec, attention), over
110 frames of real speech, greedy: identical text and audio tokens and codec codes, logits and audio within 1e-4;
batched == alone across joins and leaves with seeded sampling; the backend through the library and `duplex run`;
clear errors for graphs of other weights and a missing folder."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="pip install 'duplex-agent[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'duplex-agent[onnx]'")

from agent.bundle import load_bundle  # noqa: E402
from agent.registry import resolve  # noqa: E402
from models.lm import LMGenerator, SamplingConfig  # noqa: E402
from models.onnx_graphs import export_graphs, step_fingerprint  # noqa: E402
from streaming.onnx_pool import OnnxBackendError, OnnxSlotPool  # noqa: E402
from streaming.slots import SlotPool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAME = 1920
FRAMES = 110


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(resolve("default"), device="cpu")


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    """Two real voices: the shipped recorded question, and LibriVox read speech."""
    from conftest import real_speech_24k

    from agent.audio import load_audio

    question = load_audio(ROOT / "agent" / "examples" / "what_do_you_see.wav").samples
    reading = real_speech_24k(FRAMES * FRAME / 24000 + 0.5).reshape(-1).numpy()
    return [np.resize(question, FRAMES * FRAME).astype(np.float32), reading[: FRAMES * FRAME].astype(np.float32)]


@pytest.fixture(scope="module")
def default_greedy(bundle, tmp_path_factory):
    gen = LMGenerator(bundle.lm, SamplingConfig.greedy())
    out = tmp_path_factory.mktemp("onnx") / "default"
    export_graphs(bundle.codec, gen, out, log=lambda m: None)
    return gen, out


@pytest.fixture(scope="module")
def cached_default(bundle, onnx_cache):
    """The first use of `backend="onnx"` exported the model's own graphs into the per-user cache (conftest)."""
    cache, folder = onnx_cache
    assert OnnxSlotPool(folder, 1).manifest["fingerprint"] == step_fingerprint(bundle.codec, bundle.lm,
                                                                               bundle.sampling)
    return cache, folder


def compare(codec, gen, folder: Path, speech: list[np.ndarray], noise_floor: float = 0.0, fp: str | None = None):
    """Step both backends over the same frames of two sessions; everything must agree."""
    torch_pool = SlotPool(codec, gen, 2, noise_floor, graphs=False)
    onnx_pool = OnnxSlotPool(folder, 2, noise_floor, fingerprint=fp)
    for pool in (torch_pool, onnx_pool):
        pool.keep_logits = True
        pool.add(3)
        pool.add(8)
    spoke = 0
    for t in range(FRAMES):
        frames = np.stack([s[t * FRAME:(t + 1) * FRAME] for s in speech])
        a, b = torch_pool.step(frames), onnx_pool.step(frames)
        np.testing.assert_array_equal(b.user_codes, a.user_codes)  # the codec's codes
        np.testing.assert_array_equal(b.text, a.text)
        np.testing.assert_array_equal(b.audio_codes, a.audio_codes)
        np.testing.assert_array_equal(b.valid, a.valid)
        np.testing.assert_allclose(b.text_logits, a.text_logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(b.pcm, a.pcm, atol=1e-4, rtol=0)
        spoke += int(np.abs(a.pcm).max() > 1e-3)
    return spoke


def test_default_model_onnx_equals_pytorch(bundle, default_greedy, speech):
    gen, folder = default_greedy
    fp = step_fingerprint(bundle.codec, bundle.lm, gen.sampling)
    spoke = compare(bundle.codec, gen, folder, speech, bundle.files.input_noise_floor, fp)
    assert spoke > 10  # the model really answered (audio compared, not silence)
    # graphs traced with other sampling settings, or another attention window (it sizes the caches), are not these
    assert fp != step_fingerprint(bundle.codec, bundle.lm, bundle.sampling)
    window = bundle.lm.cfg.context
    try:
        bundle.lm.cfg.context = window // 2
        assert fp != step_fingerprint(bundle.codec, bundle.lm, gen.sampling)
    finally:
        bundle.lm.cfg.context = window


def test_tiny_kyutai_layout_model_onnx_equals_pytorch(tmp_path, speech):
    from models.codec import Codec, CodecConfig
    from models.lm import LMConfig, LMModel

    torch.manual_seed(0)
    codec, lm = Codec(CodecConfig.tiny(4)).eval(), LMModel(LMConfig.tiny()).eval()
    gen = LMGenerator(lm, SamplingConfig.greedy())
    export_graphs(codec, gen, tmp_path, log=lambda m: None)
    compare(codec, gen, tmp_path, speech)


def test_onnx_batched_equals_alone_across_joins_and_leaves(bundle, cached_default):
    """Seeded sampling (the model's own settings) stays batch-invariant, and rows move as sessions leave."""
    from test_engine import _speechlike, run_joins_and_leaves

    frames, seeds = 24, [11, 22, 33]
    folder = cached_default[1]
    audio = [_speechlike(s, frames) for s in seeds]

    def alone(seed, a):
        pool = OnnxSlotPool(folder, 1)
        pool.add(seed)
        return [(int(o.text[0]), o.audio_codes[0].tolist())
                for o in (pool.step(a[None, t * FRAME:(t + 1) * FRAME]) for t in range(frames))]

    solo = [alone(s, a) for s, a in zip(seeds, audio)]
    torch_pool = SlotPool(bundle.codec, LMGenerator(bundle.lm, bundle.sampling), 1, graphs=False)
    torch_pool.add(seeds[1])
    assert [(int(o.text[0]), o.audio_codes[0].tolist()) for o in
            (torch_pool.step(audio[1][None, t * FRAME:(t + 1) * FRAME]) for t in range(frames))] == solo[1]
    got = run_joins_and_leaves(OnnxSlotPool(folder, 4), seeds, audio, frames)
    assert got[0] == solo[0][:16] and got[1] == solo[1] and got[2] == solo[2][: frames - 8]


def test_backend_through_the_library_and_duplex_run(bundle, cached_default, tmp_path, monkeypatch):
    """`AgentConfig(backend="onnx")` (graphs from the cache its first use filled) answers as the PyTorch backend
    does and sees the camera; `duplex run --backend onnx` finds the cache and writes the same text."""
    from agent import Agent, AgentConfig, TextToken

    cache = cached_default[0]
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    question = ROOT / "agent" / "examples" / "what_do_you_see.wav"
    image = ROOT / "agent" / "examples" / "three_red_circles.png"

    async def answer(backend: str) -> str:
        from agent.audio import load_audio

        async with Agent(bundle, AgentConfig(max_sessions=2, realtime=False, backend=backend)) as agent:
            async with agent.session(seed=0) as s:
                await s.show_image(image.read_bytes())
                await s.send_audio(load_audio(question).samples)
                await s.send_audio(np.zeros(24000 * 3, np.float32))
                await s.end_input()
                text = []
                async for ev in s.events(timeout=30):
                    if isinstance(ev, TextToken):
                        text.append(ev.text)
                    if s.frames_out >= 80:
                        break
                return "".join(text).strip()

    got = asyncio.run(answer("onnx"))
    assert got == asyncio.run(answer("torch")) and "three red circles" in got
    env = {"XDG_CACHE_HOME": str(cache), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "cli", "run", "--backend", "onnx", "--input", str(question),
                        "--image", str(image), "--output", str(tmp_path / "r.wav"), "--text", str(tmp_path / "r.txt"),
                        "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "exporting" not in p.stderr  # the cache from the first use was found
    assert "three red circles" in p.stdout


def test_clear_errors(bundle, default_greedy, tmp_path):
    import shutil

    import onnx

    _, folder = default_greedy
    with pytest.raises(OnnxBackendError, match="other weights"):
        OnnxSlotPool(folder, 1, fingerprint="0" * 40)
    newer = tmp_path / "newer"
    shutil.copytree(folder, newer)
    graph = onnx.load(str(newer / "encode.onnx"))
    for entry in graph.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 99  # an opset no runtime has
    onnx.save(graph, str(newer / "encode.onnx"))
    with pytest.raises(OnnxBackendError, match="opset this ONNX Runtime .* lacks: upgrade onnxruntime"):
        OnnxSlotPool(newer, 1)
    with pytest.raises(OnnxBackendError, match="duplex export onnx"):
        OnnxSlotPool(tmp_path, 1)
    p = subprocess.run([sys.executable, "-m", "cli", "run", "--backend", "onnx", "--onnx-dir", str(tmp_path),
                        "--input", str(ROOT / "agent" / "examples" / "what_do_you_see.wav"), "--output",
                        str(tmp_path / "r.wav")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "holds no exported graphs" in p.stderr and "Traceback" not in p.stderr


def test_io_binding_steps_the_state_in_place_with_the_same_results(cached_default):
    """The CUDA path's I/O binding (state bound by pointer, result buffers swapped in) run here on the CPU:
    the same tokens and audio as feeding arrays, across a join and a leave."""
    from test_engine import _speechlike

    folder = cached_default[1]
    pools = [OnnxSlotPool(folder, 3, 0.002, io_binding=flag) for flag in (False, True)]
    audio = [_speechlike(s, 20) for s in (4, 5, 6)]
    for pool in pools:
        pool.add(4)
        pool.add(5)
    for t in range(20):
        if t == 6:
            assert [pool.add(6) for pool in pools] == [2, 2]
        if t == 12:
            assert [pool.remove(0) for pool in pools] == [2, 2]  # session 6 moves into row 0
        live = [0, 1] if t < 6 else [0, 1, 2] if t < 12 else [2, 1]  # the session in each row
        x = np.stack([audio[k][t * FRAME:(t + 1) * FRAME] for k in live])
        a, b = (pool.step(x) for pool in pools)
        np.testing.assert_array_equal(a.text, b.text)
        np.testing.assert_array_equal(a.audio_codes, b.audio_codes)
        np.testing.assert_array_equal(a.user_codes, b.user_codes)
        np.testing.assert_array_equal(a.pcm, b.pcm)
    assert pools[1].io_binding and not pools[0].io_binding
