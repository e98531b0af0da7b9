"""LM-related commands (filled in by the LM work)."""

from __future__ import annotations

import argparse


def add_bench(sub: argparse._SubParsersAction) -> None:
    return None
