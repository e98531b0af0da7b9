"""What a server owes its other users when one client is hostile or broken: bounds, deadlines and auth.

Plain classes with an injectable clock, so the policies are tested without sockets; the HTTP/WebSocket/WebRTC
handlers only call them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_SEED = 2**63 - 1


class BadRequest(ValueError):
    """A client's request is malformed: answered 400 with this message, logged as one line."""


def parse_seed(value, name: str = "seed", from_query: bool = False) -> int | None:
    """A sampling seed from a client: None, or an integer in [0, 2**63) (a JSON integer; digits in a query)."""
    if value is None:
        return None
    if from_query and isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 19:
            raise BadRequest(f"{name} must be an integer in [0, {MAX_SEED}]")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise BadRequest(f"{name} must be an integer in [0, {MAX_SEED}]")
    return value


def seed_from_query(query) -> int | None:
    """Moshi clients pass `audio_seed` / `text_seed` (in `query`, a mapping); one seed drives both streams."""
    for name in ("audio_seed", "text_seed"):
        if name in query:
            return parse_seed(query[name], name, from_query=True)
    return None


@dataclass
class ServerLimits:
    """Per-client limits of `duplex serve` (generous defaults: an honest client never meets them)."""

    handshake_timeout_s: float = 15.0  # a session must be streaming audio within this (WebRTC: ICE + DTLS)
    idle_timeout_s: float = 60.0  # a session whose client sends no audio for this long is ended
    max_message_bytes: int = 4 * 1024 * 1024  # one WebSocket message (an image is the largest honest one)
    max_request_bytes: int = 256 * 1024  # one HTTP request body (an SDP offer is a few kB)
    max_report_bytes: int = 64 * 1024  # one /client-report body
    max_messages_per_s: float = 200.0  # WebSocket messages per connection (Moshi clients send ~50/s)
    max_connections_per_ip: int = 32  # concurrent sessions (WebSocket + WebRTC) from one address
    max_failed_auth: int = 10  # wrong tokens per address within `auth_window_s` before it must wait
    auth_window_s: float = 60.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"ServerLimits.{name} must be > 0, got {value!r}")


class RateLimiter:
    """Token bucket: `rate` events per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst if burst is not None else 2 * rate, clock
        self._tokens, self._t = self.burst, clock()

    def allow(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class TooManyConnections(Exception):
    pass


class ConnectionCounter:
    """Concurrent connections per client address; `claim(ip)` is a context manager that always gives back."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return sum(self._open.values())

    def acquire(self, ip: str) -> None:
        if self._open[ip] >= self.limit:
            raise TooManyConnections(f"at most {self.limit} concurrent sessions per address")
        self._open[ip] += 1

    def release(self, ip: str) -> None:
        self._open[ip] -= 1
        if self._open[ip] <= 0:
            del self._open[ip]

    @contextlib.contextmanager
    def claim(self, ip: str):
        self.acquire(ip)
        try:
            yield
        finally:
            self.release(ip)


class AuthGuard:
    """Token check in constant time; an address with too many recent wrong guesses must wait (429)."""

    def __init__(self, token: str | None, max_failed: int = 10, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.token, self.max_failed, self.window_s, self.clock = token, max_failed, window_s, clock
        self._failures: dict[str, collections.deque[float]] = {}

    def retry_after(self, ip: str) -> float:
        """Seconds this address must wait before its next attempt counts (0: it may try now)."""
        q = self._failures.get(ip)
        if not q:
            return 0.0
        now = self.clock()
        while q and now - q[0] > self.window_s:
            q.popleft()
        if not q:
            del self._failures[ip]
            return 0.0
        return q[0] + self.window_s - now if len(q) >= self.max_failed else 0.0

    def check(self, ip: str, offered: list[str | None]) -> bool:
        """True if any offered credential is the token (or no token is set); a wrong one is remembered (a
        missing one is not: that is a forgotten token, not a guess)."""
        if self.token is None:
            return True
        expected = self.token.encode()
        offered = [o for o in offered if o is not None]
        if any(hmac.compare_digest(o.encode(), expected) for o in offered):
            return True
        if not offered:
            return False
        q = self._failures.setdefault(ip, collections.deque())
        q.append(self.clock())
        if len(self._failures) > 10_000:  # bound the memory an address-hopping attacker can make us keep
            self._failures.pop(next(iter(self._failures)))
        return False


class Watchdog:
    """Ends a session that never starts streaming (`handshake_s`) or whose input stops (`idle_s`).

    The transport calls `alive()` whenever real input arrives; `expire(reason)` runs once, from the task.
    """

    def __init__(self, handshake_s: float, idle_s: float, expire: Callable[[str], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic):
        self.handshake_s, self.idle_s, self.expire, self.clock = handshake_s, idle_s, expire, clock
        self.started_at = clock()
        self.last_input: float | None = None
        self._task: asyncio.Task | None = None

    def alive(self) -> None:
        self.last_input = self.clock()

    def overdue(self) -> str | None:
        now = self.clock()
        if self.last_input is None:
            if now - self.started_at > self.handshake_s:
                return f"no audio within {self.handshake_s:g} s of connecting"
        elif now - self.last_input > self.idle_s:
            return f"no audio for {self.idle_s:g} s"
        return None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def _run(self) -> None:
        period = min(0.5, self.handshake_s / 4, self.idle_s / 4)
        while (reason := self.overdue()) is None:
            await asyncio.sleep(period)
        await self.expire(reason)
