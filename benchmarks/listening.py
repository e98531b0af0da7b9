"""Does the model listen? Test sets of natural rewordings, requests it must refuse, vision questions with no
image, real recordings not meant for it, and long sessions of many questions; scored turn by turn.

Two kinds of set, never mixed up:
- **test** sets use the held-out phrasings of `agent.training.phrasing` and the held-out voice, and are
  reported once per shipped model; no training run or checkpoint choice ever reads them.
- the **selection** sets are what a training round may look at to choose between checkpoints: "selection" uses
  the fixed training phrasings (split "listed": other draws, the held-out voice, the same 120 questions since
  round 12, so rounds compare on one set), "selection_rewordings" (since round 14) the `select` phrasings, which
  no training draw uses and no test set reads: generalisation to new phrasings, measured apart from the tests.
  "selection_barge_in" (since round 15): answers the user cuts short; the model must fall silent.
  "selection_out_of_domain" (since round 15): `select` requests it must refuse or leave unanswered; the other
  selection sets held too few of them (27) to see a round that invents more out of domain.
  "selection_session" (since round 17): twelve-question sessions (other draws than the test sessions), scored by
  position in the session; it chose the attention window the shipped model runs with.
- real human speech (`benchmarks.real_speech`) belongs to the test sets only.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.codec import FRAME_SIZE as FRAME
from models.codec import SAMPLE_RATE as RATE

IN_DOMAIN = ["add", "sub", "count", "spell", "greet", "see", "colour", "howmany"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@dataclass
class SetSpec:
    name: str
    split: str  # phrasings: "held_out" (test sets), "select" or "listed" (selection sets; listed = training lists)
    count: int
    kinds: list[str]
    scene_p: float
    turns: int = 1
    goal: str = ""
    barge_in: float = 0.0  # share of answers the user interrupts (scored: silent 0.5-1 s after the interruption)


TEST_SETS = [
    SetSpec("rewordings", "held_out", 160, IN_DOMAIN, 0.5, goal=">= 85% exact"),
    SetSpec("near_domain", "held_out", 60, ["refuse_near"], 0.5, goal=">= 90% refused"),
    SetSpec("out_of_domain", "held_out", 60, ["refuse_out", "passage"], 0.5, goal="<= 5% invented answers"),
    SetSpec("no_image", "held_out", 30, ["see", "colour", "howmany"], 0.0, goal="'nothing' or refusal"),
    SetSpec("session", "listed", 6, IN_DOMAIN, 0.6, turns=12, goal="questions 10-12 within 3 points of the 1st"),
    SetSpec("long_session", "listed", 24, IN_DOMAIN, 0.6, turns=20,
            goal="questions 10-20 within 3 points of the 1st"),
    SetSpec("barge_in", "held_out", 40, IN_DOMAIN, 0.5, barge_in=1.0, goal="stops every time"),
]
REAL_SET_GOALS = {"real_recordings": "refusal or silence", "real_voice": ">= 85% exact (unseen kind of voice)"}
SELECTION_SETS = [SetSpec("selection", "listed", 120, IN_DOMAIN + ["refuse_near", "refuse_out", "passage"], 0.6),
                  SetSpec("selection_rewordings", "select", 96, IN_DOMAIN + ["refuse_near", "refuse_out"], 0.6),
                  SetSpec("selection_barge_in", "listed", 40, IN_DOMAIN, 0.6, barge_in=1.0),
                  SetSpec("selection_out_of_domain", "select", 60, ["refuse_near", "refuse_out", "passage"], 0.5),
                  SetSpec("selection_session", "listed", 12, IN_DOMAIN, 0.6, turns=12)]
# the sets whose mean a round's shipping rule compares (fixed since round 15; selection_session came later and is
# read on its own: it chose the attention window, round 17)
RULE_SETS = ["selection", "selection_rewordings", "selection_barge_in", "selection_out_of_domain"]


def build_set(spec: SetSpec, seed: int, voices=None) -> list[dict]:
    """Deterministic dialogues of one set (seeded); `voices` default to the held-out voice."""
    from agent.training.synth import make_session
    from agent.training.tts import HELD_OUT_VOICE, CachedTTS

    rng, tts = random.Random(seed), CachedTTS()
    out = []
    for _ in range(spec.count):
        kinds = [rng.choice(spec.kinds) for _ in range(spec.turns)]
        d = make_session(rng, tts, voices or [HELD_OUT_VOICE], spec.split, scene_p=spec.scene_p, kinds=kinds,
                         barge_in=spec.barge_in)
        if spec.turns > 1:  # long sessions: questions seconds or minutes apart are still answered
            d = _spread(d, rng, minutes=spec.name == "long_session")
        d["user"] = (np.clip(d["user"], -1, 1) * 32767).astype(np.int16)
        d["set"] = spec.name
        out.append(d)
    return out


def _spread(d: dict, rng: random.Random, minutes: bool = False) -> dict:
    """Stretch some gaps between a session's turns to many seconds of (noisy) silence (`minutes`: a few of them
    to one or two minutes, as when a user comes back to a conversation left open)."""
    user, turns = d["user"], d["turns"]
    pieces, shift, last = [], 0, 0
    for t in turns[1:]:
        cut = t["user_start"] - int(0.2 * RATE)
        pieces.append(user[last:cut])
        roll = rng.random()
        if roll < 0.3 or (minutes and roll > 0.95):
            extra = int((rng.uniform(5, 20) if roll < 0.3 else rng.uniform(60, 120)) * RATE)
            pieces.append(np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.002, extra).astype(np.float32))
            shift += extra
        last = cut
        t["user_start"] += shift
        t["user_end"] += shift
    pieces.append(user[last:])
    d["user"] = np.concatenate(pieces)
    return d


def real_sets() -> list[dict]:
    """Real human speech (`benchmarks.real_speech`): recordings not meant for the model, and its own questions
    said by a real person."""
    from benchmarks.real_speech import out_of_domain_recordings, real_voice_questions

    out = []
    for name, ds in (("real_recordings", out_of_domain_recordings()), ("real_voice", real_voice_questions())):
        for d in ds:
            d["set"] = name
        out += ds
    return out


def score_turns(dialogues: list[dict], results) -> list[dict]:
    """One row per turn: what it said between the end of the question and the next question."""
    from agent.training.phrasing import NOTHING_SEEN, REFUSAL
    from benchmarks.quality import frame_rms, silent_after_barge_in

    refusal, nothing = _words(REFUSAL), _words(NOTHING_SEEN)
    rows = []
    for d, (texts, pcm) in zip(dialogues, results):
        turns = d["turns"]
        rms = frame_rms(pcm, len(texts))
        for i, t in enumerate(turns):
            if "barge_in" in t:  # cut short: is the agent silent 0.5-1.0 s after the user's "stop"?
                talking = silent_after_barge_in(rms, t["barge_in"] // FRAME) is False
                rows.append({"set": d["set"], "kind": t["kind"], "position": i, "question": t["question"],
                             "expected": "(silence after the barge-in)", "got": "kept talking" if talking else "",
                             "outcome": "talking" if talking else "stopped", "ok": not talking})
                continue
            start = t["user_end"] // FRAME
            end = turns[i + 1]["user_start"] // FRAME if i + 1 < len(turns) else len(texts)
            got = _words("".join(texts[start:end]))
            expected = _words(t["answer"])
            outcome = ("silent" if not got else "refusal" if got == refusal else "nothing" if got == nothing
                       else "exact" if got == expected else "other")
            kind = t["kind"]
            if kind in ("refuse_near", "refuse_out"):
                ok = outcome == "refusal" or (kind == "refuse_out" and outcome == "silent")
            elif kind in ("passage", "real"):
                ok = outcome in ("silent", "refusal")
            elif kind == "unseen":
                ok = outcome in ("nothing", "refusal")
            else:
                ok = outcome == "exact"
            rows.append({"set": d["set"], "kind": kind, "position": i, "question": t["question"],
                         "expected": t["answer"], "got": " ".join(got), "outcome": outcome, "ok": ok})
    return rows


def _position_share(by_pos: dict[int, list[bool]], lo: int, hi: int) -> str:
    got = [v for p, vs in by_pos.items() if lo <= p < hi for v in vs]
    return f"{np.mean(got) * 100:.0f}% of {len(got)}" if got else "-"


def summarize(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(set, figure, detail) lines for the report."""
    lines = []
    by_set: dict[str, list[dict]] = {}
    for r in rows:
        by_set.setdefault(r["set"], []).append(r)
    for name, rs in by_set.items():
        ok = np.mean([r["ok"] for r in rs]) * 100
        detail = ""
        if name in ("out_of_domain", "real_recordings", "near_domain"):
            share = {o: np.mean([r["outcome"] == o for r in rs]) * 100 for o in ("refusal", "silent")}
            invented = np.mean([r["outcome"] in ("exact", "other", "nothing") for r in rs]) * 100
            detail = f"invented answers {invented:.0f}%, refused {share['refusal']:.0f}%, silent {share['silent']:.0f}%"
        elif name in ("session", "long_session", "selection_session"):
            by_pos: dict[int, list[bool]] = {}
            for r in rs:
                by_pos.setdefault(r["position"], []).append(r["ok"])
            last = max(by_pos) + 1
            detail = (f"question 1: {_position_share(by_pos, 0, 1)}, questions 2-9: {_position_share(by_pos, 1, 9)}, "
                      f"questions 10-{last}: {_position_share(by_pos, 9, last)}")
        else:
            kinds: dict[str, list[bool]] = {}
            for r in rs:
                kinds.setdefault(r["kind"], []).append(r["ok"])
            detail = ", ".join(f"{k} {np.mean(v) * 100:.0f}%" for k, v in sorted(kinds.items()))
        lines.append((name, f"{ok:.1f}% of {len(rs)}", detail))
    return lines


def run_listening(bundle, sets: list[SetSpec], seed: int = 4242, real: bool = True, batch: int = 16):
    from benchmarks.quality import run_dialogues

    dialogues = []
    for spec in sets:  # a set's seed follows its place in its list, so a subset (--sets) draws the same dialogues
        k = next((i for i, s in enumerate(TEST_SETS) if s.name == spec.name), None)
        k = k if k is not None else next(i for i, s in enumerate(SELECTION_SETS) if s.name == spec.name)
        dialogues += build_set(spec, seed + 7919 * k)
    if real:
        dialogues += real_sets()
    results = run_dialogues(bundle, dialogues, batch=batch, tail_s=1.0)
    rows = score_turns(dialogues, results)
    return rows, summarize(rows)


def selection_mean(rows: list[dict]) -> float:
    """The selection sets' figures averaged with one weight each (not per question): the number a round's
    shipping rule compares (docs/training.md, round 15), so that a small set such as barge-ins counts."""
    names = RULE_SETS
    shares = [np.mean([r["ok"] for r in rows if r["set"] == n]) * 100 for n in names
              if any(r["set"] == n for r in rows)]
    return float(np.mean(shares))


def print_table(lines: list[tuple[str, str, str]]) -> None:
    width = max(len(n) for n, _, _ in lines)
    for name, figure, detail in lines:
        goal = next((s.goal for s in TEST_SETS if s.name == name), REAL_SET_GOALS.get(name, ""))
        print(f"  {name:<{width}}  {figure:>14}  {detail}" + (f"   [goal: {goal}]" if goal else ""))


def run_listening_bench(args) -> int:
    import json
    import time

    import torch

    from agent.bundle import load_bundle
    from agent.registry import resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve(args.model), device=args.device)
    sets = SELECTION_SETS if args.selection else [s for s in TEST_SETS if not args.sets or s.name in args.sets]
    kind = "SELECTION set (for choosing checkpoints)" if args.selection else "TEST sets (report once per model)"
    print(f"model: {bundle.name} (trained: {bundle.files.trained}); {kind}; voice flite:rms (held out)")
    t0 = time.time()
    rows, lines = run_listening(bundle, sets, real=not args.selection and not args.no_real, batch=args.batch)
    print_table(lines)
    if args.selection:
        print(f"  mean of the {len(RULE_SETS)} rule sets ({', '.join(RULE_SETS)}; one weight each): "
              f"{selection_mean(rows):.1f}%")
    print(f"({time.time() - t0:.0f} s)")
    if args.rows:
        Path(args.rows).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"every scored turn: {args.rows}")
    return 0
