"""Typed events a session yields from `events()` or passes to `.on(...)` callbacks.

Times are seconds of conversation (frame index x 80 ms), so they are reproducible offline; `wall` fields
are `time.monotonic()` readings for latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from models.codec import SAMPLE_RATE


@dataclass(frozen=True)
class Event:
    droppable: ClassVar[bool] = False  # may a full queue drop it for a slow consumer?


@dataclass(frozen=True)
class AudioOut(Event):
    droppable: ClassVar[bool] = True
    pcm: np.ndarray  # float32 mono, 1920 samples (80 ms at 24 kHz)
    frame: int
    sample_rate: int = SAMPLE_RATE

    @property
    def time(self) -> float:
        return self.frame * len(self.pcm) / self.sample_rate


@dataclass(frozen=True)
class TextToken(Event):
    token: int
    text: str  # printable piece ("" for padding tokens, which are not emitted)
    frame: int
    time: float


@dataclass(frozen=True)
class Transcript(Event):
    """The model's inner-monologue text of one utterance, sent when it falls silent (or the session closes)."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Stats(Event):
    """Once a second: step time, latency and what was dropped so far."""

    droppable: ClassVar[bool] = True

    frame: int
    step_ms: float  # last batched step (all sessions)
    step_ms_p99: float  # over the last ~10 s
    latency_ms: float  # input frame complete -> its output frame delivered (compute + queueing)
    sessions: int
    dropped_input_frames: int  # input frames dropped because compute fell behind
    dropped_events: int  # output events dropped because the consumer fell behind
    late_ticks: int  # frame ticks skipped because a step overran 80 ms
    damaged_input: int = 0  # damaged input the transport skipped (bad Ogg pages, ...); the session went on


@dataclass(frozen=True)
class ImageGate(Event):
    """Per frame while an image is shown: how much the model's output drew on it (mean gate, 0..1)."""

    droppable: ClassVar[bool] = True
    frame: int
    time: float
    gate: float


@dataclass(frozen=True)
class ImageUpdated(Event):
    """A new camera view was encoded and swapped in (from this frame on the model sees it)."""

    frame: int
    time: float
    encode_ms: float
    change: float  # how different it was from the previous view (0..1)


@dataclass(frozen=True)
class Error(Event):
    kind: str  # exception class name
    message: str


@dataclass(frozen=True)
class Closed(Event):
    reason: str = "closed"
    frames: int = 0
    extra: dict = field(default_factory=dict)
