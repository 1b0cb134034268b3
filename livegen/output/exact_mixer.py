"""rtmixer with an exact stream clock and the master safety: :class:`ExactMixer`.

``livegen/output/_rtclock.c`` (built by setup.py as a plain shared library, loaded here with
cffi.dlopen) is the PortAudio callback; it calls rtmixer's own compiled callback with the block's
times set to (first frame of the block) / rate and then clamps the block as the Python mixer's
master safety does. So :attr:`ExactMixer.time` is in frames: a start time of ``F / rate`` lands on
frame ``F`` exactly, on any host API (PortAudio's JACK host stamps blocks with an estimate of now,
which put launches a few frames off), and nothing above full scale leaves the callback.

Without the built library (no C compiler at install, an unsupported platform)
:func:`available` is False and the player opens a plain ``rtmixer.Mixer``; :func:`unavailable_reason`
says why (the status shows ``audio.clock``).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np

CDEF = """
typedef double PaTime;
typedef struct PaStreamCallbackTimeInfo {
    PaTime inputBufferAdcTime; PaTime currentTime; PaTime outputBufferDacTime;
} PaStreamCallbackTimeInfo;
struct lg_clock {
    void *inner; void *inner_state; int32_t channels; double samplerate; float ceiling;
    int64_t frames; int64_t callbacks; uint32_t seq; int64_t block_frame; double block_mono;
    double latency; int64_t clipped_blocks; int64_t non_finite_blocks;
};
size_t lg_clock_size(void);
int lg_callback(const void *, void *, unsigned long, const PaStreamCallbackTimeInfo *, unsigned long, void *);
int64_t lg_clock_frames(const struct lg_clock *);
int lg_clock_read(const struct lg_clock *, int64_t *, double *, double *);
void lg_clock_counters(const struct lg_clock *, int64_t *, int64_t *, int64_t *);
"""

_loaded: tuple[Any, Any] | None = None
_error: str | None = None


def _load() -> tuple[Any, Any] | None:
    global _loaded, _error
    if _loaded is not None or _error is not None:
        return _loaded
    try:
        import cffi

        spec = importlib.util.find_spec("livegen.output._rtclock")
        if spec is None or not spec.origin:
            raise OSError("livegen/output/_rtclock.c was not built (no C compiler when livegen was installed?)")
        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        lib = ffi.dlopen(spec.origin)
        if int(lib.lg_clock_size()) != ffi.sizeof("struct lg_clock"):
            raise OSError("the built _rtclock library does not match exact_mixer.CDEF (rebuild livegen)")
        _loaded = (ffi, lib)
    except (ImportError, OSError, AttributeError) as exc:
        _error = str(exc)
    return _loaded


def available() -> bool:
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _error


try:  # a core dependency; without it (a broken install) only the offline driver below works
    from rtmixer import Mixer as _MixerBase
except ImportError:  # pragma: no cover - rtmixer is installed with livegen
    _MixerBase = object  # type: ignore[assignment,misc]


class ExactClock:
    """The clock struct and its reads; shared by :class:`ExactMixer` and the offline driver."""

    def __init__(self, rtmixer_state: Any, channels: int, samplerate: float, ceiling: float | None) -> None:
        loaded = _load()
        if loaded is None:
            raise OSError(unavailable_reason())
        from _rtmixer import ffi as rffi
        from _rtmixer import lib as rlib

        self.ffi, self.lib = loaded
        ffi = self.ffi
        self.struct = ffi.new("struct lg_clock*")
        self.struct.inner = ffi.cast("void*", int(rffi.cast("uintptr_t", rffi.addressof(rlib, "callback"))))
        self.struct.inner_state = ffi.cast("void*", int(rffi.cast("uintptr_t", rtmixer_state)))
        self.struct.channels = int(channels)
        self.struct.samplerate = float(samplerate)
        self.struct.ceiling = float(ceiling) if ceiling else 0.0
        self._frame = ffi.new("int64_t*")
        self._mono = ffi.new("double*")
        self._lat = ffi.new("double*")
        self._counts = [ffi.new("int64_t*") for _ in range(3)]
        self.callback = self.lib.lg_callback

    def frames(self) -> int:
        """The first frame of the next block (frames the finished callbacks rendered)."""
        return int(self.lib.lg_clock_frames(self.struct))

    def block(self) -> tuple[int, float, float] | None:
        """The latest block's (first frame, monotonic time of its callback, output latency)."""
        if not self.lib.lg_clock_read(self.struct, self._frame, self._mono, self._lat):
            return None
        return int(self._frame[0]), float(self._mono[0]), float(self._lat[0])

    def counters(self) -> dict[str, int]:
        c, k, n = self._counts
        self.lib.lg_clock_counters(self.struct, c, k, n)
        return {"callbacks": int(c[0]), "clipped_blocks": int(k[0]), "non_finite_blocks": int(n[0])}


class ExactMixer(_MixerBase):  # type: ignore[misc,valid-type]
    """An ``rtmixer.Mixer`` whose stream runs ``lg_callback`` (see the module doc).

    ``time`` is the first frame of the next block / rate, less the output latency: the player's
    "now" (its launch arithmetic adds the latency back), so its frames are the stream's own."""

    exact = True

    def __init__(self, qsize: int = 16, ceiling: float | None = 1.0, **kwargs: Any) -> None:
        import rtmixer
        import sounddevice as sd
        from _rtmixer import ffi as rffi

        self._action_q = rtmixer.RingBuffer(rffi.sizeof("struct action*"), qsize)
        self._result_q = rtmixer.RingBuffer(rffi.sizeof("struct action*"), qsize)
        self._state = rffi.new("struct state*", dict(
            input_channels=0, output_channels=0, samplerate=0, action_q=self._action_q._ptr,
            result_q=self._result_q._ptr, actions=rffi.NULL))
        self._clock = ExactClock(self._state, 1, 1.0, ceiling)
        sd._StreamBase.__init__(self, kind="output", dtype="float32", callback=self._clock.callback,
                                userdata=self._clock.struct, **kwargs)
        self._state.samplerate = self.samplerate
        self._state.output_channels = self.channels
        self._clock.struct.samplerate = float(self.samplerate)
        self._clock.struct.channels = int(self.channels)
        self._actions: dict[Any, Any] = {}
        self._temp_action_ptr = rffi.new("struct action**")

    @property
    def time(self) -> float:  # noqa: D102 - see the class doc
        return self._clock.frames() / self.samplerate - float(self.latency)

    def block_clock(self) -> tuple[int, float, float] | None:
        """The latest block's (first frame, monotonic time of its callback, output latency)."""
        return self._clock.block()

    def counters(self) -> dict[str, int]:
        return self._clock.counters()


class OfflineExactMixer:
    """:class:`~livegen.output.rt_voices.OfflineMixer` through ``lg_callback`` (tests): the same
    clock and master safety as the device path, driven block by block without a device."""

    def __init__(self, channels: int, samplerate: int, blocksize: int = 256, qsize: int = 1024,
                 ceiling: float | None = 1.0) -> None:
        from livegen.output.rt_voices import OfflineMixer

        self._inner = OfflineMixer(channels, samplerate, blocksize, qsize)
        self._clock = ExactClock(self._inner._state, channels, float(samplerate), ceiling)
        self._ti = self._clock.ffi.new("PaStreamCallbackTimeInfo*")
        self.underflow_next = False

    def __getattr__(self, name: str) -> Any:  # the queue, the action table, latency, channels...
        return getattr(self._inner, name)

    exact = True

    @property
    def time(self) -> float:
        return self._clock.frames() / self._inner.samplerate - float(self._inner.latency)

    def block_clock(self) -> tuple[int, float, float] | None:
        return self._clock.block()

    def counters(self) -> dict[str, int]:
        return self._clock.counters()

    def render(self, n: int | None = None) -> np.ndarray:
        """The next ``n`` frames; PortAudio's own block time is a wrong one on purpose (the wall
        clock), which the exact clock must not use."""
        n = int(n or self._inner.blocksize)
        out = np.zeros((n, self._inner.channels), dtype=np.float32)
        wall = time.monotonic()
        self._ti.inputBufferAdcTime = self._ti.currentTime = wall
        self._ti.outputBufferDacTime = wall + 0.01
        flags = 4 if self.underflow_next else 0
        self.underflow_next = False
        rc = self._clock.callback(self._clock.ffi.NULL, self._clock.ffi.from_buffer(out), n, self._ti, flags,
                                  self._clock.struct)
        if rc != 0:
            raise RuntimeError(f"the rtmixer callback returned {rc}")
        self._inner.frames += n
        self._inner.blocks += 1
        return out
