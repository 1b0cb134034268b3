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


def jack_output_ports() -> set[str] | None:
    """Names of every JACK audio output port (None: no JACK-Client or no server)."""
    try:
        import jack
    except (ImportError, OSError):
        return None
    try:
        c = jack.Client("livegen-probe", no_start_server=True)
    except Exception:  # jack.JackOpenError: no server
        return None
    try:
        return {p.name for p in c.get_ports(is_output=True, is_audio=True)}
    finally:
        c.close()


def rename_new_ports(before: set[str] | None, channels: int) -> list[str]:
    """Give the stream's new JACK ports (``CLIENT:out_0``...) the names people recognise:
    ``out_L``/``out_R`` for stereo, ``out_1``... otherwise. Returns the final names ([] when not on
    JACK or JACK-Client is missing: the ports keep PortAudio's names)."""
    if before is None:
        return []
    import re

    import jack

    try:
        c = jack.Client("livegen-probe", no_start_server=True)
    except Exception:
        return []
    names: list[str] = []
    try:
        new = sorted((p for p in c.get_ports(is_output=True, is_audio=True)
                      if p.name not in before and re.search(r":out_\d+$", p.name)),
                     key=lambda p: int(p.name.rsplit("_", 1)[1]))
        for i, port in enumerate(new[:channels]):
            short = ("out_L", "out_R")[i] if channels == 2 else f"out_{i + 1}"
            try:
                port.shortname = short
            except Exception as exc:  # an older server: keep PortAudio's name
                log.info("could not rename JACK port %s: %s", port.name, exc)
            names.append(port.name)
    finally:
        c.close()
    return names
