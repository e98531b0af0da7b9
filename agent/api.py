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

    def __init__(self, bundle: ModelBundle, config: AgentConfig | None = None,
                 bundles: list[ModelBundle] | None = None):
        """`bundles`: the model loaded once per device of `config.devices` (default: `bundle` for every one of
        them, i.e. engines sharing one copy of the weights, which is what several CPU engines want)."""
        self.bundle = bundle
        self.config = config or AgentConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        copies = bundles or [bundle] * len(self.config.devices or [None])
        self.engines = [Engine(self._pool(b), realtime=self.config.realtime) for b in copies]
        self.engine = self.engines[0]  # the only one unless several devices were asked for
        self.pool = self.engine.pool
        self._sessions: set[Session] = set()  # open sessions only: a closed one forgets itself
        self._started = False
        # Decoding and resizing camera images (off the event loop; the model's encoder has its own thread).
        self.image_executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="duplex-images")

    def _pool(self, bundle: ModelBundle):
        if self.config.backend == "onnx":
            from agent.onnx_backend import onnx_pool

            return onnx_pool(bundle, self.config)
        gen = LMGenerator(bundle.lm, bundle.sampling)
        return SlotPool(bundle.codec, gen, self.config.max_sessions, bundle.files.input_noise_floor)

    def place(self) -> Engine:
        """The engine a new session joins: the one with the most free slots among those keeping real time (a
        late engine only when none keeps it); SessionLimitError when every slot is taken."""
        from agent.errors import SessionLimitError

        caps = [(e, e.capacity()) for e in self.engines]
        free = [(e, c) for e, c in caps if c.slots_free > 0]
        if not free:
            total = sum(c.slots_total for _, c in caps)
            raise SessionLimitError(f"all {total} session slots are in use; close a session or start the agent "
                                    "with a larger max_sessions (or more devices)")
        return max(free, key=lambda ec: (ec[1].keeps_realtime, ec[1].slots_free))[0]

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "default", config: AgentConfig | None = None,
                        **overrides) -> Agent:
        """Load a registered model name (`duplex models`) or a local folder; keyword overrides go to AgentConfig.
        With `devices`, the model is loaded once per distinct device and each engine steps its own copy."""
        config = config or AgentConfig(**overrides)
        files = resolve(name_or_path)
        if not config.devices:
            return cls(load_bundle(files, device=config.device), config)
        loaded: dict[str, ModelBundle] = {}
        for device in config.devices:
            if device not in loaded:
                loaded[device] = load_bundle(files, device=device)
        bundles = [loaded[d] for d in config.devices]
        return cls(bundles[0], config, bundles)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        if not self._started:
            for engine in self.engines:
                engine.on_error = self._report_engine_error
                await engine.start()
            self._started = True

    async def close(self) -> None:
        for s in list(self._sessions):
            await s.close("agent closed")
        self._sessions.clear()
        if self._started:
            for engine in self.engines:
                await engine.stop()
            self._started = False

    def _forget(self, session: Session) -> None:
        self._sessions.discard(session)

    def capacity(self):
        """`streaming.engine.Capacity`: total and free session slots, step p50/p99, whether it keeps real time
        (what `/health` reports and what a router places new sessions by); over every engine (slots summed, the
        slowest engine's step times, real time only if every engine keeps it)."""
        from streaming.engine import Capacity

        caps = [e.capacity() for e in self.engines]
        if len(caps) == 1:
            return caps[0]
        return Capacity(slots_total=sum(c.slots_total for c in caps), slots_free=sum(c.slots_free for c in caps),
                        step_ms_p50=max(c.step_ms_p50 for c in caps), step_ms_p99=max(c.step_ms_p99 for c in caps),
                        keeps_realtime=all(c.keeps_realtime for c in caps),
                        late_ticks=sum(c.late_ticks for c in caps))

    def engine_capacities(self) -> list:
        """Each engine's own Capacity, in device order."""
        return [e.capacity() for e in self.engines]

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
