"""`livegen devices`: audio outputs (per host API) and MIDI ports (per MIDI API)."""

from __future__ import annotations

import argparse
import sys

from livegen.control.midi import (
    API_NAMES,
    MidiUnavailable,
    alsa_sequencer_present,
    choose_api,
    compiled_apis,
    jack_server_running,
    list_ports,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list audio outputs and MIDI ports")
    p.set_defaults(func=run)


def audio_lines() -> list[str]:
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio missing
        return [f"  PortAudio is not available: {exc}"]
    lines = []
    apis = sd.query_hostapis()
    try:
        default_out = sd.default.device[1]
    except Exception:  # noqa: BLE001
        default_out = -1
    for index, dev in enumerate(sd.query_devices()):
        if dev["max_output_channels"] <= 0:
            continue
        mark = "*" if index == default_out else " "
        api = apis[dev["hostapi"]]["name"]
        lines.append(f" {mark}{index:3d}  {dev['name']}  ({api}, {dev['max_output_channels']} out, "
                     f"{dev['default_samplerate']:.0f} Hz)")
    return lines or ["  no audio outputs (on Linux without sound hardware: bin/livegen-jack-dummy)"]


def midi_lines() -> list[str]:
    names = {v: k for k, v in API_NAMES.items()}
    lines = []
    try:
        compiled = compiled_apis()
    except Exception as exc:  # noqa: BLE001 - python-rtmidi missing or broken
        return [f"  python-rtmidi is not available: {exc}"]
    try:
        chosen = choose_api(None)
    except MidiUnavailable as exc:
        chosen = None
        lines.append(f"  {exc}")
    for api in compiled:
        label = f"{api} (midi.api: {names.get(api, api)})" + ("  <- used by default" if api == chosen else "")
        if api == "UNIX_JACK" and not jack_server_running():
            lines.append(f"  {label}: no JACK server running")
            continue
        if api == "LINUX_ALSA" and not alsa_sequencer_present():
            lines.append(f"  {label}: the ALSA sequencer (/dev/snd/seq) is missing")
            continue
        try:
            ports = list_ports(api)
        except Exception as exc:  # noqa: BLE001
            lines.append(f"  {label}: cannot list ports: {exc}")
            continue
        lines.append(f"  {label}")
        lines += [f"      source: {n}" for n in ports["inputs"]] or ["      source: (none)"]
        lines += [f"      sink:   {n}" for n in ports["outputs"]] or ["      sink:   (none)"]
    return lines


def run(args: argparse.Namespace) -> int:
    print("Audio outputs (* = default):")
    print("\n".join(audio_lines()))
    print("MIDI (sources can be named in midi.connect; livegen's own port is created by `serve`):")
    print("\n".join(midi_lines()))
    sys.stdout.flush()
    return 0
