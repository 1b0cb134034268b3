"""MIDI in: python-rtmidi, a virtual input port plus connections to named ports.

The rtmidi API is chosen per platform: CoreMIDI on macOS, Windows MM on Windows, the ALSA
sequencer on Linux, falling back to JACK MIDI when the ALSA sequencer is missing and a JACK
server runs (containers, CI). ``midi.api`` in the settings overrides the choice.

No Python runs on rtmidi's (JACK's) MIDI thread: rtmidi queues the messages and a thread of
ours polls the queue every millisecond. It stamps each message at arrival (``time.monotonic``;
rtmidi's own delta times keep the spacing of a burst, bounded by the times of two polls), splits
the bytes into messages itself and hands the events to the asyncio loop in one
``loop.call_soon_threadsafe`` per batch. MIDI clock (24 pulses per quarter note) is forwarded
with its time so that the mapper (a ``tempo`` rule) can follow an external tempo.

Broken input cannot make livegen deaf. SysEx is not used by livegen and is dropped; a SysEx
that never ends (``F0 01 02`` without ``F7``) ends at the next status byte that is not a
real-time byte (80-F7), as the MIDI specification says, and the message that byte starts is
kept. Data bytes without a status byte, incomplete messages and undefined status bytes (F4, F5,
F9, FD) are dropped; running status is honoured within one incoming packet. On JACK, rtmidi
itself would hold every event after an unterminated SysEx until some event ends in ``F7``; a
small JACK client of ours (``<port_name>_guard:sysex_reset``, connected to our input) sends a
lone ``F7`` every 10 ms so that such a hold is released within about 10 ms and the events in it
are split out and kept (they arrive with the time of the release).

Named connections (``midi.connect``) are watched once a second: a source that goes away and
comes back (a controller re-plugged, a program restarted) is connected again, also when it
came back under the same name between two looks (on JACK the connection itself is checked).
Each change is logged and passed to ``on_change(sentence)`` on the loop.

When the JACK server dies (or shuts down), every JACK client of the process is dead with it: the
graph client's shutdown callback (:class:`~livegen.control.jack_graph.JackGraph`) tells our thread,
which closes the ports and says so (``on_change``: "The JACK server went away ..."); once a server
answers again (looked at every second) the ports are registered anew under the same names, the
guard and the named connections made again, and that is said too ("The JACK server is back ...").
New JACK clients opened in a process whose earlier server died work (checked with jackd 1.9 and
python-rtmidi's libjack); only the dead ones cannot be revived.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from livegen.control.jack_graph import JackGraph, jack_server_running, new_port

log = logging.getLogger("livegen.midi")

# settings name -> python-rtmidi API name as mido spells it
API_NAMES = {"alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE", "winmm": "WINDOWS_MM"}
VIRTUAL_PORT = "midi_in"  # the port's name under the client named by midi.port_name (JACK/ALSA)


class MidiUnavailable(RuntimeError):
    """No usable MIDI API on this machine (the message says why and what to do)."""


def alsa_sequencer_present() -> bool:
    return os.path.exists("/dev/snd/seq")


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


FORWARDED = ("note_on", "note_off", "control_change", "program_change", "clock", "start", "stop", "continue")


def to_event(msg: Any, event_type: Callable[..., Any], time: float | None = None) -> Any | None:
    """A mido message as a mapper ``MidiEvent`` (``event_type.from_mido``); None when not mapped.

    ``continue`` stays ``continue`` (the mapper's rules on ``start`` hear it too; the clock
    follower resumes from the song position instead of restarting), Song Position Pointer is
    ``songpos`` with the position in sixteenths as ``value``; channels stay 0-15 as mido gives them.
    """
    kind = msg.type
    if kind == "songpos":
        return event_type(type="songpos", value=int(msg.pos), time=time)
    if kind not in FORWARDED:
        return None
    return event_type.from_mido(msg, time=time)


# ---------------------------------------------------------------------------------------------
# Bytes -> messages
# ---------------------------------------------------------------------------------------------
def _length(status: int) -> int | None:
    """A message's length in bytes (status included) by its status byte; None if undefined."""
    if status < 0xC0 or 0xE0 <= status < 0xF0:
        return 3
    if status < 0xE0:
        return 2
    return {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1}.get(status)


def split_messages(data: Sequence[int]) -> list[list[int]]:
    """Split one incoming packet of MIDI bytes into complete messages (see the module docstring).

    Real-time bytes (F8, FA-FC, FE, FF) come out on their own wherever they are; a SysEx comes
    out whole (``F0 ... F7``) only when terminated; anything malformed is dropped.
    """
    out: list[list[int]] = []
    cur: list[int] | None = None
    need = 0
    running: int | None = None
    for b in data:
        if b >= 0xF8:
            if b not in (0xF9, 0xFD):
                out.append([b])
            continue
        if b >= 0x80:
            if b == 0xF7:
                if cur is not None and cur[0] == 0xF0:
                    cur.append(b)
                    out.append(cur)
                cur, running = None, None
                continue
            if b == 0xF0:
                cur, running = [b], None
                continue
            length = _length(b)
            running = b if b < 0xF0 else None
            if length is None:
                cur = None
            elif length == 1:
                out.append([b])
                cur = None
            else:
                cur, need = [b], length
            continue
        if cur is None:
            if running is None:
                continue  # a stray data byte
            cur, need = [running], _length(running) or 0
        cur.append(b)
        if cur[0] != 0xF0 and len(cur) == need:
            out.append(cur)
            cur = None
    return out


# ---------------------------------------------------------------------------------------------
# The input
# ---------------------------------------------------------------------------------------------
POLL_S = 0.001  # how often rtmidi's queue is read
GUARD_S = 0.010  # how often the JACK guard releases a held SysEx
RECONNECT_S = 1.0  # how often named connections are checked


class _Source:
    """One rtmidi input and the state of its arrival times."""

    def __init__(self, port: Any, label: str) -> None:
        self.port = port
        self.label = label
        self.last: float | None = None  # the estimated arrival of the previous message
        self.empty_at = time.monotonic()  # when its queue was last seen empty

    def close(self) -> None:
        try:
            self.port.close_port()
            self.port.delete()
        except Exception as exc:  # noqa: BLE001 - closing must not stop the shutdown
            log.debug("closing MIDI port failed: %s", exc)


def _rtmidi_api(api: str) -> int:
    import rtmidi

    return int(getattr(rtmidi, f"API_{api}"))


class MidiInput:
    """Opens the virtual port and the connections; calls back on the asyncio loop.

    ``on_event(event)`` receives mapper events (``event_type`` is ``livegen.mapping.MidiEvent``);
    ``on_change(sentence)`` hears about named connections that went away or were made again.
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
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._loop = loop
        self._on_event = on_event
        self._on_change = on_change
        self._event_type = event_type
        self._virtual = virtual
        self._port_name = port_name
        self._connect = list(connect)
        self._api_override = api
        self._sources: list[_Source] = []
        self._links: dict[str, _Source | str | None] = {}  # wanted -> its source (JACK: port name)
        self._ever: set[str] = set()  # wanted names that were connected once
        self._graph: JackGraph | None = None
        self._guard: Any = None
        self._own_port: str | None = None  # JACK: our input port's full name
        # our own clients are never connected as sources: the guard, and the feedback output (on JACK
        # "<port_name>_out": its LED note-ons fed back in would play the pads)
        self._own_clients: set[str] = {f"{port_name}_out"}
        self._lister: Any = None
        self._shown_virtual: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.api: str | None = None
        self.port_names: list[str] = []
        self.received = 0
        self.discarded = 0  # messages that were malformed or not understood
        self.reconnects = 0
        self.server_down = False  # JACK: the server died; the ports come back with it
        self.server_returns = 0  # JACK: times the ports were registered again on a new server
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ opening and closing
    def open(self) -> list[str]:
        """Open the ports; returns their names. Raises :class:`MidiUnavailable` if none can open."""
        import rtmidi

        self.api = choose_api(self._api_override)
        api = _rtmidi_api(self.api)
        if self.api == "UNIX_JACK":
            try:
                self._graph = JackGraph(f"{self._port_name}_graph")
            except OSError as exc:
                self.warnings.append(f"JACK MIDI runs without the SysEx guard and connection checks ({exc}).")
        try:
            if self._graph is not None:
                self._open_jack(rtmidi, api)
            else:
                self._open_plain(rtmidi, api)
        except MidiUnavailable:
            self.close()
            raise
        for warning in self.warnings:
            log.warning(warning)
        self._refresh_names()
        self._thread = threading.Thread(target=self._run, name="livegen-midi-in", daemon=True)
        self._thread.start()
        return list(self.port_names)

    def _input(self, rtmidi: Any, api: int) -> Any:
        port = rtmidi.MidiIn(api, name=self._port_name, queue_size_limit=4096)
        port.ignore_types(sysex=False, timing=False, active_sense=False)  # we filter: see the docstring
        return port

    def _open_jack(self, rtmidi: Any, api: int) -> None:
        graph = self._graph
        assert graph is not None
        before = set(graph.ports(outputs=False))
        try:
            port = self._input(rtmidi, api)
            port.open_virtual_port(VIRTUAL_PORT)
        except (rtmidi.RtMidiError, OSError, RuntimeError, SystemError) as exc:
            raise MidiUnavailable(f"could not create the MIDI input port ({self.api}): {exc}") from exc
        self._sources.append(_Source(port, VIRTUAL_PORT))
        self._own_port = new_port(before, graph.ports(outputs=False), VIRTUAL_PORT)
        if self._own_port is None:
            raise MidiUnavailable("the JACK MIDI input port was created but cannot be found in the JACK graph")
        self._own_clients.add(self._own_port.split(":")[0])
        if self._virtual:
            self._shown_virtual = [self._own_port]
        before_out = set(graph.ports(outputs=True))
        try:
            guard = rtmidi.MidiOut(api, name=f"{self._port_name}_guard")
            guard.open_virtual_port("sysex_reset")
            guard_port = new_port(before_out, graph.ports(outputs=True), "sysex_reset")
            if guard_port is None or not graph.connect(guard_port, self._own_port):
                raise OSError("its port could not be connected")
            self._own_clients.add(guard_port.split(":")[0])
            self._guard = guard
        except (rtmidi.RtMidiError, OSError, RuntimeError, SystemError) as exc:
            self.warnings.append(f"the JACK MIDI SysEx guard could not start ({exc}); an unterminated SysEx "
                                 "can hold later MIDI events until a SysEx ends.")
        sources = graph.ports(outputs=True)
        for wanted in self._connect:
            match = self._match(wanted, sources)
            self._links[wanted] = None
            if match is None:
                self._not_found(wanted, sources)
            elif graph.connect(match, self._own_port):
                self._links[wanted] = match
                self._ever.add(wanted)
            else:
                self.warnings.append(f"could not connect MIDI port {match!r}; livegen tries again every second.")

    def _open_plain(self, rtmidi: Any, api: int) -> None:
        if self._virtual:
            port_name = VIRTUAL_PORT if self.api in ("UNIX_JACK", "LINUX_ALSA") else self._port_name
            try:
                port = self._input(rtmidi, api)
                port.open_virtual_port(port_name)
            except (rtmidi.RtMidiError, OSError, RuntimeError, SystemError) as exc:
                raise MidiUnavailable(f"could not create the virtual MIDI port ({self.api}): {exc}") from exc
            self._sources.append(_Source(port, port_name))
            shown = f"{self._port_name}:{port_name}" if self.api != "MACOSX_CORE" else self._port_name
            self._shown_virtual = [shown]
            self._own_clients.add(self._port_name)
        if not self._connect:
            return
        try:
            self._lister = rtmidi.MidiIn(api, name=f"{self._port_name}_list")
        except (rtmidi.RtMidiError, OSError, RuntimeError, SystemError) as exc:
            raise MidiUnavailable(f"could not list the MIDI ports ({self.api}): {exc}") from exc
        available = list(self._lister.get_ports())
        for wanted in self._connect:
            self._links[wanted] = None
            match = self._match(wanted, available)
            if match is None:
                self._not_found(wanted, available)
                continue
            source = self._open_source(rtmidi, api, available, match)
            if source is not None:
                self._links[wanted] = source
                self._ever.add(wanted)

    def _open_source(self, rtmidi: Any, api: int, available: list[str], name: str) -> _Source | None:
        try:
            port = self._input(rtmidi, api)
            port.open_port(available.index(name))
        except (rtmidi.RtMidiError, OSError, RuntimeError, SystemError, ValueError) as exc:
            self.warnings.append(f"could not connect MIDI port {name!r}: {exc}")
            return None
        source = _Source(port, name)
        self._sources.append(source)
        return source

    def _match(self, wanted: str, available: list[str]) -> str | None:
        matches = [n for n in available if n == wanted] or [n for n in available if wanted in n]
        matches = [n for n in matches if n.split(":")[0] not in self._own_clients]
        return matches[0] if matches else None

    def _not_found(self, wanted: str, available: list[str]) -> None:
        names = ", ".join(n for n in available if n.split(":")[0] not in self._own_clients) or "none"
        self.warnings.append(f"MIDI port {wanted!r} not found; available: {names}. livegen connects it when "
                             "it appears.")

    def _refresh_names(self) -> None:
        linked = [v if isinstance(v, str) else v.label for v in self._links.values() if v is not None]
        self.port_names = self._shown_virtual + linked

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        self._close_ports()

    def _close_ports(self) -> None:
        sources, self._sources = self._sources, []
        for source in sources:
            source.close()
        guard, self._guard = self._guard, None
        if guard is not None:
            try:
                guard.close_port()
                guard.delete()
            except Exception as exc:  # noqa: BLE001
                log.debug("closing the MIDI guard failed: %s", exc)
        graph, self._graph = self._graph, None
        if graph is not None:
            graph.close()
        self._lister = None

    # ------------------------------------------------------------------ our polling thread
    def _run(self) -> None:
        now = time.monotonic()
        next_guard = now + GUARD_S
        next_check = now + RECONNECT_S
        while not self._stop.is_set():
            batch: list[Any] = []
            for source in list(self._sources):
                self._drain(source, batch)
            if batch:
                self._post(self._deliver, batch)
            now = time.monotonic()
            if self._guard is not None and now >= next_guard:
                next_guard = now + GUARD_S
                try:
                    self._guard.send_message([0xF7])
                except Exception as exc:  # noqa: BLE001 - keep reading MIDI whatever happens
                    log.debug("the MIDI guard could not send: %s", exc)
            if self._graph is not None and self._graph.gone.is_set():
                self._server_lost()
                next_check = now + RECONNECT_S
            elif self.server_down and now >= next_check:
                next_check = now + RECONNECT_S
                self._server_back()
            elif self._links and now >= next_check:
                next_check = now + RECONNECT_S
                try:
                    self._check_links()
                except Exception:  # noqa: BLE001
                    log.exception("checking the MIDI connections failed")
            time.sleep(POLL_S)

    def _drain(self, source: _Source, batch: list[Any]) -> None:
        import mido

        while True:
            got = source.port.get_message()
            if got is None:
                source.empty_at = time.monotonic()
                return
            data, delta = got
            now = time.monotonic()
            t = now if source.last is None else min(source.last + max(delta, 0.0), now)
            t = max(t, source.empty_at)
            source.last = t
            for raw in split_messages(data):
                try:
                    msg = mido.Message.from_bytes(raw)
                except (ValueError, TypeError):
                    self.discarded += 1
                    continue
                event = to_event(msg, self._event_type, t)
                if event is None:
                    continue
                if msg.type != "clock":
                    self.received += 1
                batch.append(event)

    def _check_links(self) -> None:
        if self._graph is not None:
            assert self._own_port is not None
            sources = self._graph.ports(outputs=True)
            for wanted, prev in self._links.items():
                match = self._match(wanted, sources)
                if match is None:
                    if prev is not None:
                        self._links[wanted] = None
                        self._changed(f"MIDI port {prev!r} went away; livegen connects it again when it comes back.")
                    continue
                if prev == match and self._graph.connected(match, self._own_port):
                    continue
                if self._graph.connect(match, self._own_port):
                    self._links[wanted] = match
                    self._reconnected(wanted, match)
            return
        import rtmidi

        available = list(self._lister.get_ports())
        for wanted, prev in list(self._links.items()):
            match = self._match(wanted, available)
            if isinstance(prev, _Source) and prev.label != match:
                self._sources = [s for s in self._sources if s is not prev]
                prev.close()
                self._links[wanted] = None
                self._changed(f"MIDI port {prev.label!r} went away; livegen connects it again when it comes back.")
                prev = None
            if match is not None and prev is None:
                source = self._open_source(rtmidi, _rtmidi_api(self.api or ""), available, match)
                if source is not None:
                    self._links[wanted] = source
                    self._reconnected(wanted, match)

    def _server_lost(self) -> None:
        """The JACK server died: its clients (ours) with it. Close them, say so, wait for one."""
        self.server_down = True
        self._close_ports()
        self._own_port = None
        self._shown_virtual = []
        self._links = {wanted: None for wanted in self._connect}
        self._changed("The JACK server went away: MIDI input has stopped; livegen registers its MIDI ports "
                      "again when a JACK server is back.")

    def _server_back(self) -> None:
        """A JACK server answers: register the ports again (our thread; the next second retries)."""
        if not jack_server_running():
            return
        import rtmidi

        warned = len(self.warnings)
        try:
            self._graph = JackGraph(f"{self._port_name}_graph")
            self._open_jack(rtmidi, _rtmidi_api("UNIX_JACK"))
        except (OSError, MidiUnavailable) as exc:  # a server still starting: the next second
            log.debug("registering the MIDI ports again failed: %s", exc)
            self._close_ports()
            return
        self.server_down = False
        self.server_returns += 1
        for warning in self.warnings[warned:]:
            log.warning(warning)
        self.warnings[warned:] = []
        self._refresh_names()
        self._changed(f"The JACK server is back: MIDI input {', '.join(self.port_names)} registered again.")

    def _reconnected(self, wanted: str, name: str) -> None:
        again = wanted in self._ever
        self._ever.add(wanted)
        self.reconnects += 1
        self._changed(f"MIDI port {name!r} is connected again." if again else
                      f"MIDI port {name!r} appeared and is connected.")

    def _changed(self, sentence: str) -> None:
        self._refresh_names()
        log.warning(sentence)
        if self._on_change is not None:
            self._post(self._on_change, sentence)

    # ------------------------------------------------------------------ the loop's thread
    def _deliver(self, events: list[Any]) -> None:
        for event in events:
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - one bad event must not lose the rest of the batch
                log.exception("handling a MIDI event failed")

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
