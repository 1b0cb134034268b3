"""`livegen` command line: one module per subcommand, each with ``register(subparsers)``.

Each subcommand module defines ``register(sub: argparse._SubParsersAction) -> None`` which adds
its parser and sets ``func=run`` where ``run(args) -> int`` returns the exit code. Errors the
user can fix are raised as :class:`UsageError` and printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback

COMMANDS = ["generate", "convert", "serve", "devices", "doctor", "send", "render", "serve_pool"]


class UsageError(Exception):
    """A problem the user can fix: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livegen", description="Real-time generative audio (MLX).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"livegen.cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(sub)
    return parser


def debug_wanted(args: argparse.Namespace | None = None) -> bool:
    """Tracebacks are shown with ``--log-level debug`` or ``LIVEGEN_DEBUG=1``."""
    if os.environ.get("LIVEGEN_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return getattr(args, "log_level", None) == "debug"


def sentence(text: object) -> str:
    """An error's text as one line ending in a full stop (several lines are joined with '; ')."""
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    body = "; ".join(line for line in lines if line).rstrip(" :;,") or "unknown error"
    return body if body.endswith((".", "?", "!")) else body + "."


def main(argv: list[str] | None = None) -> int:
    from livegen.errors import LivegenError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("send", "devices"):  # the commands that run MLX: the optimised BLAS first
        from livegen import _blas

        _blas.preload()
    prefix = f"livegen {args.command}:"
    try:
        return int(args.func(args) or 0)
    except (UsageError, LivegenError) as exc:
        text = str(exc)
        if "\n" in text:  # a list of problems (settings, mappings): a header, then one per line
            print(f"{prefix} {text}", file=sys.stderr)
        else:
            print(f"{prefix} {sentence(text)}", file=sys.stderr)
        if debug_wanted(args):
            traceback.print_exc()
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one sentence, the traceback only when asked for
        detail = " ".join(str(exc).split()) or "no details"
        print(f"{prefix} internal error: {detail.rstrip('.')}; run with --log-level debug or LIVEGEN_DEBUG=1 "
              "for the traceback, and please report it.", file=sys.stderr)
        if debug_wanted(args):
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
