"""`duplex run` and `duplex models`, and loading kyutai's folder layout."""

import json
import wave

import numpy as np
import pytest
import torch

from agent import registry
from agent.audio import write_wav
from agent.bundle import describe_folder, load_bundle
from agent.errors import ModelNotFoundError
from cli.main import main


@pytest.fixture()
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DUPLEX_CONFIG", str(tmp_path / "config.toml"))
    return tmp_path


def test_run_writes_audio_and_timestamped_text(tmp_path, capsys):
    from tests.conftest import real_speech_24k

    speech = real_speech_24k(3.0)[0, 0].numpy()
    src = tmp_path / "user.wav"
    write_wav(src, speech)
    out, text = tmp_path / "reply.wav", tmp_path / "reply.txt"
    rc = main(["run", "--input", str(src), "--output", str(out), "--text", str(text), "--tail", "1", "--quiet"])
    assert rc == 0
    with wave.open(str(out)) as f:
        assert f.getframerate() == 24000
        frames = -(-(speech.size + 24000) // 1920)
        assert f.getnframes() == frames * 1920
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    assert np.abs(pcm[1920 * 2:]).max() > 0  # the model spoke after its delay
    lines = text.read_text().splitlines()
    assert "# token stream: time (s), text piece" in lines
    # same seed, same output
    out2 = tmp_path / "reply2.wav"
    main(["run", "--input", str(src), "--output", str(out2), "--tail", "1", "--quiet"])
    assert out.read_bytes() == out2.read_bytes()


def test_run_errors_are_clear(tmp_path, capsys, config_home):
    assert main(["run", "--input", str(tmp_path / "nope.wav"), "--output", str(tmp_path / "o.wav")]) == 1
    assert "not found" in capsys.readouterr().err
    src = tmp_path / "u.wav"
    write_wav(src, np.zeros(2400, np.float32))
    assert main(["run", "--input", str(src), "--output", str(tmp_path / "o.wav"), "--model", "moshiko"]) == 1
    err = capsys.readouterr().err
    assert "no model named 'moshiko'" in err and "duplex models add" in err
    assert main(["run", "--input", str(src), "--output", str(tmp_path / "o.wav"), "--image", "x.png",
                 "--quiet"]) == 1
    assert "image file not found" in capsys.readouterr().err


def test_models_lists_embedded_and_registered(tmp_path, capsys, config_home):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "embedded" in out
    assert main(["models", "add", "mine", str(registry.EMBEDDED_DIR / "default")]) == 0
    assert main(["models"]) == 0
    assert "mine" in capsys.readouterr().out
    assert registry.resolve("mine").folder == (registry.EMBEDDED_DIR / "default").resolve()
    assert main(["models", "add", "bad", str(tmp_path)]) == 1
    assert "neither our model" in capsys.readouterr().err


def test_kyutai_release_layout_loads(tmp_path):
    """A folder laid out like kyutai's release (published key names) loads with the same commands."""
    from models.codec import Codec, CodecConfig, save_codec
    from models.lm import LMConfig, LMModel
    from models.lm.checkpoint import convert_moshi_state_dict

    torch.manual_seed(0)
    cfg = LMConfig.tiny()
    lm = LMModel(cfg)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in convert_moshi_state_dict(lm.state_dict()).items()},
              str(tmp_path / "model.safetensors"))
    save_codec(Codec(CodecConfig.tiny(4)), tmp_path / "tokenizer-e351c8d8-checkpoint125.safetensors")
    fields = {k: v for k, v in cfg.__dict__.items() if k != "mamba"}
    (tmp_path / "config.json").write_text(json.dumps(fields))
    files = describe_folder(tmp_path)
    assert files.kind == "kyutai" and files.tokenizer is None
    bundle = load_bundle(files, device="cpu")
    assert bundle.lm.cfg.dim == cfg.dim and bundle.codec.num_codebooks == cfg.user_streams

    async def no_vision():
        from agent import Agent, UnsupportedError

        async with Agent(bundle) as agent, agent.session() as s:
            with pytest.raises(UnsupportedError, match="vision"):
                s.send_image(np.zeros((32, 32, 3), np.uint8))

    import asyncio

    asyncio.run(no_vision())
    (tmp_path / "tokenizer-e351c8d8-checkpoint125.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="Mimi"):
        describe_folder(tmp_path)


def test_run_token_stream_keeps_the_last_frames_text(tmp_path, monkeypatch):
    """Regression: the run stopped reading at the last frame's audio, before that frame's text piece, so the
    token stream lacked what the transcript line had. A model that never pads its text makes it visible."""
    from agent import Agent
    from tests.conftest import chatty_bundle

    bundle = chatty_bundle()
    silent = torch.tensor([i for i in range(bundle.lm.cfg.text_card) if not bundle.token_text(i)])
    bundle.lm.text_linear.register_forward_hook(lambda mod, inp, out: out.index_fill(-1, silent, -1e4))
    monkeypatch.setattr(Agent, "from_pretrained", classmethod(lambda cls, name, config=None: cls(bundle, config)))
    src, text = tmp_path / "user.wav", tmp_path / "reply.txt"
    write_wav(src, np.zeros(24000, np.float32))
    assert main(["run", "--input", str(src), "--output", str(tmp_path / "r.wav"), "--text", str(text),
                 "--tail", "0.5", "--quiet"]) == 0
    lines = text.read_text().splitlines()
    split = lines.index("# token stream: time (s), text piece")
    said = " ".join(line.split("] ", 1)[1] for line in lines[:split] if line.startswith("["))
    pieces = [eval(line.split("\t")[1]) for line in lines[split + 1:] if line.strip()]  # noqa: S307 - our repr
    assert pieces and " ".join("".join(pieces).split()) == " ".join(said.split())
    frames = -(-(24000 + 12000) // 1920)
    last = max(float(line.split("\t")[0]) for line in lines[split + 1:] if line.strip())
    assert abs(last - (frames - 1) * 0.08) < 1e-6  # the last frame's piece is there
