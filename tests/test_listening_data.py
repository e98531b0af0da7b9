"""The listening round's data: natural phrasings (held-out ones never in training), refusals, sessions."""

import random
import shutil

import numpy as np
import pytest

from agent.training import phrasing as ph
from agent.training.dialogues import sample_turn

pytestmark = pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None,
                                reason="espeak-ng/flite not installed (scripts/setup.sh)")


def test_held_out_phrasings_never_reach_training():
    ph.assert_disjoint()
    rng = random.Random(0)
    held = {t for v in ph.PHRASINGS.values() for t in v["held_out"]}
    held |= set(ph.OUT_OF_DOMAIN["held_out"]) | set(ph.PASSAGES["held_out"])
    held |= {t for _, p in ph.GREETING_INTENTS.values() for t in p["held_out"]}
    near = set(ph.NEAR_DOMAIN["held_out"])
    for _ in range(6000):  # training draws, composed ones included, never use a held-out phrasing
        qa = sample_turn(rng, None, "train")
        assert not any(_matches(t, qa.question) for t in held), qa.question
        if qa.kind == "refuse_near":
            assert not any(_matches(t, qa.question) for t in near), qa.question
    assert ph.held_out_phrasings() >= 30


def test_composed_phrasings_are_many_and_keep_one_answer():
    """The grammar gives each kind well over a hundred ways to ask (the fixed lists gave 5-12), and a composed
    question keeps its kind's one answer form."""
    from agent.training import phrasing_grammar as grammar

    for kind in ("add", "sub", "count"):
        assert len(grammar.templates(kind)) > 100
    assert len(grammar.templates("near_arith")) > 300
    rng = random.Random(5)
    seen = set()
    for _ in range(400):
        qa = sample_turn(rng, None, "train", kind="add")
        seen.add(qa.question)
        assert qa.answer.split()[1] == "plus" and qa.answer.split()[4] == qa.key[0]
    assert len(seen) > 250  # almost every draw is a new sentence


def _matches(template: str, text: str) -> bool:
    import re

    pattern = re.escape(template)
    for field in ("a", "b", "n", "w", "s", "ss"):
        pattern = pattern.replace(re.escape("{" + field + "}"), r"[a-z]+")  # one word: a digit, shape or word
    return re.fullmatch(pattern, text) is not None


def test_turns_answer_refuse_or_say_nothing_is_seen():
    from agent.training.dialogues import Scene

    rng = random.Random(1)
    scene = Scene("circle", "red", 3)
    assert sample_turn(rng, scene, kind="see").answer == "i see three red circles"
    assert sample_turn(rng, None, kind="see").answer == ph.NOTHING_SEEN  # no camera: it says so
    assert sample_turn(rng, None, kind="refuse_near").answer == ph.REFUSAL
    assert sample_turn(rng, None, kind="refuse_out").answer == ph.REFUSAL
    assert sample_turn(rng, None, kind="passage").answer == ""  # not addressed to it: silence


def test_sessions_hold_several_questions_in_order_with_aligned_answers():
    from agent.training.synth import make_session
    from agent.training.tts import TRAIN_USER_VOICES, CachedTTS

    rng, tts = random.Random(3), CachedTTS()
    d = make_session(rng, tts, TRAIN_USER_VOICES, kinds=["add", "passage", "refuse_out"])
    turns = d["turns"]
    assert [t["kind"] for t in turns] == ["add", "passage", "refuse_out"] and d["kind"] == "session"
    for a, b in zip(turns, turns[1:]):
        assert a["user_end"] < b["user_start"]
    words = [w for _, w in d["words"]]
    assert words == turns[0]["answer"].split() + ph.REFUSAL.split()  # the passage gets no answer
    starts = [p for p, _ in d["words"]]
    assert starts[0] > turns[0]["user_end"] and starts[-1] > turns[2]["user_end"]
    assert d["user"].size == d["agent"].size and np.abs(d["agent"]).max() > 0
