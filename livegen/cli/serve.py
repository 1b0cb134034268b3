"""`livegen serve [--config F] [--mapping F ...] [--model X] [--dry-run] [--no-web]`: run the daemon."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from livegen.cli import UsageError

EXIT_WITHIN_SECONDS = 1.8  # after the stop (SIGTERM), the longest wait for the generation thread


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the MIDI/OSC-driven generation daemon")
    p.add_argument("--config", type=Path, help="settings file (YAML); defaults when omitted")
    p.add_argument("--mapping", type=Path, action="append", default=None,
                   help="mapping file or the name of a shipped one, e.g. akai-mpd218 (repeatable); "
                        "replaces the settings' mappings")
    p.add_argument("--model", help="a model name from the settings, or a checkpoint folder / repo id "
                                   "for the default model")
    p.add_argument("--dry-run", action="store_true", help="validate settings and mappings, then exit")
    p.add_argument("--no-web", action="store_true",
                   help="do not serve the control surface in the browser (settings: web.enabled)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="overrides the settings' log_level")
    p.set_defaults(func=run)


def load(args: argparse.Namespace):  # noqa: ANN201 - returns livegen.settings.Settings
    from livegen.settings import SettingsError, load_settings

    if args.config is not None and not args.config.is_file():
        raise UsageError(f"the settings file {args.config} does not exist")
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        raise UsageError("invalid settings:\n" + "\n".join(exc.errors)) from None
    if args.mapping:
        from livegen.settings import shipped_mapping, shipped_mapping_names

        found, missing = [], []
        for p in args.mapping:
            path = p.resolve() if p.is_file() else shipped_mapping(str(p))
            (found if path else missing).append(path or str(p))
        if missing:
            raise UsageError(f"mapping file(s) not found: {', '.join(missing)} "
                             f"(shipped mappings, usable by name: {', '.join(shipped_mapping_names())})")
        settings = dataclasses.replace(settings, mappings=found)
    if args.model:
        if args.model in settings.models:
            settings = dataclasses.replace(settings, models={args.model: settings.models[args.model]},
                                           default_model=args.model)
        else:
            name = settings.default_model
            base = settings.models.get(name) or next(iter(settings.models.values()))
            settings = dataclasses.replace(settings, models={name: dataclasses.replace(base, path=args.model)})
    if args.log_level:
        settings = dataclasses.replace(settings, log_level=args.log_level)
    if getattr(args, "no_web", False):
        settings = dataclasses.replace(settings, web=dataclasses.replace(settings.web, enabled=False))
    return settings


def dry_run(settings) -> int:  # noqa: ANN001
    from livegen.daemon import Daemon
    from livegen.mapping import Mapper, MappingError

    problems: list[str] = []
    try:
        mapper = Mapper.from_files(settings.mappings)
        print(f"mappings: {len(mapper.rules)} rules, {len(mapper.banks)} banks from "
              f"{', '.join(str(p) for p in settings.mappings)}")
        problems += Daemon(settings, loaders={}).check()
    except MappingError as exc:
        problems += exc.errors
    for name, m in settings.models.items():
        local = Path(m.path).expanduser()
        looks_local = m.path.startswith((".", "/", "~")) or local.exists()
        if looks_local and not local.is_dir():
            problems.append(f"model {name}: the folder {m.path} does not exist.")
        else:
            print(f"model {name}: {m.engine} from {m.path}")
    if settings.folder.path is not None:
        folder = Path(settings.folder.path)
        if not folder.is_dir():
            problems.append(f"folder.path {folder} is not a folder.")
        elif not os.access(folder, os.W_OK):
            problems.append(f"folder.path {folder} is not writable.")
    print(f"osc: {settings.osc.host}:{settings.osc.port}" if settings.osc.enabled else "osc: off")
    print(f"midi: {'virtual port ' + settings.midi.port_name if settings.midi.virtual else 'no virtual port'}"
          if settings.midi.enabled else "midi: off")
    print(f"web: {settings.web.host}:{settings.web.port}" if settings.web.enabled else "web: off")
    for p in problems:
        print(p, file=sys.stderr)
    print("dry run: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def check_weights(settings) -> None:  # noqa: ANN001
    """Before anything opens: every model's weights are on disk or can be downloaded now, else one
    sentence with the fix (licence page, ``hf auth login``/``HF_TOKEN``, offline cache), exit 2."""
    from livegen.weights import preflight

    for name, m in settings.models.items():
        check = preflight(m.path, m.engine, m.t5)
        if not check.startable:
            raise UsageError(f"model {name}: {check.sentence}" if len(settings.models) > 1 else check.sentence)


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    settings = load(args)
    if args.dry_run:
        return dry_run(settings)
    check_weights(settings)
    logging.basicConfig(level=getattr(logging, settings.log_level.upper()),
                        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("livegen.daemon").info("stage %-8s %6.2f s  %s", "settings", time.monotonic() - t0,
                                             args.config or "defaults")
    from livegen.daemon import Daemon, StartupError
    from livegen.mapping import MappingError

    daemon = Daemon(settings)
    try:
        code = asyncio.run(daemon.run())
    except MappingError as exc:
        raise UsageError("invalid mapping:\n" + "\n".join(exc.errors)) from None
    except StartupError as exc:
        raise UsageError("the settings or mappings ask for what the models cannot do:\n" + str(exc)) from None
    except OSError as exc:  # e.g. the OSC port is taken, the audio device cannot open
        raise UsageError(str(exc)) from None
    # Everything is closed explicitly by now and the generation thread (a normal thread) has been
    # joined, so the interpreter finalises with no MLX work in flight. (It used to be a daemon
    # thread, which CPython ends from under nanobind's noexcept GIL release inside ``mx.eval`` at
    # finalisation: std::terminate, "terminate called without an active exception".) The engines
    # poll the cancel between DiT blocks, sampler steps, decode tiles and MusicGen steps and
    # blocks, so the thread ends within one of those; it is waited for until EXIT_WITHIN_SECONDS
    # after the stop.
    worker = daemon.worker
    stopped = daemon.stop_requested_at or time.monotonic()
    from livegen.engine.worker import release_mlx_streams

    release_mlx_streams()  # the main thread's (the device stage, weight checks), as MLX asks
    stuck = list(getattr(daemon, "stuck", []))
    if worker is not None and worker.alive and not worker.join(
            max(0.0, EXIT_WITHIN_SECONDS - (time.monotonic() - stopped))):
        stuck.append("one MLX evaluation of the generation thread")
    if stuck:
        # Last resort, for a native call that outlasted its bound (one evaluation longer than the
        # exit budget on a loaded CPU; PortAudio's stream stop with the JACK server gone):
        # finalising now would abort (MLX) or hang (PortAudio's exit handler), waiting would break
        # the bound. Everything else is closed and flushed: leave without finalisation, with the
        # real status.
        logging.getLogger("livegen.daemon").warning(
            "%s still running %.1f s after the stop; ending without interpreter finalisation",
            " and ".join(stuck), time.monotonic() - stopped)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
