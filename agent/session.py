"""A conversation: audio (and images) in, typed events out. One session = one batch slot of the engine."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import numpy as np

from agent.errors import InvalidAudioError, SessionClosedError, SessionLimitError, UnsupportedError
from agent.events import AudioOut, Closed, Error, Event, ImageGate, ImageUpdated, Stats, TextToken, Transcript
from agent.pcm import TARGET_RATE, StreamResampler, to_float_mono
from streaming.buffers import DropOldestQueue
from streaming.engine import EngineFullError, SessionSlot, SlotOutput

if TYPE_CHECKING:
    from agent.api import Agent

FRAME_S = 0.08


class Session:
    """Use as `async with agent.session() as s:`; feed `send_audio`, read `events()` or register `.on(...)`."""

    def __init__(self, agent: Agent, seed: int | None = None):
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be None or an integer in [0, 2**63), got {seed!r}")
        self.agent = agent
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        cfg = agent.config
        self._queue = DropOldestQueue(cfg.max_events)
        self._callbacks: dict[type, list[Callable]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._slot: SessionSlot | None = None
        self.engine = agent.engine  # until open() places the session on the least loaded engine
        self._resampler: StreamResampler | None = None
        self._closed = False
        self._close_task: asyncio.Task | None = None
        self._words: list[str] = []
        self._utterance_start = 0.0
        self._pad_run = 0
        self._latency_ms = 0.0
        self.frames_out = 0
        self._latest_image = None  # newest camera frame, prepared, not yet encoded
        self._shown_image = None  # the view the model currently sees
        self._camera_task: asyncio.Task | None = None
        self.images_skipped = 0
        self.damaged_input = 0  # damaged input the transport skipped (e.g. Ogg pages); the session went on
        self.echo_canceller = None
        if agent.config.aec:  # the model's voice, as emitted, is the reference; send_audio's input the microphone
            from agent.aec import EchoCanceller

            self.echo_canceller = EchoCanceller()

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def open(self) -> None:
        if self._slot is not None:
            return
        cfg = self.agent.config
        max_frames = max(1, cfg.max_input_ms // 80) if cfg.realtime else 64
        for attempt in range(len(self.agent.engines)):
            self.engine = self.agent.place()  # raises SessionLimitError when no engine has a free slot
            try:
                self._slot = await self.engine.join(self.seed, max_frames, self._on_frame, self._has_room)
                return
            except EngineFullError as exc:  # taken by a session that opened meanwhile: place again
                if attempt == len(self.agent.engines) - 1:
                    raise SessionLimitError(f"{exc}; close a session or start the agent with a larger "
                                            "max_sessions") from exc

    async def close(self, reason: str = "closed") -> None:
        """Leave the engine and end the event stream. Runs to completion even if the caller is cancelled
        (a server cancels a handler whose client vanished): a half-closed session would keep its slot."""
        if self._close_task is None:
            self._closed = True
            self._close_task = asyncio.ensure_future(self._close(reason))
        await asyncio.shield(self._close_task)

    async def _close(self, reason: str) -> None:
        try:
            if self._slot is not None:
                await self.engine.leave(self._slot)
        finally:
            self._flush_transcript(self.frames_out * FRAME_S)
            for task in self._tasks:
                task.cancel()
            self._latest_image = None
            self.agent._forget(self)
            self._emit(Closed(reason=reason, frames=self.frames_out))

    @property
    def closed(self) -> bool:
        return self._closed

    # -- input ---------------------------------------------------------------------------------
    def _check_open(self) -> SessionSlot:
        if self._closed or self._slot is None:
            raise SessionClosedError("the session is not open (use `async with agent.session() as s`)")
        return self._slot

    async def send_audio(self, pcm, sample_rate: int = TARGET_RATE) -> None:
        """Queue audio: any dtype (float, int16/32, uint8, int16 bytes), mono or (T, C), any sample rate.

        Raises InvalidAudioError for unusable input; the session keeps running. In real-time mode, input that
        compute cannot keep up with is dropped oldest-first (counted in Stats); offline, this waits for room.
        """
        slot = self._check_open()
        for samples in self._convert(pcm, sample_rate):
            await self._push(slot, samples)

    def send_audio_nowait(self, pcm, sample_rate: int = TARGET_RATE) -> None:
        """Non-blocking `send_audio` for real-time callers (audio callbacks, event handlers)."""
        slot = self._check_open()
        if not self.agent.config.realtime:
            raise RuntimeError("send_audio_nowait needs a real-time agent; await send_audio() offline")
        for samples in self._convert(pcm, sample_rate):
            slot.push(samples)

    def _convert(self, pcm, sample_rate: int) -> list[np.ndarray]:
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool):
            raise InvalidAudioError(f"sample_rate must be an int, got {sample_rate!r}")
        mono = to_float_mono(pcm, max_samples=int(self.agent.config.max_chunk_s * max(sample_rate, 1)))
        out = []
        if self._resampler is None or self._resampler.source_rate != sample_rate:
            tail = self._resampler.flush() if self._resampler is not None else None
            self._resampler = StreamResampler(sample_rate)
            if tail is not None and tail.size:
                out.append(tail)
        out.append(self._resampler(mono))
        if self.echo_canceller is not None:
            out = [self.echo_canceller.near(x) for x in out]
        return out

    async def _push(self, slot: SessionSlot, samples: np.ndarray) -> None:
        if self.agent.config.realtime:
            slot.push(samples)
            return
        step = slot.inputs.frame_size
        i = 0
        while i < samples.size:
            while slot.inputs.free <= 0:
                slot.consumed.clear()
                try:
                    async with asyncio.timeout(1.0):
                        await slot.consumed.wait()
                except TimeoutError:
                    self._check_open()
            n = slot.inputs.free * step
            slot.push(samples[i:i + n])
            i += n

    async def end_input(self) -> None:
        """No more audio will come (offline runs): the last partial frame is padded and processed."""
        slot = self._check_open()
        if self._resampler is not None:
            tail = self._resampler.flush()
            self._resampler = None
            if tail.size:
                await self._push(slot, tail)
        slot.end_input()

    def note_input_damage(self, total: int) -> None:
        """Transports report damaged input they skipped (running total); Stats carries it."""
        self.damaged_input = max(self.damaged_input, int(total))

    def _check_image(self, image):
        """The cheap checks, on the caller's thread: raises InvalidImageError / UnsupportedError at once."""
        self._check_open()
        if not self.engine.pool.has_vision:
            raise UnsupportedError(f"model '{self.agent.bundle.name}' has no vision adapter; images need one")
        from agent.images import check

        return check(image)

    async def _prepare_image(self, image):
        """Decode, crop and resize off the event loop: a large image delays only this session's view."""
        from agent.images import prepare, to_rgb

        size = self.agent.bundle.lm.image_encoder.cfg.image_size
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.agent.image_executor, lambda: prepare(to_rgb(image), size))

    def send_image(self, image) -> None:
        """Camera stream: offer a frame at any rate. Frames are sampled at `vision_fps`, near-duplicates are
        skipped, and decoding and encoding run off the audio path (the frame clock never waits for them).

        Raises InvalidImageError for unusable images (the session keeps running); an image that only turns
        out to be corrupt while decoding is reported as an `Error` event.
        """
        self._latest_image = self._check_image(image)
        if self._camera_task is None:
            self._camera_task = asyncio.ensure_future(self._camera_loop())
            self._tasks.add(self._camera_task)

    async def show_image(self, image) -> None:
        """Show one image now: returns once the model sees it (deterministic; for stills and offline runs)."""
        await self._apply_image(await self._prepare_image(self._check_image(image)))

    async def clear_image(self) -> None:
        slot = self._check_open()
        async with self.engine._lock:
            if slot.active:
                self.engine.pool.set_image(slot.row, None)
        self._shown_image = None

    async def _apply_image(self, prepared) -> None:
        from agent.images import change

        diff = 1.0 if self._shown_image is None else change(prepared, self._shown_image)
        encode_ms = await self.engine.update_image(self._check_open(), prepared)
        self._shown_image = prepared
        frame = self._slot.frames if self._slot else 0
        self._emit(ImageUpdated(frame=frame, time=frame * FRAME_S, encode_ms=encode_ms, change=diff))

    async def _camera_loop(self) -> None:
        from agent.errors import InvalidImageError
        from agent.images import change

        period = 1.0 / self.agent.config.vision_fps
        while not self._closed:
            latest, self._latest_image = self._latest_image, None
            if latest is not None:
                try:
                    latest = await self._prepare_image(latest)
                except InvalidImageError as exc:
                    self._emit(Error(type(exc).__name__, str(exc)))
                    latest = None
            if latest is not None:
                if self._shown_image is not None and change(latest, self._shown_image) < \
                        self.agent.config.vision_min_change:
                    self.images_skipped += 1
                else:
                    try:
                        await self._apply_image(latest)
                    except SessionClosedError:
                        return
            await asyncio.sleep(period)

    # -- output --------------------------------------------------------------------------------
    def on(self, event_type: type[Event], callback: Callable[[Event], object]) -> Session:
        """Call `callback(event)` for every event of `event_type` (sync, or async: scheduled as a task)."""
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise TypeError("event_type must be an Event class such as AudioOut or TextToken")
        self._callbacks.setdefault(event_type, []).append(callback)
        return self

    async def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """Events in order until (and including) Closed."""
        while True:
            event = await self._queue.get(timeout)
            yield event
            if isinstance(event, Closed):
                return

    @property
    def dropped_events(self) -> int:
        return self._queue.dropped

    def _has_room(self) -> bool:
        return len(self._queue) + 4 <= self._queue.maxsize

    def _emit(self, event: Event) -> None:
        for cls, callbacks in self._callbacks.items():
            if isinstance(event, cls):
                for cb in callbacks:
                    try:
                        result = cb(event)
                        if inspect.isawaitable(result):
                            task = asyncio.ensure_future(result)
                            self._tasks.add(task)
                            task.add_done_callback(self._task_done)
                    except Exception as exc:  # noqa: BLE001 - a broken callback is reported, not fatal
                        self._queue.put(Error(type(exc).__name__, f"callback failed: {exc}"))
        self._queue.put(event)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._queue.put(Error(type(exc).__name__, f"callback failed: {exc}"))

    def _on_frame(self, out: SlotOutput) -> None:
        if self._closed:
            return
        self.frames_out += 1
        t = out.frame * FRAME_S
        if out.arrived is not None:
            self._latency_ms = (out.delivered - out.arrived) * 1e3
        if out.gate is not None and self._shown_image is not None:
            self._emit(ImageGate(frame=out.frame, time=t, gate=out.gate))
        if self.echo_canceller is not None:
            self.echo_canceller.far(out.pcm)  # silence too: the reference follows what is played, frame by frame
        if out.valid:
            self._emit(AudioOut(pcm=out.pcm, frame=out.frame))
            text = self.agent.bundle.token_text(out.text)
            if text:
                if not self._words:
                    self._utterance_start = t
                self._words.append(text)
                self._pad_run = 0
                self._emit(TextToken(token=out.text, text=text, frame=out.frame, time=t))
            else:
                self._pad_run += 1
                if self._pad_run >= self.agent.config.silence_frames_for_transcript:
                    self._flush_transcript(t)
        cfg = self.agent.config
        if self.frames_out % cfg.stats_every == 0:
            engine = self.engine
            slot = self._slot
            self._emit(Stats(frame=out.frame, step_ms=out.step_ms, step_ms_p99=engine.step_p99(),
                             latency_ms=self._latency_ms, sessions=engine.sessions,
                             dropped_input_frames=slot.inputs.dropped if slot else 0,
                             dropped_events=self._queue.dropped, late_ticks=engine.clock.late_ticks,
                             damaged_input=self.damaged_input))

    def _flush_transcript(self, end: float) -> None:
        if self._words:
            self._emit(Transcript(text="".join(self._words).strip(), start=self._utterance_start, end=end))
            self._words = []
