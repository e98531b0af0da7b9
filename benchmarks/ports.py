"""A free TCP port on loopback, for the servers, clusters and torchrun rendezvous that benchmarks and tests start."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
