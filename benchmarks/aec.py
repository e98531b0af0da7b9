"""`duplex bench aec`: the model on open speakers in a simulated room, with and without echo cancellation.

Frame by frame, the model's voice is played into a room (a decaying random impulse response after a direct
path, at a realistic level and delay) and comes back into the microphone together with the user's spoken
question. Reported: echo return loss enhancement (how much quieter the model's own voice is after the canceller,
where only the echo is present, after the first seconds of convergence), whether the model answers the user,
and its self-interruption rate (answers cut short, or extra answers to its own voice).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from benchmarks.quality import _words
from models.codec import FRAME_SIZE as FRAME
from models.codec import SAMPLE_RATE as RATE


@dataclass
class Room:
    delay_s: float = 0.12  # speaker -> microphone, including the device buffers on both sides
    echo_gain: float = 0.5  # direct-path level of the model's voice at the microphone
    tail_s: float = 0.25  # reverberation length
    decay_s: float = 0.04
    noise: float = 3e-4  # microphone self-noise (RMS)
    seed: int = 0

    def impulse_response(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        n = int(self.tail_s * RATE)
        ir = rng.normal(0, 0.25, n) * np.exp(-np.arange(n) / (self.decay_s * RATE))
        ir[0] = 1.0
        return (ir * self.echo_gain).astype(np.float32)


@dataclass
class RoomRun:
    text: str  # the model's whole text stream
    answer: str  # its text from the end of the question until the next utterance gap
    utterances: list[str]
    mic: np.ndarray
    echo: np.ndarray
    cleaned: np.ndarray | None
    question_end: int


async def run_room(bundle, user: np.ndarray, question_end: int, aec: bool, room: Room, seed: int = 0) -> RoomRun:
    """`user`: float32 24 kHz, the user's side alone; the model hears it plus its own voice through `room`."""
    from agent import Agent, AgentConfig, AudioOut, Error, TextToken, Transcript

    ir = room.impulse_response()
    delay = int(room.delay_s * RATE)
    if delay < FRAME:
        raise ValueError("the simulated delay must be at least one frame (80 ms): the model's frame t is played "
                         "after it is made")
    frames = -(-user.size // FRAME)
    played = np.zeros(frames * FRAME + delay + ir.size, np.float32)
    echo = np.zeros(frames * FRAME, np.float32)
    mic = np.zeros(frames * FRAME, np.float32)
    noise = np.random.default_rng(room.seed + 1).normal(0, room.noise, mic.size).astype(np.float32)
    cleaned: list[np.ndarray] = []
    text, utterances = [], []
    agent = Agent(bundle, AgentConfig(max_sessions=1, realtime=False, aec=aec))
    async with agent, agent.session(seed=seed) as s:
        if s.echo_canceller is not None:
            near = s.echo_canceller.near

            def recording_near(pcm):
                out = near(pcm)
                cleaned.append(out)
                return out

            s.echo_canceller.near = recording_near
            s.echo_canceller.delay_ms = int(room.delay_s * 1000)
        events = s.events(timeout=30)
        for t in range(frames):
            lo, hi = t * FRAME, (t + 1) * FRAME
            # what reaches the microphone now: the room's response to everything played delay earlier
            first = lo - delay - (ir.size - 1)
            src = np.concatenate([np.zeros(max(0, -first), np.float32), played[max(0, first): max(0, hi - delay)]])
            src = np.pad(src, (0, max(0, FRAME + ir.size - 1 - src.size)))
            echo[lo:hi] = np.convolve(src, ir, mode="valid")[:FRAME]
            seg = np.zeros(FRAME, np.float32)
            u = user[lo:hi]
            seg[:u.size] = u
            mic[lo:hi] = seg + echo[lo:hi] + noise[lo:hi]
            await s.send_audio(mic[lo:hi])
            while s.frames_out <= t:  # a frame may emit no event at all (the model's first frames)
                await asyncio.sleep(0.002)
            while len(s._queue):  # frame t's events are all queued once it is out
                ev = await events.__anext__()
                if isinstance(ev, Error):
                    raise RuntimeError(f"the session failed: {ev.kind}: {ev.message}")
                if isinstance(ev, AudioOut):
                    played[ev.frame * FRAME:(ev.frame + 1) * FRAME] = ev.pcm
                elif isinstance(ev, Transcript):
                    utterances.append(ev.text)
                elif isinstance(ev, TextToken):
                    text.append((ev.frame, ev.text))
        await s.close()
        async for ev in events:
            if isinstance(ev, Transcript):
                utterances.append(ev.text)
            elif isinstance(ev, TextToken):
                text.append((ev.frame, ev.text))
    whole = "".join(t for _, t in text)
    answer = "".join(t for f, t in text if f >= question_end // FRAME)
    return RoomRun(text=whole, answer=answer, utterances=utterances, mic=mic, echo=echo,
                   cleaned=np.concatenate(cleaned) if cleaned else None, question_end=question_end)


def erle_after(run: RoomRun, user: np.ndarray, settle_s: float = 1.0) -> float | None:
    """ERLE where only the model's echo reaches the microphone (the user is silent), `settle_s` after the echo
    first appears (the canceller's convergence)."""
    from agent.aec import erle_db

    if run.cleaned is None:
        return None
    n = min(run.cleaned.size, run.mic.size)
    user_p = np.zeros(n, np.float32)
    user_p[: min(n, user.size)] = user[:n]
    active = np.abs(run.echo[:n]) > 0.01
    if not active.any():
        return None
    start = np.flatnonzero(active)[0] + int(settle_s * RATE)
    mask = active & (np.abs(user_p) < 1e-4) & (np.arange(n) >= start)
    if mask.sum() < RATE // 4:
        return None
    return erle_db(run.mic[:n], run.cleaned[:n], mask)


def self_interruptions(run: RoomRun, expected: str) -> int:
    """Turns gone wrong because of its own voice: an answer stopped short (fewer words than the expected
    answer: it took its own voice for a barge-in), or extra utterances after it (it answered itself)."""
    got, want = _words(run.answer), _words(expected)
    cut = int(len(got) < len(want))
    extra = max(0, len(run.utterances) - 1)
    return cut + extra


def scene(question: str = "what is two plus three") -> tuple[np.ndarray, int]:
    from agent.training.tts import HELD_OUT_VOICE, CachedTTS

    speech = CachedTTS()(question, HELD_OUT_VOICE)
    lead = int(0.6 * RATE)
    user = np.concatenate([np.zeros(lead, np.float32), speech * 0.7, np.zeros(7 * RATE, np.float32)])
    return user.astype(np.float32), lead + speech.size


def run_aec_bench(args) -> int:
    from agent.bundle import load_bundle
    from agent.registry import resolve

    bundle = load_bundle(resolve(args.model), device="cpu")
    questions = [("what is two plus three", "two plus three is five"), ("spell the word cat", "cat is spelled c a t"),
                 ("count to four", "one two three four"), ("what is nine minus four", "nine minus four is five")]
    room = Room(delay_s=args.delay_ms / 1000, echo_gain=args.echo_gain)
    print(f"simulated room: delay {args.delay_ms} ms, echo gain {args.echo_gain}, tail {room.tail_s} s; "
          f"model '{bundle.name}'; user voice flite:rms")
    rows = {True: [], False: []}
    for q, expected in questions:
        user, end = scene(q)
        for aec in (False, True):
            run = asyncio.run(run_room(bundle, user, end, aec, room))
            rows[aec].append((q, run, self_interruptions(run, expected), erle_after(run, user),
                              _words(run.answer)[: len(_words(expected))] == _words(expected)))
    for aec in (False, True):
        r = rows[aec]
        erles = [e for *_, e, _ in r if e is not None]
        print(f"AEC {'on ' if aec else 'off'}: answered correctly {sum(ok for *_, ok in r)}/{len(r)}, "
              f"self-interruptions {sum(si for _, _, si, _, _ in r)} in {len(r)} turns"
              + (f", ERLE median {np.median(erles):.1f} dB (min {min(erles):.1f})" if erles else ""))
        for q, run, *_ in r:
            print(f"    {q!r}: said {' | '.join(run.utterances)!r}")
    return 0
