"""The multi-session engine: one frame clock steps every active session as one batched forward.

The step itself runs on a single worker thread (PyTorch releases the GIL), so the event loop keeps serving
sockets, audio callbacks and consumers while the model computes. Everything session-facing happens on the
event-loop thread; the pool's rows are only touched under `_lock`, so joins and leaves wait at most one step.

Two pacings share the same step code:
- realtime: a tick every 80 ms; a session with no input gets silence; late ticks are skipped and counted.
- offline: step as soon as every session has a frame (or has ended its input) and room for output, so a
  file is processed faster than real time, in real-time order, with nothing dropped.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streaming.buffers import InputFrame, InputFrames
from streaming.clock import FrameClock
from streaming.slots import FrameResult, SlotPool
from streaming.stats import percentile


class EngineFullError(RuntimeError):
    pass


@dataclass
class SlotOutput:
    """One session's share of a batched step, handed to its sink on the event-loop thread."""

    frame: int  # index of this frame in the session (0-based)
    text: int
    valid: bool
    pcm: np.ndarray
    arrived: float | None  # when the input frame stepped was complete (None: silence filled in)
    input_index: int | None  # which input frame of the session was stepped (None: silence filled in)
    step_ms: float
    delivered: float
    gate: float | None = None  # mean vision gate (vision models with an image)


class SessionSlot:
    """The engine-side handle of one session: its input frames, its row, its output sink."""

    def __init__(self, engine: Engine, seed: int, max_input_frames: int,
                 sink: Callable[[SlotOutput], None], has_room: Callable[[], bool]):
        self.engine = engine
        self.seed = seed
        self.inputs = InputFrames(max_input_frames, engine.pool.frame_size)
        self.sink = sink
        self.has_room = has_room
        self.row = -1
        self.frames = 0
        self.input_ended = False
        self.consumed = asyncio.Event()  # set whenever the engine takes an input frame

    @property
    def active(self) -> bool:
        return self.row >= 0

    def push(self, samples: np.ndarray) -> int:
        """Queue converted samples; returns how many frames had to be dropped."""
        dropped = self.inputs.push(samples)
        self.engine.notify()
        return dropped

    def end_input(self) -> None:
        self.inputs.flush_partial()
        self.input_ended = True
        self.engine.notify()


@dataclass
class Capacity:
    """What a router needs to place a new session: free slots, and whether the engine keeps real time."""

    slots_total: int
    slots_free: int
    step_ms_p50: float  # over the last ~10 s of steps (0 before the first step)
    step_ms_p99: float
    keeps_realtime: bool  # the p99 step fits the frame period (a free slot on a late engine is no room)
    late_ticks: int  # frame ticks the clock started late since the engine started

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Engine:
    def __init__(self, pool: SlotPool, realtime: bool = True, period: float = 0.08):
        self.pool = pool
        self.realtime = realtime
        self.clock = FrameClock(period)
        self._slots: list[SessionSlot] = []  # index == row
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="duplex-step")
        # Images are encoded on their own thread, so a new camera view never delays an audio step.
        self._vision_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="duplex-vision")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.step_ms: collections.deque[float] = collections.deque(maxlen=125)
        self.steps = 0
        self.errors = 0
        self.on_error: Callable[[BaseException], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="duplex-engine")

    @property
    def alive(self) -> bool:
        """The frame loop is running (False before start, after stop, or when it died)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._vision_executor.shutdown(wait=True, cancel_futures=True)

    @property
    def sessions(self) -> int:
        return len(self._slots)

    def step_p99(self) -> float:
        return percentile(list(self.step_ms), 0.99) if self.step_ms else 0.0

    def capacity(self) -> Capacity:
        steps = list(self.step_ms)
        p50 = percentile(steps, 0.5) if steps else 0.0
        p99 = percentile(steps, 0.99) if steps else 0.0
        return Capacity(slots_total=self.pool.capacity, slots_free=self.pool.capacity - len(self._slots),
                        step_ms_p50=round(p50, 2), step_ms_p99=round(p99, 2),
                        keeps_realtime=p99 < self.clock.period * 1000, late_ticks=self.clock.late_ticks)

    # -- membership ----------------------------------------------------------------------------
    async def join(self, seed: int, max_input_frames: int, sink: Callable[[SlotOutput], None],
                   has_room: Callable[[], bool] = lambda: True) -> SessionSlot:
        async with self._lock:
            if len(self._slots) >= self.pool.capacity:
                raise EngineFullError(f"all {self.pool.capacity} session slots are in use")
            slot = SessionSlot(self, seed, max_input_frames, sink, has_room)
            slot.row = self.pool.add(seed)
            self._slots.append(slot)
        self.notify()
        return slot

    async def leave(self, slot: SessionSlot) -> None:
        async with self._lock:
            if not slot.active:
                return
            moved = self.pool.remove(slot.row)
            del self._slots[slot.row]
            if moved is not None:
                last = self._slots.pop()  # the session that lived in the old last row
                self._slots.insert(slot.row, last)
                last.row = slot.row
            slot.row = -1
            for i, s in enumerate(self._slots):
                assert s.row == i
        self.notify()

    async def update_image(self, slot: SessionSlot, image) -> float:
        """Encode `image` ([3, S, S]) off the audio path, then swap it into the slot between two steps.

        Returns the encode time in ms. The lock is held only for the swap (a small copy).
        """
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        tokens = await loop.run_in_executor(self._vision_executor, self.pool.encode_image, image)
        encode_ms = (time.monotonic() - t0) * 1e3
        async with self._lock:
            if slot.active:
                self.pool.set_image(slot.row, tokens)
        return encode_ms

    def notify(self) -> None:
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------------
    def _ready_offline(self) -> bool:
        if not self._slots:
            return False
        any_input = False
        for s in self._slots:
            if not s.has_room():
                return False
            if len(s.inputs):
                any_input = True
            elif not s.input_ended:
                return False
        return any_input

    async def _wait(self) -> None:
        if self.realtime:
            if not self._slots:
                self.clock.reset()
                await self._wait_event()
                return
            await self.clock.wait()
        else:
            while not self._ready_offline() and not self._stopping:
                await self._wait_event()

    async def _wait_event(self) -> None:
        self._wake.clear()
        try:
            async with asyncio.timeout(0.5):  # not wait_for: on 3.11 it can swallow a cancellation
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._wait()
            async with self._lock:
                slots = list(self._slots)
                if not slots:
                    continue
                frames = np.zeros((len(slots), self.pool.frame_size), np.float32)
                arrived: list[InputFrame | None] = []
                for i, s in enumerate(slots):
                    f = s.inputs.pop()
                    s.consumed.set()
                    arrived.append(f)
                    if f is not None:
                        frames[i] = f.pcm
                t0 = time.monotonic()
                try:
                    result: FrameResult = await loop.run_in_executor(self._executor, self.pool.step, frames)
                except Exception as exc:  # noqa: BLE001 - reported to every session, the loop goes on
                    self.errors += 1
                    if self.on_error is not None:
                        self.on_error(exc)
                    await asyncio.sleep(self.clock.period)
                    continue
                step_ms = (time.monotonic() - t0) * 1e3
            self.step_ms.append(step_ms)
            self.steps += 1
            now = time.monotonic()
            for i, s in enumerate(slots):
                out = SlotOutput(frame=s.frames, text=int(result.text[i]), valid=bool(result.valid[i]),
                                 pcm=result.pcm[i], step_ms=step_ms, delivered=now,
                                 arrived=arrived[i].arrived if arrived[i] else None,
                                 input_index=arrived[i].index if arrived[i] else None,
                                 gate=None if result.gate is None else float(result.gate[i]))
                s.frames += 1
                try:
                    s.sink(out)
                except Exception as exc:  # noqa: BLE001 - one broken consumer must not stop the others
                    if self.on_error is not None:
                        self.on_error(exc)
