"""Keeping the rtmixer stream alive: the JACK client name, and (below) the stream guard."""

from __future__ import annotations

import ctypes
import logging
import threading
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


STALL_SECONDS = 0.1  # the callback not heard from for longer than this while running: stalled
CHECK_PERIOD = 0.02
REOPEN_PERIOD = 1.0


def abandon_portaudio() -> int:
    """Forget PortAudio's initialisation without Pa_Terminate: after the JACK server died, stop,
    close and terminate hang or abort the process (pa_jack.c's Terminate asserts), so nothing of it
    may run again, not even sounddevice's exit handler. Returns the count it had."""
    try:
        import sounddevice as sd
    except ImportError:
        return 0
    was = int(sd._initialized)
    sd._initialized = 0
    return was


def restore_portaudio(count: int) -> None:
    """Undo :func:`abandon_portaudio` (PortAudio was never terminated)."""
    import sounddevice as sd

    sd._initialized = max(int(sd._initialized), count)


class StreamGuard:
    """Watches an :class:`~livegen.output.rt_player.RtPlayer`'s stream from its own thread.

    A stream is dead when PortAudio says it is no longer active (a PortAudio error, the JACK
    server shut down) and stalled when the callback has not answered the player's counters fetch
    (posted every few tens of milliseconds) for more than ``STALL_SECONDS``. Either is reported at
    once (``on_fault`` with a sentence, the log, ``stats()['stalled']``). A dead stream is closed
    within a bounded time and reopened every ``REOPEN_PERIOD`` until it works (``on_recover``); a
    stalled one that comes back by itself is reported as recovered. When the close cannot finish
    (the JACK server is gone: PortAudio's JACK host API hangs and cannot be re-initialised in this
    process), PortAudio is abandoned and the fault says the daemon must be restarted once JACK is
    back."""

    def __init__(self, player: Any, on_fault: Any = None, on_recover: Any = None) -> None:
        self.player = player
        self.on_fault = on_fault
        self.on_recover = on_recover
        self.faults = 0
        self.reopened = 0
        self.state = "ok"  # ok, stalled, dead, reopening, abandoned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="livegen-stream-guard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _say(self, hook: Any, text: str) -> None:
        if hook is not None:
            try:
                hook(text)
            except Exception as exc:  # e.g. the daemon's loop already closed at shutdown
                log.info("the stream guard could not report it: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(CHECK_PERIOD):
            try:
                self._check()
            except Exception:
                log.exception("the stream guard failed")

    def _check(self) -> None:
        p = self.player
        if self.state == "abandoned":
            return
        if self.state in ("dead", "reopening"):
            self._reopen()
            return
        m = p._m
        if m is None:
            return
        active = bool(m.active)
        waited = p.callback_silence()
        if not active:
            self._fault("dead", getattr(p, "dead_text", None) or "The audio stream stopped (PortAudio error or "
                        "the audio server went away); reopening it.")
            old = p.detach_stream()
            was = abandon_portaudio()  # at once: an exit meanwhile must not run Pa_Terminate
            if old is not None and close_bounded(old, 1.0):
                restore_portaudio(was)  # the server is there: PortAudio goes on
            else:
                self.state = "abandoned"
                msg = ("The audio server went away and PortAudio cannot reconnect in this process; "
                       "restart the daemon once the server is back.")
                log.error("%s", msg)
                self._say(self.on_fault, msg)
            return
        if waited > STALL_SECONDS and self.state == "ok":
            self._fault("stalled", f"The audio callback has not run for {waited * 1000:.0f} ms.")
        elif waited <= STALL_SECONDS and self.state == "stalled":
            self.state = "ok"
            p.stalled = False
            log.warning("the audio callback runs again")
            self._say(self.on_recover, "The audio stream runs again.")

    def _fault(self, state: str, text: str) -> None:
        self.state = state
        self.faults += 1
        self.player.stalled = True
        self.player.stream_errors += 1
        log.error("%s", text)
        self._say(self.on_fault, text)

    def _reopen(self) -> None:
        self.state = "reopening"
        try:
            self.player.reopen()
        except Exception as exc:
            log.info("audio stream not reopened yet: %s", exc)
            self._stop.wait(REOPEN_PERIOD)
            return
        self.state = "ok"
        self.reopened += 1
        self.player.stalled = False
        log.warning("the audio stream was reopened")
        self._say(self.on_recover, "The audio stream was reopened.")


def close_bounded(m: Any, timeout: float) -> bool:
    """Stop and close a PortAudio stream on a helper thread; True when it finished in time."""
    def stop() -> None:
        try:
            m.stop()
        except Exception:  # a dead server: nothing left to stop
            pass
        try:
            m.close()
        except Exception:
            pass

    t = threading.Thread(target=stop, name="livegen-stream-close", daemon=True)
    t.start()
    t.join(max(0.0, timeout))
    return not t.is_alive()
