"""`livegen render BANK --variations N [--model M] [--folder DIR] [--ray ADDRESS]`: render a bank ahead
of a set into the pre-render cache (the daemon plays the clips as cached pads from its start)
and/or a DAW folder. See :mod:`livegen.render_bank`.

BANK is a mapping file (its banks' prompts and params, as the daemon reads them) or a CSV with a
``prompt`` column. Resumable: run it again after an interruption and only the missing clips are
rendered.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from livegen.cli import UsageError
from livegen.settings import check_ray_address


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render a bank's prompts times N variations ahead of a set")
    p.add_argument("bank", type=Path, metavar="BANK", help="a mapping file (.yaml) or a CSV of prompts")
    p.add_argument("--variations", "-n", type=int, default=2, metavar="N", help="variations per prompt (default 2)")
    p.add_argument("--model", help="a model name from the settings, or a checkpoint folder / repo id for the "
                                   "default model (as for `livegen serve`)")
    p.add_argument("--config", type=Path, help="the daemon's settings file: the same models, tempo, levels and "
                                               "cache directory make the same clips (defaults when omitted)")
    p.add_argument("--cache", type=Path, default=None,
                   help="pre-render cache directory (default: the settings' prerender.directory)")
    p.add_argument("--no-cache", action="store_true", help="write only the folder, not the cache")
    p.add_argument("--folder", type=Path, default=None, help="also write every clip as WAV + JSON into DIR")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="render on a Ray Serve pool (`livegen serve-pool`): auto (the cluster this machine "
                        "is a node of), the head's HOST:6379, or 'local' for a private cluster started for "
                        "this run and stopped after (not ray://: Ray Client cannot carry Serve's streams)")
    p.add_argument("--replicas", type=int, default=2, help="with --ray local: replicas to start (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace):  # noqa: ANN202 - livegen.settings.Settings
    from livegen.cli.serve import load

    ns = argparse.Namespace(config=args.config, mapping=None, model=args.model, log_level=None, no_web=True)
    settings = load(ns)
    if args.bank.suffix.lower() != ".csv":
        settings = dataclasses.replace(settings, mappings=[args.bank.resolve()])
    return settings


def run(args: argparse.Namespace) -> int:
    from livegen import render_bank as rb
    from livegen.engine.worker import release_mlx_streams
    from livegen.output.prerender import PrerenderCache

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.bank.is_file():
        raise UsageError(f"the bank {args.bank} does not exist")
    if args.variations < 1:
        raise UsageError("--variations must be at least 1")
    if args.no_cache and args.folder is None:
        raise UsageError("--no-cache needs --folder: the clips must go somewhere")
    if args.ray is not None and args.ray != "local" and (why := check_ray_address(args.ray)):
        raise UsageError(f"--ray {args.ray} {why}")
    settings = _settings(args)
    cache = None
    if not args.no_cache:
        cache = args.cache or PrerenderCache(directory=settings.prerender.directory).directory
    if args.ray is None:
        from livegen.cli.serve import check_weights

        check_weights(settings)
        renderer = rb.LocalRenderer(settings)
        where = "local engine"
    else:
        from livegen.engine.ray_client import RayRenderer

        renderer = RayRenderer.connect(settings, args.ray, replicas=args.replicas)
        where = f"Ray pool ({renderer.describe()})"
    try:
        try:
            items = rb.plan(settings, args.bank, renderer.caps(), args.variations)
        except rb.BankError as exc:
            raise UsageError(str(exc)) from None
        outputs = rb.Outputs(cache, args.folder, settings.tempo.bpm, subtype=settings.folder.subtype)
        print(f"render: {len(items)} clips ({len(items) // args.variations} prompts x {args.variations}) on the "
              f"{where} -> {', '.join(str(p) for p in (cache, args.folder) if p is not None)}", file=sys.stderr)
        summary = rb.run(items, renderer, outputs, progress=not args.no_progress)
    finally:
        renderer.close()
    print(f"rendered {summary.rendered}, skipped {summary.skipped} (already there), failed {len(summary.failed)} "
          f"in {summary.seconds:.1f} s")
    for line in summary.failed:
        print(f"failed: {line}", file=sys.stderr)
    # The generation thread released its MLX streams when it ended; the main thread's go too, so
    # the interpreter finalises normally (MLX's thread-local clean-up after finalisation aborted
    # the process with "terminate called without an active exception": ml-explore/mlx#4327).
    release_mlx_streams()
    return 1 if summary.failed else 0
