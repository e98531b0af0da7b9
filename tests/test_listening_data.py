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
    # the selection phrasings are unheard in training too (they measure generalisation for checkpoint choice)
    held |= {t for v in ph.PHRASINGS.values() for t in v["select"]}
    held |= set(ph.OUT_OF_DOMAIN["select"]) | set(ph.PASSAGES["select"])
    held |= {t for _, p in ph.GREETING_INTENTS.values() for t in p["select"]}
    near = set(ph.NEAR_DOMAIN["held_out"]) | set(ph.NEAR_DOMAIN["select"])
    from agent.training.phrasing_grammar import undecorated

    for _ in range(6000):  # training draws, composed ones included, never use a held-out phrasing, not even
        qa = sample_turn(rng, None, "train")  # with a filler before or a "please" after it
        forms = undecorated(qa.question)
        assert not any(_matches(t, q) for t in held for q in forms), qa.question
        if qa.kind == "refuse_near":
            assert not any(_matches(t, q) for t in near for q in forms), qa.question
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


def test_out_of_domain_requests_in_its_own_frames_hold_nothing_it_can_answer():
    """Framed out-of-domain requests open like its questions ("what is ...", "can you ...") and hold no
    number, operator, colour or shape word: the core, not the frame, tells a request from a question."""
    from agent.training import phrasing_grammar as grammar
    from agent.training.dialogues import COLOURS, NUMBERS, SHAPES

    domain = {"plus", "minus", "add", "subtract", "times", "spell", "count", "see", "colour", "color", "many",
              *COLOURS, *SHAPES, *(f"{s}s" for s in SHAPES), *NUMBERS}
    rng = random.Random(3)
    drawn = {grammar.framed_out_of_domain(rng) for _ in range(2000)}
    assert len(drawn) > 1000
    for text in drawn:
        assert not set(text.split()) & domain, text
    frames = {f.split("{")[0] for f in grammar.QUESTION_FRAMES + grammar.COMMAND_FRAMES} - {""}
    assert sum(any(t.startswith(f) for f in frames) for t in drawn) > 0.8 * len(drawn)


def _matches(template: str, text: str) -> bool:
    import re

    pattern = re.escape(template)
    for field in ("a", "b", "n", "w", "s", "ss"):
        # one word (a digit, shape or word); counts may take two ("a hundred")
        pattern = pattern.replace(re.escape("{" + field + "}"), r"[a-z]+(?: [a-z]+)?" if field == "n" else r"[a-z]+")
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


def test_selection_phrasings_are_neither_training_nor_test_phrasings():
    """The selection set's rewordings: a third split, apart from the test set's and from every training draw."""
    for kind, v in ph.PHRASINGS.items():
        assert len(v["select"]) >= 3 and not set(v["select"]) & set(v["held_out"]), kind
    rng = random.Random(2)
    for _ in range(200):
        qa = sample_turn(rng, None, "select", kind="add")
        assert any(_matches(t, qa.question) for t in ph.PHRASINGS["add"]["select"]), qa.question
        assert qa.answer.split()[1] == "plus"  # the one answer form of its kind
        qa = sample_turn(rng, None, "select", kind="refuse_near")
        assert any(_matches(t, qa.question) for t in ph.NEAR_DOMAIN["select"]) and qa.answer == ph.REFUSAL


def test_room_chain_keeps_length_and_words_times_and_is_seeded():
    """`data synth --room`: the chain changes the sound, never the track's length (word times stay exact), and a
    seed gives the same chain; share 0 passes the track through untouched."""
    from agent.training.room import RoomAugment

    x = np.random.default_rng(0).normal(0, 0.1, 24_000 * 2).astype(np.float32)
    labels = set()
    for seed in range(12):
        y, label = RoomAugment(random.Random(seed), 1.0)(x)
        y2, label2 = RoomAugment(random.Random(seed), 1.0)(x)
        assert y.shape == x.shape and y.dtype == np.float32 and np.abs(y).max() <= 1.0
        assert label == label2 and np.array_equal(y, y2)
        labels |= set(label.split("+"))
    assert {"phone", "far"} <= {lab.rstrip("0123456789.dB") or lab for lab in labels} | labels
    same, label = RoomAugment(random.Random(0), 0.0)(x)
    assert same is x and label == ""


def test_barge_ins_cut_answers_short_mid_session_and_are_scored_on_silence():
    """`data synth --mix listen --barge-in SHARE`: the user says "stop" during an answer, the agent's words and
    voice end within 160 ms (20 ms fade), and the next question still comes and is answered in full; the
    listening bench scores such a turn on the agent falling silent, from the audio it produced."""
    from agent.training.synth import make_session
    from agent.training.tts import TRAIN_USER_VOICES, CachedTTS
    from benchmarks.listening import score_turns
    from models.codec import FRAME_SIZE, SAMPLE_RATE

    tts = CachedTTS()
    plain = make_session(random.Random(8), tts, TRAIN_USER_VOICES, kinds=["add", "count"])
    d = make_session(random.Random(8), tts, TRAIN_USER_VOICES, kinds=["add", "count"], barge_in=1.0)
    first, second = d["turns"]
    onset = first["barge_in"]
    assert "barge_in" not in plain["turns"][0] and first["question"] == plain["turns"][0]["question"]
    cut = onset + int(0.16 * SAMPLE_RATE)
    said = [(p, w) for p, w in d["words"] if p < second["user_start"]]
    assert 1 <= len(said) < len(first["answer"].split()) and all(p < cut for p, _ in said)
    assert np.abs(d["agent"][cut:second["user_start"]]).max() == 0  # silent from the cut to the next question
    assert np.abs(d["user"][onset:onset + int(0.2 * SAMPLE_RATE)]).max() > 0.05  # the user's "stop"
    assert second["user_start"] > cut and any(p > second["user_end"] for p, _ in d["words"])  # answered too
    assert d["kind"] == "session"

    d["set"] = "barge_in"
    frames = d["user"].size // FRAME_SIZE + 1
    texts = [""] * frames
    quiet = np.zeros(frames * FRAME_SIZE, np.float32)
    loud = quiet.copy()
    loud[onset + 6 * FRAME_SIZE: onset + 12 * FRAME_SIZE] = 0.2
    stopped, talked = (score_turns([d], [(texts, pcm)])[0] for pcm in (quiet, loud))
    assert stopped["ok"] and stopped["outcome"] == "stopped"
    assert not talked["ok"] and talked["outcome"] == "talking"


@pytest.mark.parametrize("args, said", [(["--barge-in", "1.5", "--mix", "listen"], "between 0 and 1"),
                                        (["--barge-in", "0.3"], "add --mix listen")])
def test_synth_refuses_a_barge_in_share_it_cannot_honour(tmp_path, capsys, args, said):
    from cli.main import main

    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--count", "2", *args]) == 1
    assert said in capsys.readouterr().err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, said", [(["--turns", "0-4", "--mix", "listen"], "1 <= MIN"),
                                        (["--turns", "5-2", "--mix", "listen"], "1 <= MIN"),
                                        (["--turns", "two", "--mix", "listen"], "MIN-MAX"),
                                        (["--turns", "2-5"], "add --mix listen")])
def test_synth_refuses_session_lengths_it_cannot_honour(tmp_path, capsys, args, said):
    from cli.main import main

    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--count", "2", *args]) == 1
    assert said in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_synth_turns_sets_the_questions_per_listening_session(tmp_path):
    import torch

    from cli.main import main

    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--count", "6", "--seed", "3", "--mix", "listen",
                 "--turns", "4-5"]) == 0
    dialogues = [d for f in sorted((tmp_path / "d").glob("shard_*.pt")) for d in torch.load(f, weights_only=False)]
    sessions = [d for d in dialogues if "turns" in d]
    assert sessions and all(4 <= len(d["turns"]) <= 5 for d in sessions)
    for d in sessions:  # every question in order, each one's answer after it
        starts = [t["user_start"] for t in d["turns"]]
        assert starts == sorted(starts)


def test_selection_mean_weighs_each_selection_set_once():
    """A round's shipping rule compares the mean of its four rule sets, each set weighing the same: 40 barge-ins
    count as much as 120 listed questions; the session selection set is read on its own."""
    from benchmarks.listening import RULE_SETS, SELECTION_SETS, selection_mean

    assert set(RULE_SETS) < {s.name for s in SELECTION_SETS}
    shares = [0.75, 0.25, 0.9, 0.5, 0.1]
    rows = []
    for spec, share in zip(SELECTION_SETS, shares, strict=True):
        rows += [{"set": spec.name, "ok": i < share * spec.count} for i in range(spec.count)]
    assert selection_mean(rows) == pytest.approx(100 * np.mean(shares[:4]))
    assert selection_mean([r for r in rows if r["set"] == "selection"]) == pytest.approx(75.0)
