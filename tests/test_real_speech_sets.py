"""The real human speech test sets: built from what Debian packages ship, with the answers a user would expect."""

import pytest

from benchmarks import real_speech

pytestmark = pytest.mark.skipif(not (real_speech.ASTERISK / "digits" / "minus.wav").exists(),
                                reason="asterisk-core-sounds-en-wav not installed (scripts/setup.sh)")


def test_out_of_domain_recordings_are_many_real_and_not_greetings():
    ds = real_speech.out_of_domain_recordings()
    assert len(ds) >= 100  # the "at least 100 out-of-domain clips" are met by real speech alone
    names = [d["qa"]["question"] for d in ds]
    assert not any(w in n for n in names for w in ("hello", "bye", "thank"))  # those a greeting would answer
    assert any(n.startswith("librivox/") for n in names) and any(n.startswith("en/") for n in names)
    for d in ds:
        assert d["kind"] == "real" and d["qa"]["answer"] == "" and d["user"].dtype.name == "int16"
        assert d["user_end"] <= d["user"].size


def test_real_voice_questions_are_spliced_words_with_exact_answers():
    from agent.training.dialogues import NUMBERS

    ds = real_speech.real_voice_questions(count=30, seed=1)
    assert len(ds) == 30 and {d["kind"] for d in ds} >= {"add", "sub", "greet"}
    for d in ds:
        q, a = d["qa"]["question"], d["qa"]["answer"]
        if d["kind"] in ("add", "sub"):
            x, op, y = q.split()
            value = NUMBERS.index(x) + NUMBERS.index(y) if op == "plus" else NUMBERS.index(x) - NUMBERS.index(y)
            assert a == f"{q} is {NUMBERS[value]}" and value >= 0
        # the words are in the track (a second or so of speech), after the lead-in
        speech = d["user"][d["qa"]["user_start"]: d["user_end"]]
        assert 0.3 * 24_000 < speech.size < 4 * 24_000 and abs(speech).max() > 1000
