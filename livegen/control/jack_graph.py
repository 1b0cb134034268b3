"""The JACK graph, read and connected through libjack (ctypes): the MIDI ports' helper client.

:class:`JackGraph` is a JACK client without ports or a process callback (so no real-time thread of
its own): it lists ports, connects them, and hears of the server's death (``jack_on_shutdown``,
called by libjack on its client thread, not the process thread) so that the MIDI input and output
can register their ports again when the server is back (JACK clients of a dead server stay dead;
new ones opened in the same process work once a server answers again).
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
_SHUTDOWN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # JackShutdownCallback(void *arg)


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


class JackGraph:
    """A JACK client without ports or process callback, used to list and connect MIDI ports.

    ``gone`` is set when the server shuts down or dies (libjack's shutdown callback: measured 12 ms
    after a SIGKILL of jackd). A dead server's graph is not read any more: libjack answers from the
    shared memory it mapped, so the ports listed are the old ones."""

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
        lib.jack_on_shutdown.argtypes = [ctypes.c_void_p, _SHUTDOWN, ctypes.c_void_p]
        self._lib = lib
        self.gone = threading.Event()
        # called on libjack's client thread (never the process thread: this client has no process
        # callback); it only sets the event. Kept referenced while the client lives.
        self._on_shutdown = _SHUTDOWN(lambda _arg: self.gone.set())
        status = ctypes.c_int(0)
        self._client = lib.jack_client_open(client_name.encode(), _JACK_NO_START_SERVER, ctypes.byref(status))
        if not self._client:
            raise OSError(f"the JACK server refused a client (status 0x{status.value:x})")
        lib.jack_on_shutdown(self._client, self._on_shutdown, None)

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
