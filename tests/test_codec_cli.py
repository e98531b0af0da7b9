import subprocess
import sys
import wave

import numpy as np
import pytest
import torch

from agent.audio import load_audio, write_wav
from cli.main import main
from models.codec import Codec, CodecConfig, save_codec


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    codec = Codec(CodecConfig.tiny(4))
    codec.quantizer.rvq_first.codebooks.normal_()
    codec.quantizer.rvq_rest.codebooks.normal_()
    path = tmp_path / "codec.safetensors"
    save_codec(codec, path)
    return str(path)


def _write(path, samples, rate, channels=1):
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def test_encode_decode_roundtrip(tmp_path, weights, capsys):
    wav = tmp_path / "in.wav"
    write_wav(wav, np.sin(np.linspace(0, 2000, 24000 * 2)).astype(np.float32) * 0.3)
    assert main(["codec", "encode", str(wav), str(tmp_path / "a.codes"), "--weights", weights]) == 0
    assert main(["codec", "decode", str(tmp_path / "a.codes"), str(tmp_path / "out.wav"), "--weights", weights]) == 0
    out = load_audio(tmp_path / "out.wav")
    assert out.samples.size == 48000  # trimmed back to the input length


def test_resample_and_downmix_notes(tmp_path, weights, capsys):
    stereo = np.random.default_rng(0).standard_normal(16000 * 2 * 2).astype(np.float32) * 0.1
    path = tmp_path / "stereo16k.wav"
    _write(path, stereo, 16000, channels=2)
    assert main(["codec", "encode", str(path), str(tmp_path / "b.codes"), "--weights", weights]) == 0
    err = capsys.readouterr().err
    assert "resampled 16000 Hz -> 24000 Hz" in err and "downmixed 2 channels" in err


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt"])
def test_bad_input_files(tmp_path, weights, capsys, kind):
    path = tmp_path / "x.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00garbage" * 10)
    assert main(["codec", "encode", str(path), str(tmp_path / "c.codes"), "--weights", weights]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_missing_weights_says_how_to_fix(tmp_path, capsys):
    wav = tmp_path / "in.wav"
    write_wav(wav, np.zeros(2400, np.float32))
    assert main(["codec", "encode", str(wav), str(tmp_path / "c.codes"), "--weights", str(tmp_path)]) == 1
    assert "huggingface-cli download" in capsys.readouterr().err


def test_decode_rejects_non_codes_file(tmp_path, weights, capsys):
    bogus = tmp_path / "bogus.codes"
    bogus.write_bytes(b"not safetensors")
    assert main(["codec", "decode", str(bogus), str(tmp_path / "o.wav"), "--weights", weights]) == 1
    assert "not a codes file" in capsys.readouterr().err


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "cli", "codec", "encode", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--weights" in out.stdout
