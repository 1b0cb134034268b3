"""This process's view of the JACK graph for MIDI, and its JACK clients across a server restart.

:class:`JackGraph` is a JACK client without ports or process callback (no real-time thread), used
to list and connect MIDI ports through libjack (the one python-rtmidi's wheel bundles, else the
system's); it notes when the server shuts it down. :func:`jack_server_running` looks for a
server's socket without starting one.

When the JACK server dies, every JACK client of the process is dead with it: the MIDI input and
its guard, the feedback output, their graphs. libjack keeps one set of process-wide globals (the
server's shared memory) while any client of the process is open, so a client opened for the new
server while one of the dead server's is still open mixes up the two servers' port tables (seen
in the tests: a connection 'livegen:out_L' -> 'livegen:out_L'). :data:`JACK_CLIENTS` therefore
counts server lives: each user of JACK says when it opened its clients and when it closed them;
after a death, nobody opens again until every user has closed what it opened on the dead server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import socket
import threading


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



JACK_MIDI_TYPE = b"8 bit raw midi"
_JACK_NO_START_SERVER = 0x01
_JACK_PORT_IS_INPUT, _JACK_PORT_IS_OUTPUT = 0x1, 0x2
_EEXIST = 17


def _load_libjack() -> ctypes.CDLL | None:
    """The libjack python-rtmidi uses (its wheel bundles one), else the system's."""
    try:
        import rtmidi

        here = os.path.dirname(os.path.dirname(os.path.abspath(rtmidi.__file__)))
        candidates = sorted(glob.glob(os.path.join(here, "python_rtmidi*", "libjack*")))
    except ImportError:
        candidates = []
    system = ctypes.util.find_library("jack")
    if system:
        candidates.append(system)
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


_SHUTDOWN_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class JackGraph:
    """A JACK client without ports or process callback, used to list and connect MIDI ports.
    :attr:`dead` once the server shut it down (libjack calls back from its own, not real-time,
    thread when the server's socket closes)."""

    def __init__(self, client_name: str) -> None:
        lib = _load_libjack()
        if lib is None:
            raise OSError("libjack was not found")
        lib.jack_client_open.restype = ctypes.c_void_p
        lib.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.jack_client_close.argtypes = [ctypes.c_void_p]
        lib.jack_get_ports.restype = ctypes.POINTER(ctypes.c_char_p)
        lib.jack_get_ports.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong]
        lib.jack_free.argtypes = [ctypes.c_void_p]
        lib.jack_port_by_name.restype = ctypes.c_void_p
        lib.jack_port_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.jack_port_connected_to.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.jack_connect.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.jack_on_shutdown.argtypes = [ctypes.c_void_p, _SHUTDOWN_CALLBACK, ctypes.c_void_p]
        self._lib = lib
        self._shut_down = threading.Event()
        self._on_shutdown = _SHUTDOWN_CALLBACK(lambda _arg: self._shut_down.set())  # kept: libjack holds it
        status = ctypes.c_int(0)
        self._client = lib.jack_client_open(client_name.encode(), _JACK_NO_START_SERVER, ctypes.byref(status))
        if not self._client:
            raise OSError(f"the JACK server refused a client (status 0x{status.value:x})")
        lib.jack_on_shutdown(self._client, self._on_shutdown, None)

    @property
    def dead(self) -> bool:
        """The server went away under this client (it shut the client down)."""
        return self._shut_down.is_set()

    def ports(self, outputs: bool) -> list[str]:
        flags = _JACK_PORT_IS_OUTPUT if outputs else _JACK_PORT_IS_INPUT
        names = self._lib.jack_get_ports(self._client, None, JACK_MIDI_TYPE, flags)
        if not names:
            return []
        out = []
        i = 0
        while names[i]:
            out.append(names[i].decode("utf-8", "replace"))
            i += 1
        self._lib.jack_free(ctypes.cast(names, ctypes.c_void_p))
        return out

    def connected(self, source: str, destination: str) -> bool:
        port = self._lib.jack_port_by_name(self._client, destination.encode())
        return bool(port) and self._lib.jack_port_connected_to(port, source.encode()) > 0

    def connect(self, source: str, destination: str) -> bool:
        return self._lib.jack_connect(self._client, source.encode(), destination.encode()) in (0, _EEXIST)

    def close(self) -> None:
        client, self._client = self._client, None
        if client:
            self._lib.jack_client_close(client)


def new_port(before: set[str], after: list[str], port: str) -> str | None:
    new = [n for n in after if n not in before and n.endswith(":" + port)]
    return new[0] if new else None


class JackClients:
    """Server lives and who holds clients of which (see the module doc). A user is any object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._life = 0
        self._holders: dict[int, int] = {}  # id(user) -> the server life its clients belong to

    def opened(self, user: object) -> None:
        with self._lock:
            self._holders[id(user)] = self._life

    def closed(self, user: object, server_died: bool) -> None:
        """``user`` closed its clients; ``server_died``: because the server went away (the first
        user to say so of the current life ends it)."""
        with self._lock:
            life = self._holders.pop(id(user), None)
            if server_died and life == self._life:
                self._life += 1

    def stale(self, user: object) -> bool:
        """True when ``user`` holds clients of a server that another user saw die."""
        with self._lock:
            life = self._holders.get(id(user))
            return life is not None and life < self._life

    def may_open(self) -> bool:
        """True when no client of a dead server is still open in this process."""
        with self._lock:
            return all(life == self._life for life in self._holders.values())


JACK_CLIENTS = JackClients()
