"""MIDI in: mido + python-rtmidi, a virtual input port plus connections to named ports.

The rtmidi API is chosen per platform: CoreMIDI on macOS, Windows MM on Windows, the ALSA
sequencer on Linux, falling back to JACK MIDI when the ALSA sequencer is missing and a JACK
server runs (containers, CI). ``midi.api`` in the settings overrides the choice.

Messages arrive on rtmidi's thread; they are stamped there and handed to the asyncio loop with
``loop.call_soon_threadsafe``. MIDI clock (24 pulses per quarter note) is stamped
on rtmidi's thread; clock pulses are forwarded with their time so that the mapper (a ``tempo``
rule) can follow an external tempo.
"""

from __future__ import annotations

import glob
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("livegen.midi")

# settings name -> python-rtmidi API name as mido spells it
API_NAMES = {"alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE", "winmm": "WINDOWS_MM"}
VIRTUAL_PORT = "midi_in"  # the port's name under the client named by midi.port_name (JACK/ALSA)


class MidiUnavailable(RuntimeError):
    """No usable MIDI API on this machine (the message says why and what to do)."""


def alsa_sequencer_present() -> bool:
    return os.path.exists("/dev/snd/seq")


def jack_server_running(server: str | None = None) -> bool:
    """True if a JACK server accepts connections on its socket (looked up without starting one)."""
    name = server or os.environ.get("JACK_DEFAULT_SERVER") or "default"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for d in ("/dev/shm", "/tmp"):
        for path in glob.glob(os.path.join(d, f"jack_{name}_{uid}_*")) + glob.glob(
            os.path.join(d, f"jack-{uid}", name, "jack_*")
        ):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(0.5)
                    s.connect(path)
                return True
            except OSError:
                continue
    return False


def compiled_apis() -> list[str]:
    import mido

    return list(mido.Backend("mido.backends.rtmidi").module.get_api_names())


def choose_api(
    override: str | None = None,
    platform: str = sys.platform,
    compiled: Sequence[str] | None = None,
    alsa_seq: bool | None = None,
    jack_running: bool | None = None,
) -> str:
    """The mido/rtmidi API name to use; raises :class:`MidiUnavailable` with the reason."""
    compiled = list(compiled) if compiled is not None else compiled_apis()
    if override:
        api = API_NAMES.get(override.lower(), override)
        if api not in compiled:
            have = ", ".join(compiled)
            raise MidiUnavailable(f"midi.api {override!r} is not compiled into python-rtmidi ({have})")
        return api
    if platform == "darwin":
        candidates = ["MACOSX_CORE"]
    elif platform.startswith("win"):
        candidates = ["WINDOWS_MM"]
    else:
        alsa_seq = alsa_sequencer_present() if alsa_seq is None else alsa_seq
        if alsa_seq and "LINUX_ALSA" in compiled:
            return "LINUX_ALSA"
        jack_running = jack_server_running() if jack_running is None else jack_running
        if jack_running and "UNIX_JACK" in compiled:
            return "UNIX_JACK"
        raise MidiUnavailable(
            "no MIDI API available: the ALSA sequencer (/dev/snd/seq) is missing and no JACK server runs "
            "(load snd-seq, start JACK, or set midi.enabled: false)"
        )
    for api in candidates:
        if api in compiled:
            return api
    raise MidiUnavailable(f"python-rtmidi has none of {', '.join(candidates)} compiled in")


FORWARDED = ("note_on", "note_off", "control_change", "program_change", "clock", "start", "stop")


def to_event(msg: Any, event_type: Callable[..., Any], time: float | None = None) -> Any | None:
    """A mido message as a mapper ``MidiEvent`` (``event_type.from_mido``); None when not mapped.

    ``continue`` counts as ``start``; channels stay 0-15 as mido gives them.
    """
    kind = msg.type
    if kind == "continue":
        return event_type(type="start", time=time)
    if kind not in FORWARDED:
        return None
    return event_type.from_mido(msg, time=time)


class MidiInput:
    """Opens the virtual port and the connections; calls back on the asyncio loop.

    ``on_event(event)`` receives mapper events (``event_type`` is ``livegen.mapping.MidiEvent``).
    """

    def __init__(
        self,
        loop: Any,
        on_event: Callable[[Any], None],
        event_type: Callable[..., Any],
        virtual: bool = True,
        port_name: str = "livegen",
        connect: Sequence[str] = (),
        api: str | None = None,
    ) -> None:
        self._loop = loop
        self._on_event = on_event
        self._event_type = event_type
        self._virtual = virtual
        self._port_name = port_name
        self._connect = list(connect)
        self._api_override = api
        self._ports: list[Any] = []
        self.api: str | None = None
        self.port_names: list[str] = []
        self.received = 0
        self.warnings: list[str] = []

    def open(self) -> list[str]:
        """Open the ports; returns their names. Raises :class:`MidiUnavailable` if none can open."""
        import mido

        self.api = choose_api(self._api_override)
        backend = mido.Backend(f"mido.backends.rtmidi/{self.api}", load=True)
        if self._virtual:
            port_name = VIRTUAL_PORT if self.api in ("UNIX_JACK", "LINUX_ALSA") else self._port_name
            try:
                port = backend.open_input(port_name, virtual=True, client_name=self._port_name,
                                          callback=self._callback)
            except (OSError, RuntimeError, SystemError) as exc:
                raise MidiUnavailable(f"could not create the virtual MIDI port ({self.api}): {exc}") from exc
            self._ports.append(port)
            shown = f"{self._port_name}:{port_name}" if self.api != "MACOSX_CORE" else self._port_name
            self.port_names.append(shown)
        if self._connect:
            available = backend.get_input_names()
            for wanted in self._connect:
                matches = [n for n in available if n == wanted] or [n for n in available if wanted in n]
                own = [n for n in matches if n.split(":")[0] == self._port_name]
                matches = [n for n in matches if n not in own]
                if not matches:
                    names = ", ".join(available) or "none"
                    self.warnings.append(f"MIDI port {wanted!r} not found; available: {names}")
                    continue
                try:
                    self._ports.append(backend.open_input(matches[0], callback=self._callback))
                    self.port_names.append(matches[0])
                except (OSError, RuntimeError, SystemError) as exc:
                    self.warnings.append(f"could not connect MIDI port {matches[0]!r}: {exc}")
        for warning in self.warnings:
            log.warning(warning)
        return list(self.port_names)

    def close(self) -> None:
        ports, self._ports = self._ports, []
        for port in ports:
            try:
                port.close()
            except Exception as exc:  # noqa: BLE001 - closing must not stop the shutdown
                log.debug("closing MIDI port failed: %s", exc)

    # rtmidi's thread
    def _callback(self, msg: Any) -> None:
        event = to_event(msg, self._event_type, time.monotonic())
        if event is not None:
            if msg.type != "clock":
                self.received += 1
            self._post(self._on_event, event)

    def _post(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # loop closed during shutdown
            pass


def list_ports(api: str) -> dict[str, list[str]]:
    """Input and output port names of one API (for ``livegen devices``)."""
    import mido

    backend = mido.Backend(f"mido.backends.rtmidi/{api}", load=True)
    return {"inputs": list(backend.get_input_names()), "outputs": list(backend.get_output_names())}
