"""The public entry point: `Agent.from_pretrained(...)`, then one `Session` per conversation."""

from __future__ import annotations

import concurrent.futures
import os

import torch

from agent.bundle import ModelBundle, load_bundle
from agent.config import AgentConfig
from agent.registry import resolve
from agent.session import Session
from models.lm import LMGenerator
from streaming.engine import Engine
from streaming.slots import SlotPool


class Agent:
    """Owns the model, the slot pool and the frame-clock task; `async with` starts and stops them."""

    def __init__(self, bundle: ModelBundle, config: AgentConfig | None = None):
        self.bundle = bundle
        self.config = config or AgentConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.config.backend == "onnx":
            from agent.onnx_backend import onnx_pool

            self.pool = onnx_pool(bundle, self.config)
        else:
            gen = LMGenerator(bundle.lm, bundle.sampling)
            self.pool = SlotPool(bundle.codec, gen, self.config.max_sessions, bundle.files.input_noise_floor)
        self.engine = Engine(self.pool, realtime=self.config.realtime)
        self._sessions: set[Session] = set()  # open sessions only: a closed one forgets itself
        self._started = False
        # Decoding and resizing camera images (off the event loop; the model's encoder has its own thread).
        self.image_executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="duplex-images")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "default", config: AgentConfig | None = None,
                        **overrides) -> Agent:
        """Load a registered model name (`duplex models`) or a local folder; keyword overrides go to AgentConfig."""
        config = config or AgentConfig(**overrides)
        bundle = load_bundle(resolve(name_or_path), device=config.device)
        return cls(bundle, config)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        if not self._started:
            self.engine.on_error = self._report_engine_error
            await self.engine.start()
            self._started = True

    async def close(self) -> None:
        for s in list(self._sessions):
            await s.close("agent closed")
        self._sessions.clear()
        if self._started:
            await self.engine.stop()
            self._started = False

    def _forget(self, session: Session) -> None:
        self._sessions.discard(session)

    def capacity(self):
        """`streaming.engine.Capacity`: total and free session slots, step p50/p99, whether it keeps real time
        (what `/health` reports and what a router places new sessions by)."""
        return self.engine.capacity()

    def session(self, seed: int | None = None) -> Session:
        """A new conversation (joins the engine on `async with` / `open()`)."""
        if not self._started:
            raise RuntimeError("start the agent first: `async with Agent.from_pretrained(...) as agent`")
        s = Session(self, seed)
        self._sessions.add(s)
        return s

    def _report_engine_error(self, exc: BaseException) -> None:
        from agent.events import Error

        for s in list(self._sessions):
            if not s.closed:
                s._emit(Error(type(exc).__name__, f"engine step failed: {exc}"))
