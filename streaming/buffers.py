"""Bounded buffers between the network/audio edges and the frame clock."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

import numpy as np

from models.codec import FRAME_SIZE  # 80 ms at 24 kHz


@dataclass
class InputFrame:
    pcm: np.ndarray  # float32 [FRAME_SIZE]
    arrived: float  # monotonic time its last sample arrived
    index: int = 0  # position in the session's input stream, in frames (dropped frames count too)


class InputFrames:
    """Cuts a stream of float32 chunks into 80 ms frames, keeping at most `max_frames` of them.

    When compute falls behind (more than `max_frames` waiting) the oldest frames are dropped and counted:
    latency stays bounded instead of growing, and the model hears the most recent speech.
    """

    def __init__(self, max_frames: int, frame_size: int = FRAME_SIZE):
        if max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        self.max_frames = max_frames
        self.frame_size = frame_size
        self._frames: collections.deque[InputFrame] = collections.deque()
        self._partial = np.zeros(0, np.float32)
        self.dropped = 0
        self.received_samples = 0
        self.frames_cut = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def free(self) -> int:
        return self.max_frames - len(self._frames)

    def push(self, samples: np.ndarray, now: float | None = None) -> int:
        """Append samples; returns how many frames were dropped to stay within bounds."""
        now = time.monotonic() if now is None else now
        self.received_samples += samples.size
        data = np.concatenate([self._partial, samples]) if self._partial.size else samples
        n = data.size // self.frame_size
        for i in range(n):
            self._frames.append(InputFrame(data[i * self.frame_size:(i + 1) * self.frame_size].copy(), now,
                                           self.frames_cut))
            self.frames_cut += 1
        self._partial = data[n * self.frame_size:].copy()
        dropped = 0
        while len(self._frames) > self.max_frames:
            self._frames.popleft()
            dropped += 1
        self.dropped += dropped
        return dropped

    def pop(self) -> InputFrame | None:
        return self._frames.popleft() if self._frames else None

    def flush_partial(self, now: float | None = None) -> None:
        """Zero-pad the trailing partial frame into a whole one (end of input)."""
        if self._partial.size:
            pad = np.zeros(self.frame_size - self._partial.size, np.float32)
            self.push(pad, now)
            self.received_samples -= pad.size


class DropOldestQueue:
    """A bounded event queue for one consumer: producers never block; overflow drops the oldest item."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: collections.deque = collections.deque()
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item, droppable: bool = True) -> None:
        self._items.append(item)
        while len(self._items) > self.maxsize:
            # Drop the oldest droppable item; control items (errors, close) are always kept.
            for i, old in enumerate(self._items):
                if getattr(old, "droppable", True):
                    del self._items[i]
                    self.dropped += 1
                    break
            else:
                if len(self._items) > 2 * self.maxsize:  # nobody is reading at all: bound it anyway
                    self._items.popleft()
                    self.dropped += 1
                break
        self._ready.set()

    async def get(self, timeout: float | None = None):
        while not self._items:
            self._ready.clear()
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self._items.popleft()
