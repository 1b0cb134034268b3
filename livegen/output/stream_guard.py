"""Keeping the rtmixer stream alive: the JACK client name, and (below) the stream guard."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

log = logging.getLogger("livegen.audio")

_client_name_ref: Any = None  # PortAudio keeps the pointer: the bytes must outlive it


def set_jack_client_name(name: str | None) -> bool:
    """Name PortAudio's JACK client (its ports become ``name:out_0``...) before PortAudio scans
    its host APIs again; True when the backend took it. Only on Linux with a JACK-enabled
    PortAudio; elsewhere nothing happens."""
    global _client_name_ref
    if not name:
        return False
    import sounddevice as sd

    try:
        lib = ctypes.CDLL(sd._libname)
        fn = lib.PaJack_SetClientName
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = ctypes.c_int
    _client_name_ref = ctypes.create_string_buffer(name.encode())
    sd._terminate()
    try:
        rc = fn(_client_name_ref)
    finally:
        sd._initialize()
    if rc != 0:
        log.warning("PortAudio refused the JACK client name %r (%d)", name, rc)
    return rc == 0
