"""The engine: batched stepping equals stepping alone, slots join and leave, bounded queues, typed errors."""

import asyncio

import numpy as np
import pytest

from agent import (
    Agent,
    AgentConfig,
    AudioOut,
    Closed,
    InvalidAudioError,
    SessionClosedError,
    SessionLimitError,
    Stats,
)
from agent.bundle import load_bundle
from agent.registry import resolve
from models.lm import LMGenerator
from streaming.slots import SlotPool

FRAME = 1920


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(resolve("default"), device="cpu")


def _speechlike(seed: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME) / 24000
    env = (np.sin(2 * np.pi * rng.uniform(1, 3) * t) > 0).astype(np.float32)
    tone = np.sin(2 * np.pi * rng.uniform(120, 300) * t) + 0.1 * rng.standard_normal(t.size)
    return (0.3 * env * tone).astype(np.float32)


def _run_alone(bundle, seed: int, audio: np.ndarray, frames: int):
    pool = SlotPool(bundle.codec, LMGenerator(bundle.lm, bundle.sampling), 1)
    pool.add(seed)
    outs = [pool.step(audio[None, t * FRAME:(t + 1) * FRAME]) for t in range(frames)]
    return [(int(o.text[0]), o.audio_codes[0].tolist()) for o in outs]


def run_joins_and_leaves(pool, seeds: list[int], audio: list[np.ndarray], frames: int) -> dict[int, list]:
    """Sessions 0 and 1 from frame 0, session 2 joins at frame 8, session 0 leaves at frame 16 (the last row
    moves into its place); each session's (text, audio codes) per frame, read from whichever row it is in."""
    rows = {0: pool.add(seeds[0]), 1: pool.add(seeds[1])}
    got: dict[int, list] = {0: [], 1: [], 2: []}
    start = {0: 0, 1: 0, 2: 8}
    for t in range(frames):
        if t == 8:
            rows[2] = pool.add(seeds[2])
        if t == 16:
            moved = pool.remove(rows.pop(0))
            rows = {k: (0 if r == moved else r) for k, r in rows.items()}
        batch = np.zeros((pool.active, FRAME), np.float32)
        for k, r in rows.items():
            i = t - start[k]
            batch[r] = audio[k][i * FRAME:(i + 1) * FRAME]
        out = pool.step(batch)
        for k, r in rows.items():
            got[k].append((int(out.text[r]), out.audio_codes[r].tolist()))
    return got


def test_batched_sessions_match_sessions_alone_across_joins_and_leaves(bundle):
    frames = 24
    seeds = [11, 22, 33]
    audio = [_speechlike(s, frames) for s in seeds]
    alone = [_run_alone(bundle, s, a, frames) for s, a in zip(seeds, audio)]

    got = run_joins_and_leaves(SlotPool(bundle.codec, LMGenerator(bundle.lm, bundle.sampling), 4), seeds, audio,
                               frames)
    assert got[0] == alone[0][:16]
    assert got[1] == alone[1]
    assert got[2] == alone[2][: frames - 8]
    assert any(v for v in (alone[0][-1][1], alone[1][-1][1]))  # really produced audio codes


def _agent(bundle, **kw) -> Agent:
    return Agent(bundle, AgentConfig(**kw))


def test_slow_consumer_never_blocks_other_sessions(bundle):
    async def main():
        async with _agent(bundle, max_sessions=2, max_events=8) as agent:
            async with agent.session(seed=1) as slow, agent.session(seed=2) as fast:
                got = 0
                for _ in range(40):
                    await slow.send_audio(np.zeros(FRAME, np.float32))
                    await fast.send_audio(np.zeros(FRAME, np.float32))
                    await asyncio.sleep(0.08)
                    while True:
                        try:
                            ev = await fast._queue.get(timeout=0)
                        except TimeoutError:
                            break
                        got += isinstance(ev, AudioOut)
                return got, slow.dropped_events, fast.dropped_events, slow.frames_out, fast.frames_out

    got, slow_dropped, fast_dropped, slow_frames, fast_frames = asyncio.run(main())
    # the engine kept stepping the slow session exactly like the fast one (how many frames of the 40 sent are
    # done by the end depends on the machine's speed, not on the consumers)
    assert fast_frames >= 20 and slow_frames >= fast_frames - 1
    assert slow_dropped > 0  # ... and its bounded queue shed the oldest audio instead of growing
    assert fast_dropped == 0 and got >= fast_frames - 3  # the reading session got its audio in time


def test_closing_frees_the_slot_and_limit_is_enforced(bundle):
    async def main():
        async with _agent(bundle, max_sessions=2) as agent:
            a = agent.session()
            b = agent.session()
            await a.open()
            await b.open()
            with pytest.raises(SessionLimitError, match="max_sessions"):
                await agent.session().open()
            await a.close()
            assert agent.engine.sessions == 1
            async with agent.session() as c:
                assert agent.engine.sessions == 2
                await c.send_audio(np.zeros(FRAME * 2, np.float32))
            with pytest.raises(SessionClosedError):
                await a.send_audio(np.zeros(FRAME, np.float32))
            events = [ev async for ev in a.events(timeout=2)]
            assert isinstance(events[-1], Closed)

    asyncio.run(main())


@pytest.mark.parametrize("bad, match", [
    (np.full(FRAME, np.nan, np.float32), "NaN"),
    (np.array([1 + 2j] * 100), "dtype"),
    (np.array(["a", "b"]), "dtype"),
    (np.zeros(0, np.float32), "empty"),
    (np.zeros(24000 * 31, np.float32), "smaller chunks"),
    (np.zeros((3, 3, 3), np.float32), "1-D"),
    (b"\x00\x01\x02", "16-bit"),
])
def test_bad_audio_gives_typed_errors_and_session_keeps_working(bundle, bad, match):
    async def main():
        async with _agent(bundle, max_sessions=1, realtime=False) as agent, agent.session(seed=3) as s:
            with pytest.raises(InvalidAudioError, match=match):
                await s.send_audio(bad)
            with pytest.raises(InvalidAudioError):
                await s.send_audio(np.zeros(100, np.float32), sample_rate=5)
            await s.send_audio((np.zeros((FRAME * 3, 2)) * 32767).astype(np.int16), sample_rate=24000)
            await s.end_input()
            async for _ in s.events(timeout=10):
                if s.frames_out >= 3:
                    break
            return s.frames_out

    assert asyncio.run(main()) == 3


def test_input_any_rate_and_format_is_converted(bundle):
    async def main():
        async with _agent(bundle, max_sessions=1, realtime=False) as agent, agent.session(seed=3) as s:
            pcm16 = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 300) * 20000).astype(np.int16)
            for i in range(0, pcm16.size, 1000):  # 1 s at 16 kHz in small chunks -> 24000 samples
                await s.send_audio(pcm16[i:i + 1000], sample_rate=16000)
            await s.end_input()
            stats = []
            async for ev in s.events(timeout=10):
                if isinstance(ev, Stats):
                    stats.append(ev)
                if s.frames_out >= 13:
                    break
            return s._slot.inputs.received_samples, stats

    received, stats = asyncio.run(main())
    assert abs(received - 24000) < 200
    assert stats and stats[0].dropped_input_frames == 0 and stats[0].sessions == 1


def test_realtime_drops_input_when_compute_falls_behind(bundle):
    from streaming.buffers import InputFrames

    buf = InputFrames(max_frames=4)
    assert buf.push(np.zeros(FRAME * 10, np.float32)) == 6  # 800 ms arrived at once: keep the newest 320 ms
    assert len(buf) == 4 and buf.dropped == 6


def test_on_callbacks_sync_and_async(bundle):
    async def main():
        seen, seen_async = [], []

        async def record(ev):
            seen_async.append(ev.frame)

        async with _agent(bundle, max_sessions=1, realtime=False) as agent, agent.session(seed=5) as s:
            s.on(AudioOut, lambda ev: seen.append(ev.frame)).on(AudioOut, record)
            with pytest.raises(TypeError):
                s.on(int, print)
            s.on(Stats, lambda ev: 1 / 0)  # a broken callback is reported as an Error event, nothing else breaks
            await s.send_audio(np.zeros(FRAME * 14, np.float32))
            await s.end_input()
            kinds = []
            async for ev in s.events(timeout=10):
                kinds.append(type(ev).__name__)
                if s.frames_out >= 14:
                    break
            await asyncio.sleep(0.05)
            return seen, seen_async, kinds

    seen, seen_async, kinds = asyncio.run(main())
    assert seen == list(range(seen[0], 14)) and sorted(seen_async) == seen
    assert "Error" in kinds and kinds.count("AudioOut") == len(seen)


def test_input_noise_floor_is_per_session_so_batched_still_equals_alone(bundle):
    """The model's training noise floor is added per session (its seed and frame), never shared across rows."""
    frames, floor = 6, 0.002
    silence = np.zeros(frames * FRAME, np.float32)  # digital silence: exactly what the floor is for

    def codes(pool, rows):
        return [pool.step(np.zeros((len(rows), FRAME), np.float32)).user_codes.tolist() for _ in range(frames)]

    gen = LMGenerator(bundle.lm, bundle.sampling)
    alone = SlotPool(bundle.codec, gen, 1, noise_floor=floor)
    alone.add(7)
    solo = [c[0] for c in codes(alone, [0])]
    pair = SlotPool(bundle.codec, gen, 2, noise_floor=floor)
    pair.add(3)
    pair.add(7)
    assert [c[1] for c in codes(pair, [0, 1])] == solo
    plain = SlotPool(bundle.codec, gen, 1)
    plain.add(7)
    assert [plain.step(silence[None, :FRAME]).user_codes[0].tolist() for _ in range(frames)] != solo


def test_capacity_reports_free_slots_step_times_and_real_time(bundle):
    """What a router places sessions by: total and free slots, step p50/p99, real time; a full engine refuses."""

    async def main():
        async with _agent(bundle, max_sessions=2, realtime=False) as agent:
            cap = agent.capacity()
            assert (cap.slots_total, cap.slots_free, cap.step_ms_p50) == (2, 2, 0.0) and cap.keeps_realtime
            async with agent.session(seed=1) as a, agent.session(seed=2) as b:
                assert agent.capacity().slots_free == 0
                with pytest.raises(SessionLimitError):
                    await agent.session().open()
                for s in (a, b):  # offline pacing steps once every session's input is there
                    await s.send_audio(_speechlike(1, 12))
                    await s.end_input()
                async for _ in a.events(timeout=10):
                    if a.frames_out >= 10:
                        break
                busy = agent.capacity()
                assert 0 < busy.step_ms_p50 <= busy.step_ms_p99
                assert busy.keeps_realtime == (busy.step_ms_p99 < 80)
            return agent.capacity()

    assert asyncio.run(main()).slots_free == 2


def test_two_engines_place_by_free_slots_and_batched_still_equals_alone(bundle):
    """`devices=["cpu", "cpu"]`: two engines in one process; each new session goes to the engine with the most
    free slots, a full agent refuses, and each session's audio is what it gets alone on one engine."""
    frames, seeds = 12, [11, 22, 33]
    audio = [_speechlike(s, frames) for s in seeds]

    def alone(seed, pcm):
        pool = SlotPool(bundle.codec, LMGenerator(bundle.lm, bundle.sampling), 1, bundle.files.input_noise_floor)
        pool.add(seed)
        outs = [pool.step(pcm[None, t * FRAME:(t + 1) * FRAME]) for t in range(frames)]
        return [o.pcm[0] for o in outs if o.valid[0]]  # what a session emits as AudioOut

    async def main():
        config = AgentConfig(max_sessions=2, realtime=False, devices=["cpu", "cpu"])
        async with Agent(bundle, config) as agent:
            assert len(agent.engines) == 2 and agent.capacity().slots_total == 4
            sessions = [agent.session(seed=s) for s in seeds]
            for s in sessions:
                await s.open()
            assert [agent.engines.index(s.engine) for s in sessions] == [0, 1, 0]  # most free first, ties first
            assert [c.slots_free for c in agent.engine_capacities()] == [0, 1]
            extra = agent.session(seed=44)
            await extra.open()  # the last free slot, on engine 1
            assert extra.engine is agent.engines[1]
            with pytest.raises(SessionLimitError):
                await agent.session(seed=55).open()
            await extra.close()
            got: dict[int, list] = {s.seed: [] for s in sessions}
            for s, a in zip(sessions, audio):
                s.on(AudioOut, lambda ev, k=s.seed: got[k].append(ev.pcm))
                await s.send_audio(a)
                await s.end_input()
            for s in sessions:
                async for _ in s.events(timeout=20):
                    if s.frames_out >= frames:
                        break
            return got

    got = asyncio.run(main())
    for seed, a in zip(seeds, audio):
        solo = alone(seed, a)
        assert len(solo) >= frames - 2 and len(got[seed]) >= len(solo)
        np.testing.assert_array_equal(np.stack(got[seed][:len(solo)]), np.stack(solo))
