"""MIDI out for controller feedback: python-rtmidi, a virtual output port plus named connections.

The API is the one :func:`livegen.control.midi.choose_api` picks for the input (``midi.api``
overrides it). The virtual port is ``<port_name>:midi_out`` on ALSA (the same client name as the
input). On JACK every rtmidi port is a client of its own and JACK renames a second client of the
same name (``livegen-01``), so the output's client is ``<port_name>_out`` and the port
``<port_name>_out:midi_out``. On macOS the virtual source is named ``<port_name>``; Windows has no
virtual ports (use named connections).

Named connections (``midi.feedback_connect`` and the mapping's ``feedback.connect``) are matched
as the input's are (exact name first, else a substring), and looked at again by :meth:`check`
(the feedback thread calls it once a second): a controller that went away and came back is
connected again; :meth:`check` returns True after any new connection, so that the caller sends
every LED again (a controller that appeared late, or was re-plugged, knows none of them).

On JACK, a server that dies takes the output's clients with it: :meth:`check` sees it (the graph
client's shutdown callback), closes the ports, and registers them again under the same names once
a server answers (looked at on every check); it then returns True, so every LED is sent again.

Everything here runs on one thread (the feedback thread); rtmidi sends without blocking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from livegen.control.jack_graph import JackGraph, jack_server_running, new_port
from livegen.control.midi import MidiUnavailable, _rtmidi_api, choose_api

log = logging.getLogger("livegen.midi_out")

VIRTUAL_PORT = "midi_out"
_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, SystemError, ValueError)


class MidiOutput:
    def __init__(self, port_name: str = "livegen", connect: Sequence[str] = (), api: str | None = None,
                 virtual: bool = True) -> None:
        self._port_name = port_name
        self._connect = list(dict.fromkeys(connect))
        self._api_override = api
        self._virtual = virtual
        self._graph: JackGraph | None = None
        self._own_port: str | None = None  # JACK: our output port's full name
        self._main: Any = None  # the virtual port (JACK: also the one every connection hangs on)
        self._links: dict[str, Any] = {}  # wanted -> JACK: the destination's name; else: its rtmidi port
        self._labels: dict[str, str] = {}  # wanted -> the port name it is connected to
        self._ever: set[str] = set()
        self._lister: Any = None
        self.api: str | None = None
        self.port_names: list[str] = []
        self.sent = 0
        self.failed = 0
        self.server_down = False  # JACK: the server died; the ports come back with it
        self.server_returns = 0
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ opening
    def open(self) -> list[str]:
        """Open the ports; returns their names. Raises :class:`MidiUnavailable` when none opens."""
        import rtmidi

        self.api = choose_api(self._api_override)
        api = _rtmidi_api(self.api)
        if self.api == "UNIX_JACK":
            try:
                self._graph = JackGraph(f"{self._port_name}_out_graph")
            except OSError as exc:
                raise MidiUnavailable(f"the JACK graph cannot be read for the MIDI output ({exc})") from exc
            self._open_jack(rtmidi, api)
        else:
            self._open_plain(rtmidi, api)
        for w in self.warnings:
            log.warning(w)
        if not self.port_names and not self._connect:
            raise MidiUnavailable("no MIDI output: midi.virtual is false and no feedback port is named to connect")
        return list(self.port_names)

    def _open_jack(self, rtmidi: Any, api: int) -> None:
        graph = self._graph
        assert graph is not None
        before = set(graph.ports(outputs=True))
        try:
            port = rtmidi.MidiOut(api, name=f"{self._port_name}_out")
            port.open_virtual_port(VIRTUAL_PORT)
        except (rtmidi.RtMidiError, *_ERRORS) as exc:
            raise MidiUnavailable(f"could not create the MIDI output port ({self.api}): {exc}") from exc
        self._main = port
        self._own_port = new_port(before, graph.ports(outputs=True), VIRTUAL_PORT)
        if self._own_port is None:
            raise MidiUnavailable("the JACK MIDI output port was created but cannot be found in the JACK graph")
        self.port_names = [self._own_port]
        self.check(first=True)

    def _open_plain(self, rtmidi: Any, api: int) -> None:
        if self._virtual and self.api != "WINDOWS_MM":
            name = VIRTUAL_PORT if self.api == "LINUX_ALSA" else self._port_name
            try:
                port = rtmidi.MidiOut(api, name=self._port_name)
                port.open_virtual_port(name)
            except (rtmidi.RtMidiError, *_ERRORS) as exc:
                raise MidiUnavailable(f"could not create the virtual MIDI output ({self.api}): {exc}") from exc
            self._main = port
            self.port_names = [f"{self._port_name}:{name}" if self.api == "LINUX_ALSA" else self._port_name]
        if self._connect:
            try:
                self._lister = rtmidi.MidiOut(api, name=f"{self._port_name}_out_list")
            except (rtmidi.RtMidiError, *_ERRORS) as exc:
                raise MidiUnavailable(f"could not list the MIDI outputs ({self.api}): {exc}") from exc
            self.check(first=True)

    def _match(self, wanted: str, available: list[str]) -> str | None:
        own = {self._port_name, f"{self._port_name}_out"}
        candidates = [n for n in available if n.split(":")[0] not in own and n != self._own_port]
        matches = [n for n in candidates if n == wanted] or [n for n in candidates if wanted in n]
        return matches[0] if matches else None

    # ------------------------------------------------------------------ connections
    def want(self, connect: Sequence[str]) -> None:
        """Ports to connect from now on (a mapping reload): new names are connected by the next
        :meth:`check`; a name no longer wanted is not looked after (its connection stays)."""
        self._connect = list(dict.fromkeys(connect))

    def check(self, first: bool = False) -> bool:
        """Connect what is wanted and not connected; True when a connection was made or the ports were
        registered again on a new JACK server (the caller then sends every LED again: a controller
        that appeared or came back knows none of them)."""
        if self._graph is not None and self._graph.gone.is_set():
            self._server_lost()
        if self.server_down:
            return self._server_back()
        if not self._connect:
            return False
        made = self._check_jack(first) if self._graph is not None else self._check_plain(first)
        names = [self._own_port] if self._own_port else (self.port_names[:1] if self._main is not None else [])
        self.port_names = [n for n in names if n] + [self._labels[w] for w in self._connect if w in self._labels]
        return made

    def _check_jack(self, first: bool) -> bool:
        graph, own = self._graph, self._own_port
        assert graph is not None and own is not None
        inputs = graph.ports(outputs=False)
        made = False
        for wanted in self._connect:
            match = self._match(wanted, inputs)
            if match is None:
                self._lost(wanted, inputs, first)
                continue
            if self._labels.get(wanted) == match and graph.connected(own, match):
                continue
            if graph.connect(own, match):
                made |= self._connected(wanted, match)
            elif first:
                self.warnings.append(f"could not connect the MIDI output to {match!r}; livegen tries again every "
                                     "second.")
        return made

    def _check_plain(self, first: bool) -> bool:
        import rtmidi

        available = list(self._lister.get_ports())
        made = False
        for wanted in self._connect:
            match = self._match(wanted, available)
            prev = self._links.get(wanted)
            if prev is not None and self._labels.get(wanted) != match:
                self._close_port(prev)
                self._links.pop(wanted, None)
                prev = None
            if match is None:
                self._lost(wanted, available, first)
                continue
            if prev is not None:
                continue
            try:
                port = rtmidi.MidiOut(_rtmidi_api(self.api or ""), name=self._port_name)
                port.open_port(available.index(match))
            except (rtmidi.RtMidiError, *_ERRORS) as exc:
                if first:
                    self.warnings.append(f"could not connect the MIDI output to {match!r}: {exc}")
                continue
            self._links[wanted] = port
            made |= self._connected(wanted, match)
        return made

    def _connected(self, wanted: str, name: str) -> bool:
        """True: a controller is newly connected (it needs every LED's state)."""
        again = wanted in self._ever
        self._ever.add(wanted)
        self._labels[wanted] = name
        if again:
            log.warning("MIDI feedback port %r is connected again.", name)
        else:
            log.info("MIDI feedback connected to %r", name)
        return True

    def _lost(self, wanted: str, available: list[str], first: bool) -> None:
        name = self._labels.pop(wanted, None)
        if name is not None:
            log.warning("MIDI feedback port %r went away; livegen connects it again when it comes back.", name)
        elif first:
            own = {self._port_name, f"{self._port_name}_out"}
            names = ", ".join(n for n in available if n.split(":")[0] not in own) or "none"
            log.info("MIDI feedback port %r not found (available: %s); livegen connects it when it appears.",
                     wanted, names)

    def _server_lost(self) -> None:
        self.server_down = True
        self._close_all()
        self._own_port = None
        self._labels = {}
        self.port_names = []
        log.warning("The JACK server went away: MIDI feedback has stopped; livegen registers its output again "
                    "when a JACK server is back.")

    def _server_back(self) -> bool:
        if not jack_server_running():
            return False
        import rtmidi

        self.server_down = False
        try:
            self._graph = JackGraph(f"{self._port_name}_out_graph")
            self._open_jack(rtmidi, _rtmidi_api("UNIX_JACK"))
        except (OSError, MidiUnavailable) as exc:  # a server still starting: the next check
            log.debug("registering the MIDI output again failed: %s", exc)
            self._close_all()
            self.server_down = True
            return False
        self.server_returns += 1
        log.warning("The JACK server is back: MIDI feedback %s registered again.", ", ".join(self.port_names))
        return True

    # ------------------------------------------------------------------ sending
    def send(self, message: Sequence[int]) -> bool:
        ports = ([self._main] if self._main is not None else []) + list(self._links.values())
        ok = bool(ports)
        for port in ports:
            try:
                port.send_message(list(message))
            except Exception as exc:  # noqa: BLE001 - a broken port must not stop the feedback thread
                ok = False
                log.debug("MIDI feedback send failed: %s", exc)
        self.sent += ok
        self.failed += not ok
        return ok

    def close(self) -> None:
        self._close_all()

    def _close_all(self) -> None:
        ports = ([self._main] if self._main is not None else []) + list(self._links.values())
        self._main, self._links = None, {}
        for port in ports:
            self._close_port(port)
        graph, self._graph = self._graph, None
        if graph is not None:
            graph.close()
        self._lister = None

    @staticmethod
    def _close_port(port: Any) -> None:
        try:
            port.close_port()
            port.delete()
        except Exception as exc:  # noqa: BLE001 - closing must not stop the shutdown
            log.debug("closing a MIDI output failed: %s", exc)
