"""The `duplex` command line."""

from __future__ import annotations

import argparse
import sys

from agent.errors import UserFacingError
from cli import codec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duplex",
        description="Real-time full-duplex speech-and-vision agent (Mimi-compatible codec + dual-stream LM).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from cli import run

    run.add_commands(sub)
    try:
        from cli import serve
    except ImportError:  # aiohttp/aiortc are the `serve` extra
        serve = None
    if serve is not None:
        serve.add_command(sub)
    else:
        missing = sub.add_parser("serve", help="browser/WebSocket server (needs: pip install 'duplex-agent[serve]')")
        missing.set_defaults(handler=_missing_serve)
    from cli import bench, chat, convert, export, train

    chat.add_command(sub)
    codec.add_commands(sub)
    convert.add_commands(sub)
    export.add_commands(sub)
    train.add_commands(sub)
    bench.add_commands(sub)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
