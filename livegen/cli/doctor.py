"""`livegen doctor [--config F] [--mapping M ...] [--model X]`: check what `livegen serve` would load.

The options are serve's, and the settings are built by serve's own ``load``, so doctor checks
exactly what serve would run: the settings, the mapping files (parsed by the same Mapper), each
configured model's weights (converted, convertible, or still to download, and whether the hub can
be reached; headers and sizes of the files on disk), the MIDI API serve would open (and its JACK
server or ALSA sequencer), the audio output device, the OSC port, the DAW folder, the MLX device
and BLAS. Every finding is one line; a problem is one sentence with its fix. Exit code 0 only
when serve would start (warnings do not fail), else 1.
"""

from __future__ import annotations

import argparse
import enum
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livegen.cli import UsageError


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


OK, WARN, FAIL = Level.OK, Level.WARN, Level.FAIL


@dataclass
class Check:
    name: str
    level: Level
    detail: str  # what was found
    fix: str = ""  # what to do (shown unless OK)

    def line(self, width: int = 0) -> str:
        text = self.detail.rstrip(".")
        if self.fix and self.level is not OK:
            text += f"; {self.fix.rstrip('.')}"
        return f"[{self.level.value:>4}] {self.name:<{width}}  {text}."


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check what `livegen serve` would load; print what to fix")
    p.add_argument("--config", type=Path, help="settings file (YAML); defaults when omitted")
    p.add_argument("--mapping", type=Path, action="append", default=None,
                   help="mapping file or the name of a shipped one, as for serve (repeatable)")
    p.add_argument("--model", help="a model name from the settings, or a checkpoint folder / repo id, as for serve")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="as for serve (debug also shows tracebacks of crashing checks)")
    p.add_argument("--no-web", action="store_true", help="as for serve (no control surface in the browser)")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- machine


def check_device() -> list[Check]:
    from livegen.device import detect

    info = detect()
    out = [Check("MLX device", OK, f"{info.backend} ({info.device})")]
    if info.device == "cpu":
        out[0].fix = "generation runs on the CPU, so expect renders slower than real time"
        out[0].level = WARN
    bundled = info.blas.startswith("bundled")
    out.append(Check("BLAS", WARN if bundled and info.backend == "cpu" else OK, info.blas,
                     "pip install cmeel-openblas (or apt install libopenblas0-pthread)" if bundled else ""))
    return out


def check_audio(settings) -> Check:  # noqa: ANN001
    if not settings.audio.enabled:
        return Check("audio", OK, "disabled in the settings (audio.enabled: false)")
    try:
        import sounddevice as sd
    except OSError as exc:
        return Check("audio", FAIL, f"PortAudio cannot be loaded ({exc})",
                     "install PortAudio (Debian: apt install libportaudio2; macOS: it comes with the wheel)")
    device = settings.audio.device
    shown = "the default output device" if device is None else f"the output device {device}"
    try:
        dev = sd.query_devices(device, "output")
    except (ValueError, sd.PortAudioError) as exc:
        names = [d["name"] for d in sd.query_devices() if d["max_output_channels"] > 0]
        hint = ("there are no output devices at all: on Linux without sound hardware run bin/livegen-jack-dummy"
                if not names else f"set audio.device to one of: {', '.join(names)}")
        return Check("audio", FAIL, f"{shown} cannot be used ({' '.join(str(exc).split())})", hint)
    try:
        sd.check_output_settings(device=device, channels=settings.audio.channels,
                                 samplerate=settings.audio.sample_rate, dtype="float32")
    except Exception as exc:  # noqa: BLE001 - PortAudioError or ValueError
        return Check("audio", FAIL, f"{dev['name']} refuses {settings.audio.sample_rate} Hz with "
                                    f"{settings.audio.channels} channels ({' '.join(str(exc).split())})",
                     "change audio.sample_rate or audio.channels, or pick another audio.device")
    api = sd.query_hostapis(dev["hostapi"])["name"]
    return Check("audio", OK, f"{dev['name']} ({api})")


def compiled_midi_apis() -> list[str]:
    """python-rtmidi's compiled APIs as mido names them (LINUX_ALSA, UNIX_JACK, ...)."""
    import rtmidi

    names = {getattr(rtmidi, n): n[4:] for n in dir(rtmidi) if n.startswith("API_")}
    return [names.get(api, str(api)) for api in rtmidi.get_compiled_api()]


def check_midi(settings) -> Check:  # noqa: ANN001
    if not settings.midi.enabled:
        return Check("MIDI", OK, "disabled in the settings (midi.enabled: false)")
    from livegen.control.midi import (
        API_NAMES,
        MidiUnavailable,
        alsa_sequencer_present,
        choose_api,
        jack_server_running,
    )

    off = "serve would start without MIDI"
    try:
        compiled = compiled_midi_apis()
    except Exception as exc:  # noqa: BLE001 - python-rtmidi missing or broken
        return Check("MIDI", FAIL, f"python-rtmidi cannot be used ({exc}), so {off}",
                     "pip install python-rtmidi, or set midi.enabled: false")
    try:
        api = choose_api(settings.midi.api, compiled=compiled)
    except MidiUnavailable as exc:
        return Check("MIDI", FAIL, f"{str(exc).rstrip('.')}, so {off}",
                     "start JACK (bin/livegen-jack-dummy), load snd-seq, or set midi.enabled: false")
    setting = {v: k for k, v in API_NAMES.items()}.get(api, api)
    if api == "UNIX_JACK" and not jack_server_running():
        return Check("MIDI", FAIL, f"MIDI would use JACK (midi.api: {setting}) but no JACK server is running, so {off}",
                     "start JACK (bin/livegen-jack-dummy or jackd), choose another midi.api, or set midi.enabled: "
                     "false")
    if api == "LINUX_ALSA" and not alsa_sequencer_present():
        return Check("MIDI", FAIL, f"MIDI would use the ALSA sequencer (midi.api: {setting}) but /dev/snd/seq is "
                                   f"missing, so {off}",
                     "load it (modprobe snd-seq), use midi.api: jack with a running JACK server, or set "
                     "midi.enabled: false")
    port = f"; virtual port {settings.midi.port_name}" if settings.midi.virtual else ""
    return Check("MIDI", OK, f"{api} (compiled: {', '.join(compiled)}){port}")


def check_osc(settings) -> Check:  # noqa: ANN001
    if not settings.osc.enabled:
        return Check("OSC", OK, "disabled in the settings (osc.enabled: false)")
    host, port = settings.osc.host, settings.osc.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, port))
    except OSError as exc:
        return Check("OSC", FAIL, f"serve cannot listen on {host}:{port} ({(exc.strerror or str(exc)).lower()})",
                     "another program (or a running livegen) uses the port: stop it or change osc.port")
    wide = host in ("0.0.0.0", "::")
    return Check("OSC", WARN if wide and not settings.osc.allow else OK, f"{host}:{port} is free",
                 "listening on every interface with an empty osc.allow accepts anyone on the network"
                 if wide and not settings.osc.allow else "")


def check_folder(settings) -> Check:  # noqa: ANN001
    from livegen.cli.output_file import _probe_folder

    path = settings.folder.path
    if path is None:
        return Check("DAW folder", OK, "not configured (folder.path: null)")
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Check("DAW folder", FAIL, f"folder.path {path} cannot be created because {existing} is a file",
                     "choose another folder.path")
    why = _probe_folder(existing)
    if why is not None:
        return Check("DAW folder", FAIL, f"folder.path {path} is not writable ({existing}: {why.lower()})",
                     "fix the folder's permissions or choose another folder.path")
    if existing != path:
        return Check("DAW folder", OK, f"{path} does not exist yet and is created with the first clip")
    return Check("DAW folder", OK, f"{path} is writable")


# ----------------------------------------------------------------------------- what serve loads


def check_mappings(settings) -> list[Check]:  # noqa: ANN001
    from livegen.mapping import Mapper, MappingError

    files = ", ".join(str(p) for p in settings.mappings) or "none"
    try:
        mapper = Mapper.from_files(settings.mappings)
    except MappingError as exc:
        return [Check("mapping", FAIL, e, "serve refuses to start with this mapping") for e in exc.errors]
    except OSError as exc:
        return [Check("mapping", FAIL, f"a mapping file cannot be read ({exc.strerror or exc})", "fix the path")]
    found = [Check("mapping", OK, f"{len(mapper.rules)} rules, {len(mapper.banks)} banks from {files}")]
    from livegen.daemon import Daemon

    check = getattr(Daemon, "check", None)  # serve's own pre-load checks of settings against mappings
    if check is not None:
        try:
            problems = check(Daemon(settings, loaders={}))
        except MappingError as exc:
            problems = exc.errors
        found += [Check("serve check", FAIL, p, "serve refuses to start with these settings and mappings")
                  for p in problems]
    return found


def check_model(name: str, m) -> Check:  # noqa: ANN001
    """OK when the weights are on disk, WARN when they are downloaded on the first start, else FAIL."""
    from livegen.weights_check import preflight

    result = preflight(m.path, m.engine, m.t5)
    level = OK if result.ready else WARN if result.startable else FAIL
    return Check(f"model {name}", level, f"{m.engine}: {result.sentence}")


def load_like_serve(args: argparse.Namespace):  # noqa: ANN201 - livegen.settings.Settings or None
    """Settings exactly as `livegen serve` builds them; (None, checks) when it would refuse them."""
    from livegen.cli.serve import load

    try:
        settings = load(args)
    except UsageError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        head, errors = (lines[0], lines[1:]) if len(lines) > 1 else ("", lines)
        fix = "fix the settings file" if "settings" in head else "fix the command line"
        return None, [Check("settings", FAIL, e, fix) for e in errors]
    shown = str(args.config) if args.config else "defaults"
    return settings, [Check("settings", OK, shown)]


def run(args: argparse.Namespace) -> int:
    from livegen.cli import debug_wanted

    settings, checks = load_like_serve(args)
    steps: list[tuple[str, Callable[[], list[Check]]]] = [("device", check_device)]
    if settings is not None:
        steps += [
            ("mapping", lambda: check_mappings(settings)),
            ("model", lambda: [check_model(n, m) for n, m in settings.models.items()]),
            ("MIDI", lambda: [check_midi(settings)]),
            ("audio", lambda: [check_audio(settings)]),
            ("OSC", lambda: [check_osc(settings)]),
            ("DAW folder", lambda: [check_folder(settings)]),
        ]
    for name, step in steps:
        try:
            checks += step()
        except Exception as exc:  # noqa: BLE001 - a crashing check is itself a finding
            if debug_wanted(args):
                import traceback

                traceback.print_exc()
            detail = " ".join(str(exc).split()) or "no details"
            checks.append(Check(name, FAIL, f"the {name} check failed unexpectedly ({detail})",
                                "run with LIVEGEN_DEBUG=1 for the traceback"))
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(c.line(width))
    failed = [c for c in checks if c.level is FAIL]
    if settings is None:
        print("the other checks need settings that serve accepts; fix them and run doctor again.")
    if failed:
        print(f"{len(failed)} problem(s) to fix: `livegen serve` would not start as configured.")
    else:
        print("all checks passed: `livegen serve` would start.")
    sys.stdout.flush()
    return 1 if failed else 0
