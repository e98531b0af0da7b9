"""`duplex data synth`: spoken dialogues (user + agent tracks, aligned agent words, optional image).

One dialogue = the user asks, the agent answers ~0.2-0.3 s after the user stops, then silence. Some dialogues
are silent throughout (the agent must stay silent) and some have the user interrupt (the agent stops).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.training.dialogues import SESSION_TURNS, sample_qa
from agent.training.tts import (
    AGENT_VOICE,
    HELD_OUT_VOICE,
    TRAIN_USER_VOICES,
    WIDE_USER_VOICES,
    WIDER_USER_VOICES,
    CachedTTS,
    Voice,
    check_engines,
)
from models.codec import SAMPLE_RATE as RATE

SHARD = 250
NOISE_FLOOR = 0.002  # RMS of the user track's background noise (--augment draws it per dialogue instead)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def warp(x: np.ndarray, factor: float) -> np.ndarray:
    """Play `x` `factor` times faster (tempo and pitch together, like a different vocal tract and pace)."""
    n = max(1, int(round(x.size / factor)))
    return np.interp(np.linspace(0, x.size - 1, n), np.arange(x.size), x).astype(np.float32)


@dataclass
class Augment:
    """Per-dialogue variation of the user's track, drawn from its own RNG so that turning it on or off leaves
    every other random choice (questions, timing, the held-out set) unchanged."""

    rng: random.Random
    tempo: tuple[float, float] = (0.88, 1.14)
    noise: tuple[float, float] = (0.0005, 0.008)

    def draw(self) -> tuple[float, float]:
        return self.rng.uniform(*self.tempo), self.rng.uniform(*self.noise)


def make_dialogue(rng: random.Random, tts: CachedTTS, voices: list[Voice], vision: bool = True,
                  augment: Augment | None = None) -> dict:
    voice = rng.choice(voices)
    factor, noise = augment.draw() if augment else (1.0, NOISE_FLOOR)

    def say(text: str) -> np.ndarray:
        x = tts(text, voice)
        return warp(x, factor) if factor != 1.0 else x

    qa = sample_qa(rng, vision)
    roll = rng.random()
    if roll < 0.05:  # nobody speaks: the agent must stay silent
        n = int(rng.uniform(2.0, 4.0) * RATE)
        return {"user": np.zeros(n, np.float32), "agent": np.zeros(n, np.float32), "words": [], "kind": "silence",
                "qa": None, "voice": voice.label, "user_end": 0}
    question = say(qa.question) * rng.uniform(0.5, 1.0)
    lead = _silence(rng.uniform(0.2, 0.8))
    user = [lead, question]
    user_end = lead.size + question.size
    gap = int(rng.uniform(0.16, 0.32) * RATE)
    start = user_end + gap
    agent_parts, words, pos = [], [], start
    for w in qa.answer.split():
        a = tts(w, AGENT_VOICE)
        words.append((pos, w))
        agent_parts.append(a)
        agent_parts.append(_silence(0.06))
        pos += a.size + int(0.06 * RATE)
    agent = np.concatenate([np.zeros(start, np.float32), *agent_parts])
    kind = qa.kind
    if roll > 0.85 and len(words) >= 3:  # the user barges in: the agent stops within ~160 ms
        onset = words[rng.randint(1, len(words) - 1)][0] + int(rng.uniform(0.0, 0.2) * RATE)
        interruption = say(rng.choice(BARGE_INS)) * rng.uniform(0.6, 1.0)
        cut = onset + int(0.16 * RATE)
        fade = min(480, max(0, agent.size - cut))
        agent[cut:cut + fade] *= np.linspace(1, 0, fade, dtype=np.float32)
        agent[cut + fade:] = 0
        words = [(p, w) for p, w in words if p < cut]
        user_pad = np.zeros(max(0, onset - user_end), np.float32)
        user += [user_pad, interruption]
        kind = "interrupted"
    user_t = np.concatenate(user)
    total = max(user_t.size, agent.size) + int(rng.uniform(0.4, 1.0) * RATE)
    user_t = np.pad(user_t, (0, total - user_t.size))
    agent = np.pad(agent, (0, total - agent.size))[:total]
    user_t = user_t + np.random.default_rng(rng.randint(0, 2**31)).normal(0, noise, total).astype(np.float32)
    return {"user": user_t, "agent": agent, "words": words, "kind": kind, "voice": voice.label,
            "qa": asdict(qa), "user_end": user_end, "tempo": factor}


def make_session(rng: random.Random, tts: CachedTTS, voices: list[Voice], split: str = "train",
                 augment: Augment | None = None, turns: tuple[int, int] = SESSION_TURNS, scene_p: float = 0.6,
                 kinds: list[str] | None = None, barge_in: float = 0.0) -> dict:
    """A listening session: 1-3 questions in natural phrasings (`split` picks train or held-out phrasings),
    back to back or seconds apart, some it must refuse, vision questions with or without an image shown, and
    read passages it must not answer. `kinds` fixes the kind of each turn (test sets). `barge_in`: the share of
    answers the user cuts short ("stop", "wait"...) after their first word; the agent stops within 160 ms and
    the session goes on (0 draws nothing, so the other random choices stay as they were)."""
    from agent.training.dialogues import COLOURS, SHAPES, Scene, sample_turn

    voice = rng.choice(voices)
    factor, noise = augment.draw() if augment else (1.0, NOISE_FLOOR)

    def say(text: str) -> np.ndarray:
        x = tts(text, voice)
        return warp(x, factor) if factor != 1.0 else x

    scene = Scene(rng.choice(SHAPES), rng.choice(COLOURS), rng.randint(1, 4)) if rng.random() < scene_p else None
    n = len(kinds) if kinds else rng.randint(*turns)
    user_parts, agent_parts, words, turn_meta = [], [], [], []
    cursor = 0  # samples: where the conversation has got to
    for i in range(n):
        qa = sample_turn(rng, scene, split, kinds[i] if kinds else None)
        lead = rng.uniform(0.2, 0.8) if i == 0 else (rng.uniform(0.3, 1.0) if rng.random() < 0.5
                                                      else rng.uniform(1.0, 4.0))
        question = say(qa.question) * rng.uniform(0.5, 1.0)
        q_start = cursor + int(lead * RATE)
        user_parts.append((q_start, question))
        user_end = q_start + question.size
        cursor = user_end
        if qa.answer:
            pos = user_end + int(rng.uniform(0.16, 0.32) * RATE)
            said = []
            for w in qa.answer.split():
                said.append((pos, w, tts(w, AGENT_VOICE)))
                pos += said[-1][2].size + int(0.06 * RATE)
            cursor = pos
            onset = None
            if barge_in and rng.random() < barge_in and len(said) >= 2:
                onset = said[rng.randint(1, len(said) - 1)][0] + int(rng.uniform(0.0, 0.2) * RATE)
                stop = say(rng.choice(BARGE_INS)) * rng.uniform(0.6, 1.0)
                user_parts.append((onset, stop))
                said = _cut(said, onset + int(0.16 * RATE))
                cursor = onset + stop.size
            words += [(p, w) for p, w, _ in said]
            agent_parts += [(p, a) for p, _, a in said]
        meta = asdict(qa)
        meta.update(user_start=q_start, user_end=user_end)
        if qa.answer and onset is not None:
            meta["barge_in"] = onset
        turn_meta.append(meta)
    total = cursor + int(rng.uniform(0.6, 1.2) * RATE)
    user, agent = np.zeros(total, np.float32), np.zeros(total, np.float32)
    for start, x in user_parts:
        user[start:start + x.size] += x
    for start, x in agent_parts:
        agent[start:start + x.size] += x
    user += np.random.default_rng(rng.randint(0, 2**31)).normal(0, noise, total).astype(np.float32)
    first = dict(turn_meta[0])
    first["scene"] = asdict(scene) if scene else None  # the image shown for the whole session
    kind = ("interrupted" if "barge_in" in turn_meta[0] else turn_meta[0]["kind"]) if n == 1 else "session"
    return {"user": user, "agent": agent, "words": words, "kind": kind, "voice": voice.label, "qa": first,
            "turns": turn_meta, "user_end": turn_meta[0]["user_end"], "tempo": factor}


BARGE_INS = ["stop", "wait", "hold on"]


def _cut(said: list[tuple[int, str, np.ndarray]], cut: int) -> list[tuple[int, str, np.ndarray]]:
    """The words of an answer said before sample `cut`; the one under way fades out over 20 ms."""
    kept = []
    for pos, w, a in said:
        if pos >= cut:
            break
        if pos + a.size > cut:
            a = a[: cut - pos].copy()
            fade = min(480, a.size)
            a[a.size - fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
        kept.append((pos, w, a))
    return kept


def _to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


VOICE_POOLS = {"base": TRAIN_USER_VOICES, "wide": WIDE_USER_VOICES, "wider": WIDER_USER_VOICES}


def synth_dataset(out: Path, count: int, seed: int, held_out: bool = False, vision: bool = True,
                  voices: str = "base", augment: bool = False, mix: str = "classic", room: float = 0.0,
                  barge_in: float = 0.0, turns: tuple[int, int] = SESSION_TURNS) -> int:
    """Write `count` dialogues as shards of SHARD; skips shards that already exist (resumable).

    `voices` picks the training user-voice pool ("base": the 12 voices of the first shipped model, "wide": 200+,
    "wider": those plus festival and piper voices);
    `augment` warps each dialogue's user speech in tempo/pitch and varies its noise floor;
    `mix` "listen": 60% listening sessions (`make_session`: natural phrasings, refusals, several questions), 40%
    classic dialogues (single questions, silences, barge-ins);
    `room` passes that share of the user tracks through a drawn room-and-microphone chain (`room.RoomAugment`);
    `barge_in` is the share of the listening sessions' answers the user interrupts (`make_session`);
    `turns` the range of questions per listening session."""
    from agent.training.room import RoomAugment

    pool = [HELD_OUT_VOICE] if held_out else VOICE_POOLS[voices]
    check_engines(pool + [AGENT_VOICE])
    out.mkdir(parents=True, exist_ok=True)
    tts = CachedTTS()
    shards = (count + SHARD - 1) // SHARD
    written = 0
    with tqdm(total=count, desc=f"synth {out.name}", unit="dialogue") as bar:
        for s in range(shards):
            path = out / f"shard_{s:04d}.pt"
            n = min(SHARD, count - s * SHARD)
            if path.exists():
                bar.update(n)
                continue
            rng = random.Random(seed * 1_000_003 + s)
            aug = Augment(random.Random(seed * 7_919 + s)) if augment else None
            acoustics = RoomAugment(random.Random(seed * 104_729 + s), room) if room > 0 else None
            items = []
            for _ in range(n):
                if mix == "listen" and rng.random() < 0.6:
                    d = make_session(rng, tts, pool, "train", aug, turns=turns, barge_in=barge_in)
                else:
                    d = make_dialogue(rng, tts, pool, vision, aug)
                if acoustics is not None:
                    d["user"], d["room"] = acoustics(d["user"])
                d["user"], d["agent"] = _to_int16(d["user"]), _to_int16(d["agent"])
                items.append(d)
                bar.update()
            tmp = path.with_suffix(".tmp")
            torch.save(items, tmp)
            tmp.rename(path)
            written += n
    return written


def load_dialogues(folder: Path) -> list[dict]:
    shards = sorted(Path(folder).glob("shard_*.pt"))
    if not shards:
        raise FileNotFoundError(f"no dialogue shards in {folder}: run `duplex data synth --out {folder}` first")
    items = []
    for p in shards:
        items += torch.load(p, weights_only=False)
    return items
