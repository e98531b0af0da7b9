import os
from pathlib import Path

import torch

# Without a GPU the Triton kernels are tested through Triton's CPU interpreter; this must be set before
# any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

SPEECH_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")


@pytest.fixture(autouse=True)
def _no_grad_and_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with torch.no_grad():
        yield


def real_speech_24k(seconds: float = 6.0) -> torch.Tensor:
    """Several seconds of real read speech (LibriVox clips from Debian's pocketsphinx-testdata) at 24 kHz."""
    from agent.audio import load_audio

    files = sorted(SPEECH_DIR.glob("*.wav"))
    if not files:
        pytest.skip("Debian package pocketsphinx-testdata is not installed (apt-get install pocketsphinx-testdata)")
    pieces, total = [], 0
    for f in files:
        s = load_audio(f).samples
        pieces.append(s)
        total += s.size
        if total >= seconds * 24000:
            break
    wav = np.concatenate(pieces)[: int(seconds * 24000)]
    return torch.from_numpy(wav)[None, None]


@pytest.fixture
def speech():
    return real_speech_24k


def chatty_bundle():
    """The shipped model's codec and tokenizer with a seeded random LM of the same shape.

    The trained model rightly stays quiet when nobody asks it anything; transport tests need a model that
    talks regardless, so they check the plumbing, not the model.
    """
    from agent.bundle import load_bundle
    from agent.registry import resolve
    from models.lm import LMModel

    bundle = load_bundle(resolve("default"), device="cpu")
    torch.manual_seed(0)
    bundle.lm = LMModel(bundle.lm.cfg).eval()
    return bundle


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """A per-user ONNX cache filled once, by the first use of `backend="onnx"` with the shipped model:
    (cache root for XDG_CACHE_HOME, the graphs' folder). Shared by every test of the ONNX backend."""
    pytest.importorskip("onnxruntime", reason="pip install 'duplex-agent[onnx]'")
    pytest.importorskip("onnxscript", reason="pip install 'duplex-agent[onnx]'")
    from agent.bundle import load_bundle
    from agent.config import AgentConfig
    from agent.onnx_backend import onnx_pool
    from agent.registry import resolve

    cache = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        onnx_pool(load_bundle(resolve("default"), device="cpu"), AgentConfig(max_sessions=1, backend="onnx"))
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = old
    folders = list((cache / "duplex" / "onnx").glob("*/onnx.json"))
    assert len(folders) == 1
    return cache, folders[0].parent
