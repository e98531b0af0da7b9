"""`duplex ...` as a subprocess the way users start it: one process, or `torchrun --nproc-per-node N` on this
machine (a free loopback rendezvous port each time, so runs never collide)."""

from __future__ import annotations

import sys

from benchmarks.ports import free_port


def cli_command(args: list[str], procs: int = 1) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
            "127.0.0.1", "--master-port", str(free_port()), "-m", "cli", *args]
