"""The `duplex` command line."""

from __future__ import annotations

import argparse
import sys

from agent import codec_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duplex",
        description="Real-time full-duplex speech-and-vision agent (Mimi-compatible codec + dual-stream LM).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from agent import run_cli

    run_cli.add_commands(sub)
    try:
        from agent import serve
    except ImportError:  # aiohttp/aiortc are the `serve` extra
        serve = None
    if serve is not None:
        serve.add_command(sub)
    else:
        missing = sub.add_parser("serve", help="browser/WebSocket server (needs: pip install 'duplex-agent[serve]')")
        missing.set_defaults(handler=_missing_serve)
    from tui import cli as tui_cli

    tui_cli.add_command(sub)
    codec_cli.add_commands(sub)
    from agent import convert_cli, export_cli

    convert_cli.add_commands(sub)
    export_cli.add_commands(sub)
    from agent.training import cli as training_cli

    training_cli.add_commands(sub)
    bench = sub.add_parser("bench", help="benchmarks that print ratios against a named baseline")
    bench_sub = bench.add_subparsers(dest="bench_target", metavar="TARGET")
    codec_cli.add_bench(bench_sub)
    from agent import lm_cli

    lm_cli.add_bench(bench_sub)
    from agent.benchmarks import aec, cluster, listening, soak, training

    soak.add_bench(bench_sub)
    cluster.add_bench(bench_sub)
    listening.add_bench(bench_sub)
    aec.add_bench(bench_sub)
    training.add_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from agent.errors import DuplexError

        if isinstance(exc, DuplexError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


def _missing_serve(args) -> int:
    raise UserFacingError("`duplex serve` needs aiohttp, aiortc and sphn: pip install 'duplex-agent[serve]'")


class UserFacingError(Exception):
    """Raised by command handlers for problems the user can fix; printed without a traceback."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
