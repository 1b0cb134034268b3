"""The daemon (``python -m livegen serve``) on a JACK server: trigger-to-first-frame and dropouts.

The benchmark starts the real daemon as a user would, with the Stable Audio small checkpoint of
the run (full size with random weights; ``--smoke``: a tiny one), OSC in, MIDI in over JACK MIDI
and audio out through PortAudio on the JACK server that is running (CI: ``jackd -d dummy``).
A JACK client in this process records the daemon's output ports:

* **latency**: the time from sending a trigger (OSC ``/livegen/generate`` on localhost; MIDI
  note-on through a JACK MIDI port) to the JACK cycle in which the first non-silent frame of the
  daemon's output reaches our recorder, i.e. leaves the daemon's callback (resolution: one
  period). "uncached": a fresh prompt/seed, so the figure includes the generation itself.
  "cached": a pad mapped to a fixed prompt whose variations the daemon pre-renders in idle time
  (only when the daemon reports a pre-render cache; otherwise left out, with the reason).
* **dropouts**: JACK xruns seen by the recorder and the daemon's own underflow counters while
  requests are generated back to back for ``continuous_seconds``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIATIONS = 2  # pre-rendered variations the daemon keeps per fixed-prompt pad
LOUD = 1e-6  # a frame whose magnitude exceeds this is sound (the daemon outputs exact zeros when idle)


def jack_running() -> tuple[bool, str]:
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    try:
        out = subprocess.run(["jack_lsp"], capture_output=True, text=True, env=env, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"JACK tools unavailable ({exc})"
    if out.returncode != 0:
        return False, "no JACK server is running (start bin/livegen-jack-dummy)"
    try:
        import jack  # noqa: F401
    except Exception as exc:  # ImportError or a missing libjack
        return False, f"the JACK-Client package is unavailable ({exc})"
    return True, "ok"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Osc:
    """A UDP socket that sends OSC and collects every message sent to it."""

    def __init__(self) -> None:
        from pythonosc.osc_packet import OscPacket

        self._packet = OscPacket
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[tuple[str, list[Any]]] = []
        self.arrived: list[float] = []  # time.perf_counter() at which each message came
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data, _ = self.sock.recvfrom(65536)
            except OSError:
                return
            try:
                msgs = [(m.message.address, list(m.message.params)) for m in self._packet(data).messages]
            except Exception:  # noqa: BLE001 - ignore garbage
                continue
            now = time.perf_counter()
            with self._cond:
                self.messages.extend(msgs)
                self.arrived.extend([now] * len(msgs))
                self._cond.notify_all()

    def send(self, port: int, address: str, *args: Any) -> None:
        from livegen.control.osc import build_message

        self.sock.sendto(build_message(address, args), ("127.0.0.1", port))

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def wait(self, address: str, since: int = 0, timeout: float = 60.0,
             where: Callable[[list[Any]], bool] | None = None) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for addr, params in self.messages[since:]:
                    if addr == address and (where is None or where(params)):
                        return params
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {address} within {timeout} s")
                self._cond.wait(left)

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class OnsetRecorder:
    """A JACK client on the daemon's output ports: first loud cycle after ``arm()``, xruns."""

    def __init__(self, name: str = "lgbench_rec", channels: int = 2) -> None:
        import jack

        self.client = jack.Client(name, no_start_server=True)
        self.rate = self.client.samplerate
        self.period = self.client.blocksize
        self.inports = [self.client.inports.register(f"in_{i}") for i in range(channels)]
        self.armed = False
        self.onset: float | None = None
        self._onset_seen = threading.Event()
        self.last_loud = 0.0
        self.counting = False
        self.xruns = 0
        self.shut_down: str | None = None
        self.registered: dict[str, float] = {}  # PortAudio output port -> when it appeared
        self.uuids: dict[str, int] = {}
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.set_port_registration_callback(self._port_registered)
        self.client.set_shutdown_callback(self._shutdown)
        self.client.activate()

    def _shutdown(self, status, reason: str) -> None:
        self.shut_down = f"JACK shut the recorder down: {reason}"
        self._onset_seen.set()

    def _port_registered(self, port, register: bool) -> None:
        # PortAudio's client, or the daemon's audio.client_name (livegen); out_0/out_1 are renamed
        # out_L/out_R right after they appear: resolved by uuid in ports_near
        if port.name.startswith(("PortAudio", "livegen")) and port.is_output and port.is_audio:
            if register:
                self.registered[port.name] = time.monotonic()
                self.uuids[port.name] = port.uuid
            else:
                self.registered.pop(port.name, None)

    def ports_near(self, when: float, before: float = 3.0) -> list[str]:
        """Output ports of the PortAudio client that appeared last before ``when`` (the daemon
        opens its stream just before announcing it is ready). PortAudio calls every client
        "PortAudio", "PortAudio-01", ...: another one appearing within 50 ms makes it ambiguous."""
        clients: dict[str, float] = {}
        for port, t in list(self.registered.items()):
            if when - before <= t <= when:
                name = port.split(":", 1)[0]
                clients[name] = max(t, clients.get(name, t))
        if not clients:
            return []
        order = sorted(clients, key=clients.get, reverse=True)
        if len(order) > 1 and clients[order[0]] - clients[order[1]] < 0.05:
            raise RuntimeError(f"several PortAudio clients started with the daemon, cannot tell its ports: {order}")
        now = {q.uuid: q.name for q in self.client.get_ports(is_output=True, is_audio=True)}
        return sorted(now.get(self.uuids.get(p), p) for p in self.registered if p.split(":", 1)[0] == order[0])

    def connect(self, ports: list[str]) -> None:
        for src, dst in zip(ports, self.inports, strict=True):
            self.client.connect(src, dst)

    def _process(self, frames: int) -> None:
        now = time.perf_counter()
        loud = any(float(np.max(np.abs(p.get_array()))) > LOUD for p in self.inports)
        if loud:
            self.last_loud = now
            if self.armed and self.onset is None:
                self.onset = now
                self._onset_seen.set()

    def _xrun(self, delay: float) -> None:
        if self.counting:
            self.xruns += 1

    def arm(self) -> None:
        self.onset = None
        self._onset_seen.clear()
        self.armed = True

    def wait_onset(self, timeout: float) -> float:
        self._onset_seen.wait(timeout)
        self.armed = False
        if self.shut_down:
            raise RuntimeError(self.shut_down)
        if self.onset is None:
            raise TimeoutError(f"no sound within {timeout} s of the trigger")
        return self.onset

    def wait_quiet(self, quiet: float = 0.3, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.perf_counter() - self.last_loud < quiet:
            if self.shut_down:
                raise RuntimeError(self.shut_down)
            if time.monotonic() > deadline:
                raise TimeoutError("the daemon's output did not fall silent")
            time.sleep(0.02)

    def close(self, timeout: float = 10.0) -> None:
        """Deactivate and close (in a thread: a client JACK has zombified can block there)."""

        def close() -> None:
            try:
                self.client.deactivate()
                self.client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

        t = threading.Thread(target=close, daemon=True)
        t.start()
        t.join(timeout)


@dataclass
class Plan:
    seconds: float  # clip length
    steps: int
    uncached: int  # uncached triggers
    cached: int  # cached pad presses
    continuous_seconds: float
    load_timeout: float
    generate_timeout: float
    stream: bool = True  # audio.stream: uncached requests play while generated (False: when complete)
    tile_latents: int | None = None  # audio.stream_tile_latents (None: the daemon's default)
    engine: str = "stable-audio"  # or "musicgen" (``--model musicgen``: steps do not apply)
    burst_seconds: float | None = None  # audio.stream_burst_seconds (MusicGen; None: the default)


MAPPING = """\
name: bench
params:
  seconds: {seconds}
{steps}  launch: now
midi:
  - note: 60
    action: generate
    prompt: "fixed bench pad"
"""


def _settings(path: Path, model: Path, t5: Path, osc_port: int, status_port: int, midi_name: str,
              mapping: Path, plan: Plan) -> None:
    if plan.engine == "musicgen":
        entry = ["    engine: musicgen", f"    path: {model}", f"    seconds: {plan.seconds}"]
    else:
        entry = ["    engine: stable-audio", f"    path: {model}", f"    t5: {t5}", f"    seconds: {plan.seconds}",
                 f"    steps: {plan.steps}"]
    path.write_text("\n".join([
        "models:", "  default:", *entry,
        "osc:", f"  port: {osc_port}", f"  status_port: {status_port}",
        "midi:", "  enabled: true", f"  port_name: {midi_name}", "  api: jack",
        "audio:", "  enabled: true", f"  stream: {'true' if plan.stream else 'false'}",
        *([f"  stream_tile_latents: {plan.tile_latents}"] if plan.tile_latents else []),
        *([f"  stream_burst_seconds: {plan.burst_seconds}"] if plan.burst_seconds else []),
        "engine:", f"  warmup_seconds: [{plan.seconds}]", f"  max_seconds: {max(plan.seconds, 1.0)}",
        # the pre-render cache only for the cached pad presses (it keeps the worker busy when idle)
        "prerender:", f"  enabled: {'true' if plan.cached else 'false'}", f"  variations: {VARIATIONS}",
        f"mappings: [{mapping}]",
    ]) + "\n")


def _status(osc: Osc, port: int) -> dict[str, Any]:
    mark = osc.mark()
    osc.send(port, "/livegen/status")
    return json.loads(osc.wait("/livegen/status", mark, timeout=20)[-1])


def _prerender_ready(status: dict[str, Any]) -> int | None:
    """Clips the daemon reports ready in its pre-render cache (None: it reports no such cache)."""
    pre = status.get("prerender")
    if not isinstance(pre, dict) or "memory_clips" not in pre:
        return None
    return int(pre["memory_clips"]) + int(pre.get("disk_clips", 0))


def _wait_idle(osc: Osc, port: int, timeout: float) -> None:
    """Until the daemon's worker has nothing running or queued and its pre-render cache (if any)
    holds what it wants."""
    deadline = time.monotonic() + timeout
    while True:
        st = _status(osc, port)
        w = st.get("worker", {})
        pre = st.get("prerender") or {}
        busy = w.get("running") is not None or int(w.get("queued", 0)) > 0
        if not busy and (_prerender_ready(st) is None or _prerender_ready(st) >= VARIATIONS * int(pre.get("targets", 0))):
            time.sleep(1.0)  # the idle task may be about to submit the next pre-render
            st = _status(osc, port)
            w = st.get("worker", {})
            if w.get("running") is None and int(w.get("queued", 0)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not become idle within {timeout} s: {st}")
        time.sleep(0.5)


def run(model: Path, t5: Path, cache: Path, workdir: Path, plan: Plan, log: Callable[[str], None],
        threads: int | None = None) -> dict[str, Any]:
    """Start the daemon, measure, stop it. Returns the figures (seconds; see the module doc)."""
    import mido

    workdir.mkdir(parents=True, exist_ok=True)
    mapping = workdir / "bench-mapping.yaml"
    steps = f"  steps: {plan.steps}\n" if plan.engine != "musicgen" else ""
    mapping.write_text(MAPPING.format(seconds=plan.seconds, steps=steps))
    status_osc, osc = Osc(), Osc()
    port = _free_port()
    midi_name = f"lgbench{os.getpid()}"
    config = workdir / "livegen.yaml"
    _settings(config, model, t5, port, status_osc.port, midi_name, mapping, plan)
    env = dict(os.environ, JACK_NO_START_SERVER="1", PYTHONUNBUFFERED="1", LIVEGEN_CACHE=str(cache),
               PYTHONPATH=str(ROOT))
    if threads is not None:
        env["LIVEGEN_CPU_THREADS"] = str(threads)
    daemon_log = workdir / "daemon.log"
    # The MIDI output (python-rtmidi on JACK) is opened before the recorder's JACK client exists and
    # closed after it is gone: python-rtmidi keeps the GIL while it waits for the JACK server, and
    # registering or removing a port makes the server wait for this process's recorder callbacks,
    # which need the GIL (a deadlock seen once when the port was opened mid-run).
    be = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
    out_client, out_port = f"lgbench_out{os.getpid()}", "midi_out"
    midi_out = be.open_output(out_port, virtual=True, client_name=out_client)
    rec = OnsetRecorder()  # before the daemon starts: it watches for the daemon's ports appearing
    t_start = time.perf_counter()
    with open(daemon_log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "livegen", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    result: dict[str, Any] = {"clip_seconds": plan.seconds, "steps": plan.steps}
    try:
        try:
            status_osc.wait("/livegen/ready", timeout=plan.load_timeout)
        except TimeoutError:
            tail = daemon_log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the daemon did not get ready (exit code {proc.poll()}):\n{tail}") from None
        result["ready_seconds"] = time.perf_counter() - t_start
        ready_at = time.monotonic()
        time.sleep(0.3)  # JACK delivers the registration callbacks asynchronously
        deadline = ready_at + 20
        while len(new := rec.ports_near(ready_at)) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon's PortAudio output ports did not appear (found: {new}); "
                                   f"its audio status: {_status(osc, port).get('audio')}")
            time.sleep(0.1)
        result["ports"] = new[:2]
        rec.connect(new[:2])
        result["jack"] = {"rate": rec.rate, "period": rec.period, "period_seconds": rec.period / rec.rate}
        log(f"  daemon ready in {result['ready_seconds']:.1f} s; JACK {rec.rate} Hz, period {rec.period}")
        time.sleep(0.5)  # a fresh stream may flag an underflow while it settles
        rec.wait_quiet()

        # The daemon pre-renders the fixed pad's variations as soon as it is idle; let it finish so
        # that the uncached triggers measure a generation on an otherwise idle daemon.
        _wait_idle(osc, port, plan.generate_timeout * 3)
        # -- uncached: fresh prompt and seed each time (the generation is part of the latency)
        uncached: list[float] = []
        rendered: list[float] = []
        for i in range(plan.uncached):
            rec.wait_quiet()
            mark = osc.mark()
            rec.arm()
            t0 = time.perf_counter()
            osc.send(port, "/livegen/generate", f"bench uncached {i}", 1000 + i)
            try:
                onset = rec.wait_onset(plan.generate_timeout)
            except TimeoutError as exc:
                raise RuntimeError(f"{exc}; ports {new}; daemon status {_status(osc, port)}") from None
            uncached.append(onset - t0)
            job = osc.wait("/livegen/ack", mark, timeout=10)[0]
            osc.wait("/livegen/done", mark, timeout=plan.generate_timeout, where=lambda p, job=job: p[0] == job)
            with osc._cond:  # when the clip was complete: its done reply (no folder output here)
                at = next(osc.arrived[k] for k in range(mark, len(osc.messages))
                          if osc.messages[k][0] == "/livegen/done" and osc.messages[k][1][0] == job)
            rendered.append(at - t0)
            log(f"  uncached trigger {i + 1}/{plan.uncached}: first frame after {onset - t0:.3f} s "
                f"(clip complete after {at - t0:.3f} s)")
        result["uncached"] = {"samples": uncached, "median": statistics.median(uncached) if uncached else None,
                              "stream": plan.stream, "complete_after": rendered,
                              "first_sound_minus_complete": [a - b for a, b in zip(uncached, rendered, strict=True)]}
        result["streaming"] = _status(osc, port).get("streaming")
        if plan.cached == 0 and plan.continuous_seconds <= 0:
            return result

        # -- cached: a pad with a fixed prompt, pre-rendered by the daemon in idle time
        sources = rec.client.get_ports(f"{out_client}.*:{out_port}", is_midi=True, is_output=True)
        if not sources:
            raise RuntimeError(f"the bench's JACK MIDI output {out_client}:{out_port} is missing")
        rec.client.connect(sources[0], f"{midi_name}:midi_in")
        status = _status(osc, port)
        ready = _prerender_ready(status)
        if ready is None:
            result["cached"] = {"samples": [], "median": None, "not_measured":
                                "the daemon's status reports no pre-render cache (prerender not wired yet)"}
        else:
            cached: list[float] = []
            from_cache: list[bool] = []
            for i in range(plan.cached):
                wait_until = time.monotonic() + plan.generate_timeout * 3
                while (_prerender_ready(_status(osc, port)) or 0) < 1:
                    if time.monotonic() > wait_until:
                        raise RuntimeError("the pre-render cache did not fill")
                    time.sleep(0.5)
                rec.wait_quiet()
                hits = int(_status(osc, port)["prerender"].get("hits", 0))
                rec.arm()
                t0 = time.perf_counter()
                midi_out.send(mido.Message("note_on", note=60, velocity=100))
                onset = rec.wait_onset(plan.generate_timeout)
                midi_out.send(mido.Message("note_off", note=60, velocity=0))
                served = int(_status(osc, port)["prerender"].get("hits", 0)) > hits
                cached.append(onset - t0)
                from_cache.append(served)
                log(f"  cached pad {i + 1}/{plan.cached}: first frame after {1e3 * (onset - t0):.1f} ms"
                    f"{'' if served else ' (NOT served from the cache)'}")
            result["cached"] = {"samples": cached, "median": statistics.median(cached) if cached else None,
                                "served_from_cache": from_cache}
            if cached:
                result["cached"]["periods"] = result["cached"]["median"] / result["jack"]["period_seconds"]

        # -- continuous generation: requests back to back, count xruns and underflows
        rec.wait_quiet()
        before_status = _status(osc, port)
        rec.counting = True
        t_end = time.monotonic() + plan.continuous_seconds
        done = 0
        i = 0
        while time.monotonic() < t_end or done == 0:
            mark = osc.mark()
            osc.send(port, "/livegen/generate", f"bench continuous {i}", 5000 + i)
            job = osc.wait("/livegen/ack", mark, timeout=10)[0]
            osc.wait("/livegen/done", mark, timeout=plan.generate_timeout, where=lambda p, job=job: p[0] == job)
            done += 1
            i += 1
        time.sleep(plan.seconds + 0.5)  # let the last clip play out
        rec.counting = False
        after_status = _status(osc, port)
        result["continuous"] = {
            "seconds": plan.continuous_seconds,
            "clips_generated": done,
            "jack_xruns": rec.xruns,
            "underflows": int(after_status.get("underflows", 0)) - int(before_status.get("underflows", 0)),
            "underflows_after_start": int(after_status.get("underflows_after_start", 0))
            - int(before_status.get("underflows_after_start", 0)),
            "clips_played": int(after_status.get("clips_played", 0)) - int(before_status.get("clips_played", 0)),
            "note": "JACK xruns are server-wide: other JACK clients on the same server count too",
        }
        log(f"  continuous {plan.continuous_seconds:.0f} s: {done} clips, {rec.xruns} xruns, "
            f"{result['continuous']['underflows']} underflows")
        return result
    finally:
        if proc.poll() is None:  # stop the daemon first, whatever happened here
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        rec.close()
        midi_out.close()  # after the recorder's client is gone (see above)
        status_osc.close()
        osc.close()


def compare_streaming(model: Path, t5: Path, cache: Path, workdir: Path, plan: Plan,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Uncached trigger -> first sound with ``audio.stream`` on and off (two daemons, one after the
    other, the same clips). The first trigger of each daemon is left out of the medians: a daemon's
    first stream measures its model's decoding rate over 4 tiles before it starts (later streams
    start on the first tile), and the first buffered clip pays the same one-time costs. Each
    trigger also notes when the clip was complete (its ``done`` reply): first sound minus that is
    the figure that does not depend on how loaded the machine was during either daemon's run
    (buffered: one period or so after; streamed: before, by up to the decode time)."""
    out: dict[str, Any] = {"clip_seconds": plan.seconds, "steps": plan.steps}
    for stream in (True, False):
        name = "streamed" if stream else "buffered"
        log(f"daemon, {name}:")
        p = Plan(**{**plan.__dict__, "stream": stream, "cached": 0, "continuous_seconds": 0.0})
        r = run(model, t5, cache, workdir / name, p, log)
        warm = r["uncached"]["samples"][1:] or r["uncached"]["samples"]
        ahead = r["uncached"]["first_sound_minus_complete"]
        out[name] = {"samples": r["uncached"]["samples"], "median_warm": statistics.median(warm),
                     "complete_after": r["uncached"]["complete_after"],
                     "first_sound_minus_complete": ahead,
                     "median_first_sound_minus_complete": statistics.median(ahead[1:] or ahead),
                     "streaming": r.get("streaming"), "jack": r.get("jack")}
    out["ratio"] = out["streamed"]["median_warm"] / out["buffered"]["median_warm"]
    return out


def batch_first_audio(model: Path, t5: Path, plan: Plan, repeats: int) -> dict[str, Any]:
    """``generate_stream``'s first audio for the same clip in this process (bench.streaming),
    after the daemons are gone: the figure issue 11's streaming target is a ratio of."""
    import livegen  # noqa: F401  (the optimised BLAS before anything imports mlx.core)
    from bench.streaming import musicgen_first_audio, stable_audio_first_audio
    from livegen.models.stable_audio import StableAudioPipeline

    if plan.engine == "musicgen":
        from livegen.models.musicgen import MusicGenPipeline
        from livegen.settings import AudioSettings

        burst = plan.burst_seconds or AudioSettings().stream_burst_seconds
        return musicgen_first_audio(MusicGenPipeline.from_pretrained(str(model)), plan.seconds, burst,
                                    max(1, repeats), print)

    pipe = StableAudioPipeline.from_pretrained(str(model), t5=str(t5))
    return stable_audio_first_audio(pipe, plan.seconds, plan.steps, plan.tile_latents or 16, max(1, repeats), print)


def build_musicgen(work: Path, smoke: bool) -> Path:
    """MusicGen small's real configuration (``--smoke``: the tests' tiny one) with random weights,
    saved as a checkpoint directory the daemon loads as a user's (built once per workdir)."""
    from bench.musicgen import write_checkpoint

    directory = work / ("musicgen-tiny" if smoke else "musicgen")
    if not (directory / "config.json").is_file():
        write_checkpoint(smoke, directory)
        print(f"  built MusicGen {'tiny' if smoke else 'small'} with random weights in {directory}")
    return directory


def main(argv: list[str] | None = None) -> int:
    """``python bench/daemon_latency.py --compare-streaming [--smoke]``: see :func:`compare_streaming`."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare-streaming", action="store_true", required=True)
    ap.add_argument("--smoke", action="store_true", help="a tiny random checkpoint instead of the full size")
    ap.add_argument("--model", choices=("stable-audio", "musicgen"), default="stable-audio",
                    help="Stable Audio small (default) or MusicGen small, full size with random weights")
    ap.add_argument("--burst-seconds", type=float, default=None, help="audio.stream_burst_seconds (MusicGen)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/livegen-daemon-latency"))
    ap.add_argument("--seconds", type=float, default=None, help="clip length (default 4; smoke 0.45)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default 8; smoke 2)")
    ap.add_argument("--repeats", type=int, default=3, help="uncached triggers per daemon after the first")
    ap.add_argument("--tile-latents", type=int, default=None, help="audio.stream_tile_latents")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--no-batch", action="store_true", help="leave out the batch generate_stream first audio")
    args = ap.parse_args(argv)
    ok, why = jack_running()
    if not ok:
        print(f"not measured: {why}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    work = args.workdir
    if args.model == "musicgen":
        model, t5 = build_musicgen(work, args.smoke), work
        seconds, steps, timeout = args.seconds or (0.5 if args.smoke else 3.0), 0, 300.0 if args.smoke else 900.0
    elif args.smoke:
        from tests.reference.sa_checkpoint import build_tiny_stable_audio

        info = build_tiny_stable_audio(work / "model", "small", sample_size=22528)
        model, t5 = Path(info["checkpoint_dir"]), Path(info["t5_dir"])
        seconds, steps, timeout = args.seconds or 0.45, args.steps or 2, 300.0
    else:
        model, t5 = work / "sa-small" / "stable-audio", work / "sa-small" / "t5-base"
        if not (model / "model.safetensors").is_file():
            from bench import stable_audio as sa

            sa.build("small", sa.Sizes(False), work, pipeline=True, log=print)
        seconds, steps, timeout = args.seconds or 4.0, args.steps or 8, 900.0
    plan = Plan(seconds=seconds, steps=steps, uncached=args.repeats + 1, cached=0, continuous_seconds=0.0,
                load_timeout=timeout, generate_timeout=timeout, tile_latents=args.tile_latents, engine=args.model,
                burst_seconds=args.burst_seconds)
    cache = Path(os.environ.get("LIVEGEN_CACHE", str(work / "cache")))
    res = compare_streaming(model, t5, cache, work, plan, print)
    if not args.no_batch:  # the yardstick, in the same run: batch generate_stream's first audio
        res["batch"] = batch_first_audio(model, t5, plan, args.repeats)
        res["streamed_over_batch"] = res["streamed"]["median_warm"] / res["batch"]["median_first_audio_s"]
        print(f"batch generate_stream first audio (median of {args.repeats}): "
              f"{res['batch']['median_first_audio_s']:.3f} s; streamed daemon / batch: {res['streamed_over_batch']:.2f}x")
    print(json.dumps(res, indent=1))
    what = "MusicGen" if args.model == "musicgen" else f"{steps} steps"
    print(f"uncached trigger -> first sound, {seconds:g} s clip, {what} (medians without each daemon's "
          f"first trigger): streamed {res['streamed']['median_warm']:.3f} s, buffered "
          f"{res['buffered']['median_warm']:.3f} s ({res['ratio']:.2f}x); first sound minus clip complete: "
          f"streamed {res['streamed']['median_first_sound_minus_complete']:+.3f} s, buffered "
          f"{res['buffered']['median_first_sound_minus_complete']:+.3f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
