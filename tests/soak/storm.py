"""A request storm of valid commands against a running livegen daemon, with a report.

    python -m tests.soak.storm --port 9000 --seconds 60 --rate 1000 --pid <daemon pid> [--json storm.json]

Packets go to 127.0.0.1 only, at ``--rate`` messages per second, all of them valid: parameter
sets (``/livegen/set``, single-value addresses), gets, status, stops, triggers of slots and
generates (``/livegen/generate`` and, with ``--pad-address``, a mapping rule's pad address),
far more generates than the daemon can render, so the bounded queue coalesces and drops them.
Every value set is harmless (1-3 steps, short clips); the parameters touched are read before the
storm and restored after it.

Measured: messages sent and the rate reached; replies by kind; ``worker.queued`` from a status
probe every ``--status-interval`` seconds (0.1) from a thread of its own, so a slow answer slows
the probes, not the storm (must stay <= ``worker.queue_size``; status latency p50/p99 from the
same probes); the daemon's RSS (``/proc/PID/status`` VmRSS) once a second, its
growth measured from the end of a warm-up (``--warmup`` seconds, default a fifth of the run) to
the end and to the maximum; daemon alive; then a normal request after the storm: its
``/livegen/done`` and the daemon's ``clips_played`` growing (it played). Exit status 0 when the
queue stayed bounded, RSS grew less than ``--rss-limit`` percent (5), every probe was answered
and the request after the storm completed and played.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.soak.osc_fuzz import Peer, _alive, _msg, _percentile, _rss_kb

# parameter -> OSC type tag and the harmless values a storm sets
SETTINGS: dict[str, tuple[str, list[Any]]] = {
    "steps": ("i", [1, 2, 3]),
    "cfg": ("f", [1.0, 1.5, 2.0]),
    "gain": ("f", [0.25, 0.5, 0.75]),
    "seed": ("i", [1, 2, 3, 4]),
    "prompt": ("s", ["storm a", "storm b", "storm c"]),
    "seconds": ("f", [0.05, 0.1]),
}


@dataclass
class StormReport:
    seconds: float = 0.0
    sent: int = 0
    unsent: int = 0
    rate: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    replies: dict[str, int] = field(default_factory=dict)
    probes: int = 0
    probes_answered: int = 0
    status_p50_ms: float = 0.0
    status_p99_ms: float = 0.0
    status_max_ms: float = 0.0
    queue_size: int | None = None
    queued_max: int = 0
    queued_samples: int = 0
    rss_kb: list[tuple[float, int]] = field(default_factory=list)
    warmup_s: float = 0.0
    rss_warm_kb: int | None = None
    rss_end_kb: int | None = None
    rss_max_after_warm_kb: int | None = None
    rss_growth_pct: float | None = None
    rss_max_growth_pct: float | None = None
    rss_limit_pct: float = 5.0
    daemon_alive: bool = True
    after_done: bool = False
    after_seconds: float | None = None
    after_played: bool = False
    worker: dict = field(default_factory=dict)

    @property
    def queue_bounded(self) -> bool:
        return self.queue_size is not None and self.queued_samples > 0 and self.queued_max <= self.queue_size

    @property
    def rss_ok(self) -> bool:
        return self.rss_growth_pct is not None and self.rss_growth_pct < self.rss_limit_pct

    @property
    def ok(self) -> bool:
        return (self.daemon_alive and self.queue_bounded and self.probes_answered == self.probes
                and self.after_done and self.after_played and (self.rss_ok or self.rss_warm_kb is None))

    def text(self) -> str:
        lines = [f"storm: {self.sent} messages in {self.seconds:.1f} s ({self.rate:.0f}/s), "
                 f"{self.unsent} refused by the local socket",
                 "sent by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items())),
                 "replies: " + ", ".join(f"{k} {v}" for k, v in sorted(self.replies.items())),
                 f"status probes: {self.probes_answered}/{self.probes} answered; latency p50 "
                 f"{self.status_p50_ms:.1f} ms, p99 {self.status_p99_ms:.1f} ms, max {self.status_max_ms:.1f} ms",
                 f"queue: max queued {self.queued_max} of queue_size {self.queue_size} over "
                 f"{self.queued_samples} samples: {'bounded' if self.queue_bounded else 'NOT BOUNDED'}",
                 f"worker after the storm: {json.dumps(self.worker)}"]
        if self.rss_warm_kb is not None:
            lines.append(f"RSS after {self.warmup_s:.0f} s warm-up {self.rss_warm_kb / 1024:.1f} MiB, end "
                         f"{self.rss_end_kb / 1024:.1f} MiB ({self.rss_growth_pct:+.2f} %), max "
                         f"{self.rss_max_after_warm_kb / 1024:.1f} MiB ({self.rss_max_growth_pct:+.2f} %); "
                         f"limit {self.rss_limit_pct:g} %: {'held' if self.rss_ok else 'EXCEEDED'}")
        after = f"done in {self.after_seconds:.2f} s" if self.after_done else "NOT done"
        lines.append(f"a normal request after the storm: {after}, played: {self.after_played}")
        lines.append(f"daemon alive: {self.daemon_alive}")
        lines.append("RESULT: " + ("all targets held" if self.ok else "TARGETS MISSED"))
        return "\n".join(lines)


def _status(peer: Peer, port: int, timeout: float = 2.0) -> tuple[dict | None, float]:
    mark = peer.count()
    t0 = time.monotonic()
    peer.send(port, _msg("/livegen/status"))
    got = peer.wait_for("/livegen/status", mark, timeout)
    if got is None:
        return None, timeout
    return json.loads(got.args[-1]), got.at - t0


def _get(peer: Peer, port: int, param: str) -> tuple | None:
    mark = peer.count()
    peer.send(port, _msg("/livegen/get", "s", param))
    got = peer.wait_for("/livegen/get", mark, 5.0)
    return got.args if got is not None else None


def storm_message(rng: random.Random, pad_address: str | None) -> tuple[str, bytes]:
    roll = rng.random()
    if roll < 0.25:
        param = rng.choice(list(SETTINGS))
        tag, values = SETTINGS[param]
        value = rng.choice(values)
        if rng.random() < 0.5:
            return "set", _msg("/livegen/set", "s" + tag, param, value)
        return "set", _msg(f"/livegen/{param}", tag, value)
    if roll < 0.45:
        return "get", _msg("/livegen/get", "s", rng.choice(list(SETTINGS) + ["bpm", "sampler", "model"]))
    if roll < 0.55:
        return "status", _msg("/livegen/status")
    if roll < 0.65:
        return "trigger", _msg("/livegen/trigger", "i", rng.randrange(4))
    if roll < 0.70:
        return "stop", _msg("/livegen/stop", "i", 100 + rng.randrange(4))  # slots nothing plays on
    if pad_address is not None and roll < 0.85:
        return "generate", _msg(pad_address.format(pad=rng.randrange(4)))
    return "generate", _msg("/livegen/generate", "sif", "storm pad", rng.randrange(1000), 0.05)


def _probe_queue(probe: Peer, port: int, pid: int | None, interval: float, stop: threading.Event,
                 report: StormReport, latencies: list[float]) -> None:
    """Status probes every ``interval`` seconds (or right after a slower answer) until ``stop``."""
    next_at = time.monotonic()
    while not stop.is_set():
        report.probes += 1
        st, latency = _status(probe, port)
        if st is not None:
            report.probes_answered += 1
            latencies.append(latency)
            report.queued_samples += 1
            report.queued_max = max(report.queued_max, int(st["worker"].get("queued", 0)))
        elif not _alive(pid):
            stop.set()
            return
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at, time.monotonic())


def run_storm(port: int, seconds: float, rate: float = 1000.0, pid: int | None = None, seed: int = 1,
              status_interval: float = 0.1, warmup: float | None = None, pad_address: str | None = None,
              rss_limit: float = 5.0, out=None) -> StormReport:
    rng = random.Random(seed)
    storm, probe = Peer("storm"), Peer("probe")
    report = StormReport(rss_limit_pct=rss_limit)
    report.warmup_s = seconds / 5 if warmup is None else warmup
    latencies: list[float] = []
    stop = threading.Event()
    prober: threading.Thread | None = None
    try:
        saved = {p: _get(probe, port, p) for p in SETTINGS}
        first, _ = _status(probe, port, 5.0)
        if first is None:
            raise SystemExit(f"the daemon on 127.0.0.1:{port} does not answer /livegen/status")
        report.queue_size = first["worker"].get("queue_size")
        prober = threading.Thread(target=_probe_queue, name="storm-probe", daemon=True,
                                  args=(probe, port, pid, status_interval, stop, report, latencies))
        t0 = time.monotonic()
        prober.start()
        next_rss = t0
        period = 1.0 / rate
        i = 0
        while not stop.is_set():
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            if now >= next_rss:
                rss = _rss_kb(pid)
                if rss is not None:
                    report.rss_kb.append((round(now - t0, 2), rss))
                next_rss += 1.0
            lag = t0 + i * period - now
            if lag > 0:
                time.sleep(lag)
            kind, data = storm_message(rng, pad_address)
            if storm.send(port, data):
                report.sent += 1
                report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
            else:
                report.unsent += 1
            i += 1
            if out is not None and i % 10000 == 0:
                print(f"  {i} messages, {time.monotonic() - t0:.0f} s", file=out, flush=True)
        stop.set()
        prober.join(5.0)
        report.seconds = time.monotonic() - t0
        report.rate = report.sent / report.seconds if report.seconds else 0.0
        rss = _rss_kb(pid)
        if rss is not None:
            report.rss_kb.append((round(report.seconds, 2), rss))
        # the queue drains (renders and drops), then the parameters come back and a normal request runs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st, _ = _status(probe, port)
            if st is not None and st["worker"].get("queued", 0) == 0 and st["worker"].get("running") is None:
                break
            time.sleep(0.2)
        for param, args in saved.items():
            if args is not None and len(args) == 2:
                value = args[1]
                tag = "i" if isinstance(value, int) else "f" if isinstance(value, float) else "s"
                probe.send(port, _msg("/livegen/set", "s" + tag, param, value))
        time.sleep(0.3)
        before, _ = _status(probe, port, 5.0)
        mark = probe.count()
        t_after = time.monotonic()
        probe.send(port, _msg("/livegen/generate", "sif", "after the storm", 7, 0.1))
        done = probe.wait_for("/livegen/done", mark, 60.0)
        report.after_done = done is not None
        if done is not None:
            report.after_seconds = done.at - t_after
        time.sleep(0.5)
        after, _ = _status(probe, port, 5.0)
        if before is not None and after is not None:
            report.after_played = after["clips_played"] > before["clips_played"]
            report.worker = after["worker"]
        with storm.cond:
            for r in storm.replies:
                report.replies[r.address] = report.replies.get(r.address, 0) + 1
    finally:
        stop.set()
        if prober is not None:
            prober.join(5.0)
        storm.close()
        probe.close()
    report.daemon_alive = _alive(pid) and report.probes_answered > 0
    report.rss_end_kb = _rss_kb(pid) or (report.rss_kb[-1][1] if report.rss_kb else None)
    warm = [kb for t, kb in report.rss_kb if t >= report.warmup_s]
    if warm:
        report.rss_warm_kb = warm[0]
        report.rss_end_kb = warm[-1]
        report.rss_max_after_warm_kb = max(warm)
        report.rss_growth_pct = 100.0 * (warm[-1] - warm[0]) / warm[0]
        report.rss_max_growth_pct = 100.0 * (max(warm) - warm[0]) / warm[0]
    if latencies:
        ms = [x * 1000 for x in latencies]
        report.status_p50_ms, report.status_p99_ms = _percentile(ms, 0.5), _percentile(ms, 0.99)
        report.status_max_ms = max(ms)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=9000, help="the daemon's OSC port on 127.0.0.1")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    p.add_argument("--pid", type=int, help="the daemon's PID (alive check, RSS)")
    p.add_argument("--warmup", type=float, help="seconds before the RSS baseline (default: a fifth of the run)")
    p.add_argument("--status-interval", type=float, default=0.1, help="seconds between status probes")
    p.add_argument("--pad-address", help="a mapping rule's generate address with {pad}, e.g. /test/pad/{pad}")
    p.add_argument("--rss-limit", type=float, default=5.0, help="allowed RSS growth after the warm-up, percent")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the report here as JSON")
    a = p.parse_args(argv)
    report = run_storm(a.port, a.seconds, a.rate, a.pid, a.seed, a.status_interval, a.warmup, a.pad_address,
                       a.rss_limit, out=sys.stderr)
    print(report.text())
    if a.json:
        data = asdict(report)
        data.update(ok=report.ok, queue_bounded=report.queue_bounded, rss_ok=report.rss_ok)
        with open(a.json, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
