"""aalink or LinkPython-extern? Measures both against a third Link peer, on one machine.

    ip netns add lglink; ip -n lglink link set lo up
    ip netns exec lglink .venv/bin/python -m bench.link_choice [--seconds 12] [--json out.json]
    ip netns del lglink

Link multicasts on every IPv4 interface, so this refuses to run unless the only network
interface is ``lo`` (a network namespace of its own, as above).

A reference peer (LinkPython-extern, its own process) holds the session: 120 bpm, then 133 at
1/3 of the run and 97.5 at 2/3. Each candidate (one process per library) joins, and every 10 ms
predicts the time of the next bar line (quantum 4) on CLOCK_MONOTONIC_RAW, the way the daemon
would; the reference does the same with ``timeAtBeat``. Measured per library:

- ``bar_error_us``: the candidate's prediction minus the reference's, for samples taken at the
  same moment (within 5 ms) at a steady tempo (>= 100 ms after a change): what a bar line is off
  by against the other peer (median |e|, p99 |e|, max |e|);
- ``jitter_us``: the spread of one library's successive predictions of the same bar line at a
  steady tempo (standard deviation, max - min): how much a re-anchoring would wobble;
- ``follow_ms``: from the reference's tempo commit to the candidate reading the new tempo;
- ``call_us``: the cost of one prediction (median), on the calling thread (holding the GIL);
- ``clock_offset_us``: the library's clock minus CLOCK_MONOTONIC_RAW and minus time.monotonic();
- aalink only, ``sync_late_ms``: how late ``await link.sync(1)`` resumes after the beat (the
  asyncio way of "doing something on the beat").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

QUANTUM = 4.0
TEMPI = (120.0, 133.0, 97.5)

REFERENCE = r"""
import json, sys, time, link
seconds = float(sys.argv[1]); tempi = json.loads(sys.argv[2]); q = float(sys.argv[3])
L = link.Link(tempi[0]); L.enabled = True
deadline = time.monotonic() + 10
while L.numPeers() < 1 and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"ready": time.clock_gettime(time.CLOCK_MONOTONIC_RAW), "peers": L.numPeers()}), flush=True)
c = L.clock(); t0 = time.monotonic(); samples = []; changes = []; k = 1
while time.monotonic() - t0 < seconds:
    if k < len(tempi) and time.monotonic() - t0 >= k * seconds / len(tempi):
        s = L.captureAppSessionState(); s.setTempo(tempi[k], c.micros()); L.commitAppSessionState(s)
        changes.append((c.micros() / 1e6, tempi[k])); k += 1
    now = c.micros(); s = L.captureAppSessionState()
    bar = (s.beatAtTime(now, q) // q + 1) * q
    samples.append((now / 1e6, s.timeAtBeat(bar, q) / 1e6, s.tempo()))
    time.sleep(0.01)
L.enabled = False
print(json.dumps({"samples": samples, "changes": changes}), flush=True)
"""

CANDIDATE_LINK = r"""
import json, sys, time, link
seconds = float(sys.argv[1]); q = float(sys.argv[2])
L = link.Link(100.0); L.enabled = True; c = L.clock()
while L.numPeers() < 1:
    time.sleep(0.005)
offsets = []
for _ in range(200):
    a = time.clock_gettime(time.CLOCK_MONOTONIC_RAW); m = time.monotonic(); us = c.micros()
    offsets.append((us / 1e6 - a, us / 1e6 - m))
t0 = time.monotonic(); samples = []; costs = []
while time.monotonic() - t0 < seconds:
    p0 = time.perf_counter()
    now = c.micros(); s = L.captureAppSessionState()
    bar = (s.beatAtTime(now, q) // q + 1) * q
    t = s.timeAtBeat(bar, q) / 1e6
    costs.append(time.perf_counter() - p0)
    samples.append((now / 1e6, t, s.tempo(), bar))
    time.sleep(0.01)
L.enabled = False
print(json.dumps({"samples": samples, "costs": costs, "offsets": offsets}), flush=True)
"""

CANDIDATE_AALINK = r"""
import asyncio, json, sys, time, aalink
seconds = float(sys.argv[1]); q = float(sys.argv[2])
async def main():
    L = aalink.Link(100.0); L.enabled = True; L.quantum = q
    while L.num_peers < 1:
        await asyncio.sleep(0.005)
    offsets = []
    for _ in range(200):
        a = time.clock_gettime(time.CLOCK_MONOTONIC_RAW); m = time.monotonic(); us = L.time.total_seconds()
        offsets.append((us - a, us - m))
    t0 = time.monotonic(); samples = []; costs = []; late = []
    async def on_beats():
        while True:
            b = await L.sync(1)
            now = L.time.total_seconds(); beat = L.beat
            late.append((beat - b) * 60.0 / L.tempo)  # how far past the beat we resumed
    task = asyncio.ensure_future(on_beats())
    while time.monotonic() - t0 < seconds:
        p0 = time.perf_counter()
        now = L.time.total_seconds(); beat = L.beat; tempo = L.tempo  # three captures: no atomic state
        bar = (beat // q + 1) * q
        t = now + (bar - beat) * 60.0 / tempo
        costs.append(time.perf_counter() - p0)
        samples.append((now, t, tempo, bar))
        await asyncio.sleep(0.01)
    task.cancel()
    L.enabled = False
    print(json.dumps({"samples": samples, "costs": costs, "offsets": offsets, "late": late}), flush=True)
asyncio.run(main())
"""


def only_loopback() -> bool:
    return sorted(os.listdir("/sys/class/net")) == ["lo"]


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


def wrap(err: float, bar: float) -> float:
    """An error modulo one bar, in (-bar/2, bar/2] (peers' beat numbers differ; bar lines agree)."""
    return (err + bar / 2) % bar - bar / 2


def analyse(ref: dict, cand: dict, name: str) -> dict:
    changes = [c[0] for c in ref["changes"]]
    rs = ref["samples"]
    steady = []
    for now, t, tempo, _bar in cand["samples"]:
        if any(0 <= now - c < 0.1 for c in changes):
            continue
        near = min(rs, key=lambda r: abs(r[0] - now))
        if abs(near[0] - now) > 0.005 or abs(near[2] - tempo) > 0.01:
            continue
        steady.append(wrap(t - near[1], QUANTUM * 60.0 / tempo) * 1e6)
    # jitter: successive predictions of one bar line (same bar number, same tempo)
    groups: dict[tuple[float, float], list[float]] = {}
    for now, t, tempo, bar in cand["samples"]:
        if not any(0 <= now - c < 0.1 for c in changes):
            groups.setdefault((bar, round(tempo, 3)), []).append(t * 1e6)
    spreads = [statistics.pstdev(g) for g in groups.values() if len(g) > 5]
    ranges = [max(g) - min(g) for g in groups.values() if len(g) > 5]
    follow = []
    for c, bpm in ref["changes"]:
        seen = [now for now, _t, tempo, _b in cand["samples"] if now >= c and abs(tempo - bpm) < 0.01]
        if seen:
            follow.append((seen[0] - c) * 1e3)
    absolute = [abs(e) for e in steady]
    out = {
        "library": name,
        "samples_compared": len(steady),
        "bar_error_us": {"median_abs": pct(absolute, 50), "p99_abs": pct(absolute, 99), "max_abs": max(absolute)},
        "jitter_us": {"stdev_median": statistics.median(spreads), "range_max": max(ranges)},
        "follow_ms": follow,
        "call_us": statistics.median(cand["costs"]) * 1e6,
        "clock_offset_us": {"vs_monotonic_raw": statistics.median(o[0] for o in cand["offsets"]) * 1e6,
                            "vs_time_monotonic": statistics.median(o[1] for o in cand["offsets"]) * 1e6},
    }
    if "late" in cand:
        late = [x * 1e3 for x in cand["late"]]
        out["sync_late_ms"] = {"median": pct(late, 50), "max": max(late), "n": len(late)}
    return out


def run_pair(code: str, name: str, seconds: float) -> dict:
    py = sys.executable
    ref = subprocess.Popen([py, "-c", REFERENCE, str(seconds + 1.0), json.dumps(TEMPI), str(QUANTUM)],
                           stdout=subprocess.PIPE, text=True)
    cand = subprocess.Popen([py, "-c", code, str(seconds), str(QUANTUM)], stdout=subprocess.PIPE, text=True)
    try:
        json.loads(ref.stdout.readline())
        c_out, _ = cand.communicate(timeout=seconds + 30)
        r_out, _ = ref.communicate(timeout=seconds + 30)
    finally:
        for p in (ref, cand):
            if p.poll() is None:
                p.kill()
                p.wait()
    return analyse(json.loads(r_out.strip().splitlines()[-1]), json.loads(c_out.strip().splitlines()[-1]), name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if not only_loopback():
        print("refusing to run: Link multicasts on every interface; run this inside a network namespace "
              "that has only lo (see the module docstring)", file=sys.stderr)
        return 2
    results = [run_pair(CANDIDATE_LINK, "LinkPython-extern", a.seconds),
               run_pair(CANDIDATE_AALINK, "aalink", a.seconds)]
    for r in results:
        print(json.dumps(r, indent=1))
    if a.json is not None:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
