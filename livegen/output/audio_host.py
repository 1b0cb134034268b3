"""The rtmixer player in a child process, so the audio server can die and come back.

After a JACK server died, PortAudio's JACK host API cannot be used again in the process that used
it (stop and close hang, ``Pa_Terminate`` asserts). :class:`HostedPlayer` has the player interface
and forwards every call to an :class:`~livegen.output.rt_player.RtPlayer` that runs in a child
process (``python -m livegen.output.audio_host``) over a pipe. When the child's stream guard gives
the stream up, or the child dies, the parent kills it and starts a new one every second until one
opens the stream again; then it sets the tempo grid back and re-launches the slots that were
looping, and reports that the audio is back. Frames stay monotonic over a restart (an offset is
added to the new child's clock). Stream voices that were playing when the server died end.

Messages: the parent sends ``(id, name, args, kwargs)``; ``id`` 0 means no reply is wanted. The child
answers ``("reply", id, ok, value)`` and pushes ``("event", kind, text)`` (fault, recover, abandoned).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger("livegen.audio")

CALL_TIMEOUT = 5.0  # seconds an RPC may take (a schedule carries the clip)
RESPAWN_PERIOD = 1.0
# The child publishes its clock every 40 ms. Silent for SILENT_FAULT: reported (a hung or starved
# audio process); for SILENT_LOST: given up like a dead one (killed, a new one started).
SILENT_FAULT = 0.5
SILENT_LOST = 3.0
WATCH_PERIOD = 0.05
_FRAME_IN = {"schedule": "at_frame", "anchor_bar": "frame"}


class HostedStreamVoice:
    """The contract's StreamVoice, forwarded to the child (writes are one-way messages)."""

    def __init__(self, host: HostedPlayer, vid: int, epoch: int) -> None:
        self._host = host
        self.id = vid
        self._epoch = epoch
        self.closed = False

    def _live(self) -> bool:
        return self._host._epoch == self._epoch and self._host._alive()

    def write(self, chunk: np.ndarray) -> None:
        if self.closed:
            raise ValueError("the stream voice was closed")
        if self._live():
            self._host._send(0, "sv_write", (self.id, np.ascontiguousarray(chunk, dtype=np.float32)), {})

    def start(self, launch: str = "now", at_frame: int | None = None) -> int:
        if not self._live():
            return self._host.frame
        at = None if at_frame is None else int(at_frame) - self._host._offset
        return int(self._host._call("sv_start", self.id, launch, at)) + self._host._offset

    def close(self) -> None:
        self.closed = True
        if self._live():
            self._host._send(0, "sv_close", (self.id,), {})

    def cancel(self) -> None:
        self.closed = True
        if self._live():
            self._host._send(0, "sv_cancel", (self.id,), {})

    @property
    def buffered_frames(self) -> int:
        return int(self._host._call("sv_get", self.id, "buffered_frames")) if self._live() else 0

    @property
    def misses(self) -> int:
        return int(self._host._call("sv_get", self.id, "misses")) if self._live() else 0

    @property
    def started_at(self) -> int | None:
        at = self._host._call("sv_get", self.id, "started_at") if self._live() else None
        return None if at is None else int(at) + self._host._offset


class HostedPlayer:
    def __init__(self, settings: Any, tempo: Any = None) -> None:
        from livegen.settings import TempoSettings

        self.settings = settings
        t = tempo or TempoSettings()
        self.sample_rate = int(settings.sample_rate)
        self.channels = int(settings.channels)
        self._tempo = (float(t.bpm), int(t.beats_per_bar))
        self._anchor: int | None = None
        self.on_fault: Any = None
        self.on_recover: Any = None
        self.ports: list[str] = []
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()  # one RPC at a time on the pipe
        self._replies: dict[int, Any] = {}
        self._reply_cv = threading.Condition()
        self._next_id = 1
        self._epoch = 0
        self._offset = 0  # added to the child's frames (monotonic over restarts)
        self._last_frame = 0
        self._last_frame_time = time.monotonic()
        self._loops: dict[int, tuple[np.ndarray, float]] = {}  # slots that loop: re-launched after a restart
        self._down = False
        self._closing = False
        self.restarts = 0
        self.faults = 0
        self._faulted = False  # a fault was reported and nothing has recovered since
        self._respawner: threading.Thread | None = None
        self._last_stats: dict[str, Any] = {}
        self._state: tuple[int, float] | None = None  # (child frame, monotonic time), pushed every 40 ms
        self._heard = time.monotonic()  # when the child last published its state (the parent's clock)
        self._silent = False  # the child's silence was reported as a fault
        self._lost_lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------------ child lifecycle
    def start(self) -> None:
        release_portaudio_here()
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="livegen-audio-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """The child's heartbeat: its state messages. A child that stops publishing (hung inside
        the audio library, starved, deadlocked) is reported after SILENT_FAULT and replaced after
        SILENT_LOST; one that publishes again after a report is reported as recovered."""
        while not self._closing:
            time.sleep(WATCH_PERIOD)
            if not self._alive():
                continue
            silence = time.monotonic() - self._heard
            if silence > SILENT_LOST:
                self._lost(f"the audio process did not answer for {silence:.1f} s")
            elif silence > SILENT_FAULT and not self._silent:
                self._silent = True
                self._fault(f"The audio process has not answered for {silence * 1000:.0f} ms; it is "
                            f"replaced if it stays silent for {SILENT_LOST:.0f} s.")
            elif silence <= SILENT_FAULT and self._silent:
                self._silent = False
                self._faulted = False
                log.warning("the audio process answers again")
                self._say(self.on_recover, "The audio process answers again.")

    def _fault(self, text: str) -> None:
        self.faults += 1
        self._faulted = True
        log.error("%s", text)
        self._say(self.on_fault, text)

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=child_main, args=(child, dataclasses.asdict(self.settings), self._tempo),
                           name="livegen-audio", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self._epoch += 1
        threading.Thread(target=self._reader, args=(parent, self._epoch), name="livegen-audio-reader",
                         daemon=True).start()
        try:
            info = self._call("hello", timeout=20.0)
        except Exception:
            self._kill()
            raise
        self.ports = list(info.get("ports", []))
        self._faulted = False
        self._silent = False
        self._heard = time.monotonic()
        self._last_stats = dict(self._call("stats"))
        self._state = (int(self._last_stats.get("frames", 0)), time.monotonic())
        self._down = False

    def _reader(self, conn: Any, epoch: int) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "reply":
                with self._reply_cv:
                    self._replies[msg[1]] = msg
                    self._reply_cv.notify_all()
            elif msg[0] == "state":
                if epoch == self._epoch:
                    self._state = (int(msg[1]), float(msg[2]))
                    self._last_stats = msg[3]
                    self._heard = time.monotonic()
            elif msg[0] == "event":
                self._event(msg[1], msg[2], epoch)
        with self._reply_cv:
            self._reply_cv.notify_all()
        if epoch == self._epoch and not self._closing:
            self._lost("the audio process ended")

    def _event(self, kind: str, text: str, epoch: int) -> None:
        if kind == "fault":
            self._fault(text)
        elif kind == "recover":
            self._faulted = False
            self._say(self.on_recover, text)
        elif kind == "abandoned" and epoch == self._epoch:
            self._lost(text)

    def _say(self, hook: Any, text: str) -> None:
        if hook is not None:
            try:
                hook(text)
            except Exception as exc:
                log.info("could not report %r: %s", text, exc)

    def _lost(self, why: str) -> None:
        """The child cannot play any more: kill it and start new ones until one opens the stream.
        Reported as a fault unless the child already reported one (a dead stream says so itself;
        a child that crashed or hung says nothing)."""
        with self._lost_lock:
            if self._down or self._closing:
                return
            self._down = True
        if not self._faulted:  # the one error line (and OSC) for a child that said nothing
            self._fault(f"The audio output was lost ({why}); a new audio process is started when the "
                        "audio server answers.")
        else:  # the child reported the fault itself: say what happens now
            log.error("audio output lost (%s); a new audio process is started every %.0f s", why, RESPAWN_PERIOD)
        if "sounddevice" in sys.modules:  # this process's own PortAudio (the device check) knew the dead server
            from livegen.output.stream_guard import abandon_portaudio

            abandon_portaudio()
        self._last_frame = self.frame_estimate()
        self._last_frame_time = time.monotonic()
        self._kill()
        if self._respawner is None or not self._respawner.is_alive():
            self._respawner = threading.Thread(target=self._respawn, name="livegen-audio-respawn", daemon=True)
            self._respawner.start()

    def _respawn(self) -> None:
        while not self._closing:
            time.sleep(RESPAWN_PERIOD)
            if self._closing:
                return
            if not jack_server_up():
                continue
            try:
                self._spawn()
            except Exception as exc:
                log.info("audio process not started yet: %s", exc)
                continue
            gap = int((time.monotonic() - self._last_frame_time) * self.sample_rate)
            self._state = None
            self._offset = self._last_frame + gap - int(self._call("frame"))
            self.restarts += 1
            try:
                self._call("set_bpm", *self._tempo)
                if self._anchor is not None:
                    self._call("anchor_bar", self._anchor - self._offset)
                for slot, (audio, gain) in list(self._loops.items()):
                    self._call("schedule", slot, audio, True, gain, "now")
            except Exception as exc:
                log.warning("restoring the slots after the audio came back failed: %s", exc)
            log.warning("the audio output is back (audio process restarted)")
            self._say(self.on_recover, "The audio output is back; looping slots play again.")
            return

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(1.0)

    def _alive(self) -> bool:
        return self._conn is not None and not self._down

    def close(self, timeout: float = 1.0) -> None:
        self._closing = True
        proc = self._proc
        if proc is not None and self._alive():
            try:
                self._send(0, "close", (max(0.1, timeout - 0.3),), {})
            except Exception:
                pass
            proc.join(max(0.1, timeout - 0.2))
        self._kill()

    # ------------------------------------------------------------------ calls
    def _send(self, mid: int, name: str, args: tuple, kwargs: dict) -> None:
        conn = self._conn
        if conn is None:
            raise OSError("no audio process")
        with self._lock:
            conn.send((mid, name, args, kwargs))

    def _call(self, name: str, *args: Any, timeout: float = CALL_TIMEOUT, **kwargs: Any) -> Any:
        with self._reply_cv:
            mid = self._next_id
            self._next_id += 1
        self._send(mid, name, args, kwargs)
        deadline = time.monotonic() + timeout
        with self._reply_cv:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._conn is None:
                    raise TimeoutError(f"the audio process did not answer {name}")
                self._reply_cv.wait(min(left, 0.1))
            _, _, ok, value = self._replies.pop(mid)
        if not ok:
            raise RuntimeError(value)
        return value

    def _frames_out(self, value: Any) -> Any:
        return None if value is None else int(value) + self._offset

    # ------------------------------------------------------------------ the player interface
    @property
    def running(self) -> bool:
        return self._alive() and bool(self.stats().get("running"))

    def frame_estimate(self) -> int:
        """The child's frame clock, extrapolated from its last published (frame, time) pair: no
        round trip, so the event loop never waits on the audio process."""
        st = self._state
        if self._alive() and st is not None:
            return st[0] + self._offset + int((time.monotonic() - st[1]) * self.sample_rate)
        return self._last_frame + int((time.monotonic() - self._last_frame_time) * self.sample_rate)

    @property
    def frame(self) -> int:
        return self.frame_estimate()

    @property
    def bpm(self) -> float:
        return self._tempo[0]

    @property
    def origin(self) -> int:
        return self._frames_out(self._call("origin")) if self._alive() else (self._anchor or 0)

    def launch_frame(self, launch: str) -> int:
        return self._frames_out(self._call("launch_frame", launch)) if self._alive() else self.frame

    def schedule(self, slot: int, audio: np.ndarray, loop: bool = False, gain: float = 1.0, launch: str = "bar",
                 sample_rate: int | None = None, at_frame: int | None = None) -> int:
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            from livegen.audio_io import resample

            audio = resample(audio, int(sample_rate), self.sample_rate)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if loop:
            self._loops[int(slot)] = (audio, float(gain))
        else:
            self._loops.pop(int(slot), None)
        if not self._alive():
            return self.frame
        at = None if at_frame is None else int(at_frame) - self._offset
        return self._frames_out(self._call("schedule", slot, audio, loop, gain, launch, None, at))

    def open_stream(self, slot: int, gain: float = 1.0, capacity_frames: int | None = None) -> HostedStreamVoice:
        self._loops.pop(int(slot), None)
        vid = int(self._call("open_stream", slot, gain, capacity_frames)) if self._alive() else -1
        return HostedStreamVoice(self, vid, self._epoch)

    def slot_end_frame(self, slot: int) -> int | None:
        return self._frames_out(self._call("slot_end_frame", slot)) if self._alive() else None

    def stop_slot(self, slot: int | None = None, launch: str = "now") -> None:
        if slot is None:
            self._loops.clear()
        else:
            self._loops.pop(int(slot), None)
        if self._alive():
            self._send(0, "stop_slot", (slot, launch), {})

    def set_gain(self, slot: int, gain: float) -> None:
        if int(slot) in self._loops:
            self._loops[int(slot)] = (self._loops[int(slot)][0], float(gain))
        if self._alive():
            self._send(0, "set_gain", (slot, gain), {})

    def set_bpm(self, bpm: float, beats_per_bar: int | None = None) -> None:
        if not 20.0 <= bpm <= 400.0:
            raise ValueError(f"bpm must be between 20 and 400, not {bpm!r}")
        self._tempo = (float(bpm), int(beats_per_bar) if beats_per_bar is not None else self._tempo[1])
        if self._alive():
            self._send(0, "set_bpm", (bpm, beats_per_bar), {})

    def frame_at(self, t: float) -> int:
        """The frame heard at monotonic time ``t``: the published clock minus the output latency
        (no round trip: the MIDI clock re-anchors from the event loop)."""
        st = self._state
        if not self._alive() or st is None:
            return self.frame
        cb = self._last_stats.get("clock_block")
        if cb:  # the exact clock: a block's first frame and its callback's own time
            return int(cb[0]) + self._offset + int(round((t - float(cb[1]) - float(cb[2])) * self.sample_rate))
        lat = float(self._last_stats.get("latency", 0.0) or 0.0)
        return st[0] + self._offset + int(round((t - st[1] - lat) * self.sample_rate))

    def anchor_bar(self, frame: int) -> None:
        self._anchor = int(frame)
        if self._alive():
            self._send(0, "anchor_bar", (int(frame) - self._offset,), {})

    def stats(self) -> dict[str, Any]:
        """The child's statistics as it last published them (every 40 ms): no round trip."""
        if self._alive() and self._last_stats and not self._faulted:
            st = dict(self._last_stats)
            st["frames"] = int(st.get("frames", 0)) + self._offset
            st["restarts"] = self.restarts
            st["stream_errors"] = max(int(st.get("stream_errors", 0)), self.faults)
            st["backend"] = "rtmixer"
            st["process"] = True
            st["pid"] = getattr(self._proc, "pid", None)  # the audio process (for the log and ps)
            return st
        st = dict(self._last_stats) or {"callbacks": 0, "underflows": 0, "xruns": 0, "last_underflow_time": None,
                                        "slots_playing": [], "slot_levels": {}, "slot_positions": {}}
        st.update(running=False, stalled=True, frames=self.frame, restarts=self.restarts, process=True,
                  pid=getattr(self._proc, "pid", None),
                  stream_errors=max(int(st.get("stream_errors", 0)), self.faults),
                  backend="rtmixer", slots_playing=[], slot_levels={}, slot_positions={})
        return st


def jack_server_up() -> bool:
    """Whether a JACK server answers, asked from another process (``jack_lsp``): a JACK client in
    this process would outlive a dying server badly (libjack's threads). True without jack_lsp."""
    import shutil
    import subprocess

    tool = shutil.which("jack_lsp")
    if tool is None:
        return True
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    try:
        return subprocess.run([tool], env=env, capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def release_portaudio_here() -> None:
    """Terminate this process's own PortAudio (the daemon's device check opened it, and with it a
    JACK client): the stream lives in the child, and a JACK client here would be hit by a dying
    server (libjack's threads) and by Pa_Terminate at exit."""
    sd = sys.modules.get("sounddevice")
    if sd is None:
        return
    while int(getattr(sd, "_initialized", 0)) > 0:
        sd._terminate()


# ---------------------------------------------------------------------------------- the child
def child_main(conn: Any, settings: dict, tempo: tuple[float, int]) -> None:
    """The audio process: an RtPlayer served over ``conn`` until ``close`` or the parent goes."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from livegen.output.rt_player import RtPlayer
    from livegen.settings import AudioSettings, TempoSettings

    send_lock = threading.Lock()

    def push(*msg: Any) -> None:
        with send_lock:
            try:
                conn.send(msg)
            except (OSError, ValueError):
                pass

    player = RtPlayer(AudioSettings(**settings), TempoSettings(bpm=tempo[0], beats_per_bar=tempo[1]))
    player.on_fault = lambda text: push("event", "fault", text)
    player.dead_text = "The audio stream stopped (the audio server went away?); it is reopened when it can be."
    player.on_recover = lambda text: push("event", "recover", text)
    voices: dict[int, Any] = {}
    error: str | None = None
    try:
        player.start()
    except Exception as exc:
        error = f"cannot open the audio output: {exc}"

    def watch_abandon() -> None:
        """A dead stream: this process is given up at once (the parent starts a new one; PortAudio
        cannot reconnect to a restarted JACK server in a process that used the dead one)."""
        while True:
            time.sleep(0.02)
            if player.guard is not None and player.guard.state in ("dead", "reopening", "abandoned"):
                push("event", "abandoned", "the audio stream stopped")
                return

    threading.Thread(target=watch_abandon, daemon=True).start()

    def publish() -> None:
        while True:
            time.sleep(0.04)
            try:
                push("state", player.frame, time.monotonic(), player.stats())
            except Exception:  # the stream is being replaced: next time
                pass

    if error is None:
        threading.Thread(target=publish, daemon=True).start()
    while True:
        try:
            mid, name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            break
        try:
            if name == "hello":
                if error is not None:
                    raise OSError(error)
                value: Any = {"ports": player.ports}
            elif name == "close":
                player.close(float(args[0]))
                push("reply", mid, True, None)
                break
            elif name == "frame":
                value = player.frame
            elif name == "origin":
                value = player.origin
            elif name == "open_stream":
                sv = player.open_stream(*args)
                voices[id(sv)] = sv
                value = id(sv)
            elif name.startswith("sv_"):
                sv = voices.get(args[0])
                if sv is None:
                    value = 0
                elif name == "sv_write":
                    value = sv.write(args[1])
                elif name == "sv_start":
                    value = sv.start(args[1], args[2])
                elif name == "sv_close":
                    value = sv.close()
                elif name == "sv_cancel":
                    value = sv.cancel()
                    voices.pop(args[0], None)
                else:
                    value = getattr(sv, args[1])
            else:
                value = getattr(player, name)(*args, **kwargs)
            if mid:
                push("reply", mid, True, value)
        except Exception as exc:
            if mid:
                push("reply", mid, False, f"{type(exc).__name__}: {exc}")
    os._exit(0)  # never PortAudio's exit handler: after a dead server it can hang or abort


if __name__ == "__main__":  # pragma: no cover - started through multiprocessing
    raise SystemExit("livegen.output.audio_host runs as a child of the daemon (HostedPlayer)")
