"""`livegen doctor [--config F]`: check what the daemon needs and say how to fix what is missing.

Checks: the MLX device and BLAS, the audio backend and output device, the MIDI API, the OSC port,
each configured model's weights (present locally, converted in the cache, or downloadable),
and the DAW folder. Exit code 1 when something must be fixed, else 0 (warnings do not fail).
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from livegen.cli import UsageError

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    name: str
    level: str
    detail: str
    fix: str = ""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the machine and the settings; print what to fix")
    p.add_argument("--config", type=Path, help="settings file (YAML); defaults when omitted")
    p.set_defaults(func=run)


def check_device() -> list[Check]:
    from livegen.device import detect

    info = detect()
    out = [Check("MLX device", OK, f"{info.backend} ({info.device})")]
    if info.device == "cpu":
        out[0].fix = "generation runs on the CPU: expect renders slower than real time"
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
        return Check("audio", FAIL, f"PortAudio cannot be loaded: {exc}",
                     "install PortAudio (Debian: apt install libportaudio2; macOS: it comes with the wheel)")
    try:
        dev = sd.query_devices(settings.audio.device, "output")
    except (ValueError, sd.PortAudioError) as exc:
        names = [d["name"] for d in sd.query_devices() if d["max_output_channels"] > 0]
        hint = ("no output devices at all: on Linux without sound hardware run bin/livegen-jack-dummy"
                if not names else f"set audio.device to one of: {', '.join(names)}")
        return Check("audio", FAIL, f"no output device {settings.audio.device!r}: {exc}", hint)
    try:
        sd.check_output_settings(device=settings.audio.device, channels=settings.audio.channels,
                                 samplerate=settings.audio.sample_rate, dtype="float32")
    except Exception as exc:  # noqa: BLE001 - PortAudioError or ValueError
        return Check("audio", FAIL, f"{dev['name']} refuses {settings.audio.sample_rate} Hz, "
                                    f"{settings.audio.channels} ch: {exc}",
                     "change audio.sample_rate / audio.channels, or pick another audio.device")
    api = sd.query_hostapis(dev["hostapi"])["name"]
    return Check("audio", OK, f"{dev['name']} ({api})")


def check_midi(settings) -> Check:  # noqa: ANN001
    if not settings.midi.enabled:
        return Check("MIDI", OK, "disabled in the settings (midi.enabled: false)")
    from livegen.control.midi import MidiUnavailable, choose_api

    try:
        api = choose_api(settings.midi.api)
    except MidiUnavailable as exc:
        return Check("MIDI", FAIL, str(exc), "start JACK (bin/livegen-jack-dummy) or set midi.enabled: false")
    except Exception as exc:  # noqa: BLE001 - python-rtmidi missing/broken
        return Check("MIDI", FAIL, f"python-rtmidi is not usable: {exc}", "pip install python-rtmidi")
    return Check("MIDI", OK, f"{api}; virtual port {settings.midi.port_name!r}" if settings.midi.virtual else api)


def check_osc(settings) -> Check:  # noqa: ANN001
    if not settings.osc.enabled:
        return Check("OSC", OK, "disabled in the settings (osc.enabled: false)")
    host, port = settings.osc.host, settings.osc.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, port))
    except OSError as exc:
        return Check("OSC", FAIL, f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                     "another program (or a running livegen) uses the port: stop it or change osc.port")
    wide = host in ("0.0.0.0", "::")
    return Check("OSC", WARN if wide and not settings.osc.allow else OK, f"{host}:{port} is free",
                 "listening on every interface with an empty osc.allow accepts anyone on the network"
                 if wide and not settings.osc.allow else "")


def check_model(name: str, m) -> Check:  # noqa: ANN001
    label = f"model {name}"
    local = Path(m.path).expanduser()
    if local.exists():
        if not local.is_dir():
            return Check(label, FAIL, f"{m.path} is not a folder", "point models.<name>.path at a checkpoint folder")
        found = [p.name for p in local.iterdir() if p.suffix in (".safetensors", ".json")]
        if not any(f.endswith(".safetensors") for f in found):
            return Check(label, FAIL, f"no .safetensors weights in {m.path}",
                         "convert pickle checkpoints once with `livegen convert --allow-pickle`")
        return Check(label, OK, f"{m.engine}: local folder {m.path}")
    if m.path.startswith((".", "/", "~")):
        return Check(label, FAIL, f"the folder {m.path} does not exist", "fix models.<name>.path")
    try:
        from livegen import weights

        snapshot = weights.hub_cache_dir()
        cached = snapshot is not None and any(snapshot.glob(f"models--{m.path.replace('/', '--')}"))
    except Exception:  # noqa: BLE001 - any import/layout problem: just say we cannot tell
        cached = False
    if cached:
        return Check(label, OK, f"{m.engine}: {m.path} is in the Hugging Face cache")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip() in ("1", "true", "yes")
    return Check(label, FAIL if offline else WARN, f"{m.engine}: {m.path} is not downloaded yet",
                 "HF_HUB_OFFLINE is set: download it elsewhere or unset it" if offline
                 else "it is downloaded on the first `livegen serve` (gated repos need `hf auth login`)")


def check_folder(settings) -> Check:  # noqa: ANN001
    path = settings.folder.path
    if path is None:
        return Check("DAW folder", OK, "not configured (folder.path: null)")
    path = Path(path)
    if not path.is_dir():
        return Check("DAW folder", FAIL, f"{path} does not exist", f"mkdir -p {path}")
    probe = path / f".livegen-doctor-{os.getpid()}"
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        return Check("DAW folder", FAIL, f"{path} is not writable: {exc.strerror or exc}",
                     "fix the folder's permissions or choose another folder.path")
    return Check("DAW folder", OK, f"{path} is writable")


def run(args: argparse.Namespace) -> int:
    from livegen.settings import SettingsError, load_settings

    if args.config is not None and not args.config.is_file():
        raise UsageError(f"the settings file {args.config} does not exist")
    checks: list[Check] = []
    try:
        settings = load_settings(args.config)
        checks.append(Check("settings", OK, str(args.config) if args.config else "defaults"))
    except SettingsError as exc:
        checks.append(Check("settings", FAIL, "; ".join(exc.errors), "fix the settings file"))
        settings = load_settings(None)
    for step in (check_device, lambda: [check_audio(settings)], lambda: [check_midi(settings)],
                 lambda: [check_osc(settings)],
                 lambda: [check_model(n, m) for n, m in settings.models.items()],
                 lambda: [check_folder(settings)]):
        try:
            checks += step()
        except Exception as exc:  # noqa: BLE001 - a crashing check is itself a finding
            checks.append(Check("check", FAIL, f"{type(exc).__name__}: {exc}"))
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"[{c.level:>4}] {c.name:<{width}}  {c.detail}")
        if c.fix and c.level != OK:
            print(f"       {'':<{width}}  -> {c.fix}")
    failed = [c for c in checks if c.level == FAIL]
    print(f"{len(failed)} problem(s) to fix" if failed else "all checks passed")
    return 1 if failed else 0
