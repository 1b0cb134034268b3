"""`livegen` command line: one module per subcommand, each with ``register(subparsers)``.

Each subcommand module defines ``register(sub: argparse._SubParsersAction) -> None`` which adds
its parser and sets ``func=run`` where ``run(args) -> int`` returns the exit code. Errors the
user can fix are raised as :class:`UsageError` and printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS = ["generate", "convert", "serve", "devices", "doctor", "send"]


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"livegen {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
