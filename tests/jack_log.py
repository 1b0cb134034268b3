"""Who lost a JACK cycle: the real-time tests' xruns read from the JACK server's own log.

A JACK xrun is server-wide: every client's xrun callback fires (PortAudio flags it to its stream
as an underflow), whoever was late. On the shared 2-core VM the tests run on, cycles are lost with
nothing of ours running: an idle `jackd -d dummy` with only the C client `jack_rec` recording
`system:capture_*` logged 2 lost cycles in 30 s ("jackrec was not finished, state = Running" and
"state = Triggered", "JackTimedDriver::Process XRun = 42 usec"), and a recorder in a process of its
own with nothing else to do was the late client of 4 cycles in 10 s. A test that failed on any
xrun would be failing on the machine.

The server says which client was late, and in what state, cycle by cycle (each lost cycle's
lines end with "ProcessGraphAsyncMaster: Process error"). A lost cycle is the daemon's fault when
exactly one client overran it, that client is one of the daemon's, and it was **running its
callback** ("was not finished, state = Running", or "finished after current callback"). Signs of
a stall of the machine instead: a client that was signalled but never got to run ("state =
Triggered"), callbacks of two clients overrunning the same cycle, a driver that woke too late
("JackTimedDriver::Process XRun"). A stall also catches clients in the middle of their callbacks
in the cycles around it, so the log is written with the monotonic time of each line (CI pipes
jackd's output through ``python3 tests/jack_log.py``) and a cycle within ``STALL_WINDOW`` of a
sign of a stall is the machine's too. Those lost cycles are printed with every report, never
counted against the daemon. Without times in the log, only the cycle itself is looked at.

Where the server's log is not known (``LIVEGEN_JACK_LOG`` unset: a developer's own server), a
test falls back to counting every xrun its recorder saw, strictly. To get the log with times:
``jackd -d dummy -r 44100 -p 256 2>&1 | python3 tests/jack_log.py > jackd.log``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

LOG_ENV = "LIVEGEN_JACK_LOG"

_NOT_FINISHED = re.compile(r"client = (?P<client>.+?) was not finished, state = (?P<state>\w+)")
_LATE_FINISH = re.compile(r"client (?P<client>.+?) finished after current callback")
_DRIVER = re.compile(r"JackTimedDriver::Process XRun")


@dataclass
class XrunReport:
    """The lost cycles of one window, from the server's log (``known``) or only counted."""

    known: bool
    ours: list[str] = field(default_factory=list)  # log lines: one of the daemon's clients overran its callback
    machine: list[str] = field(default_factory=list)  # log lines: lost for a reason outside the daemon
    counted: int = 0  # xruns the test's recorder saw (its xrun callback)

    @property
    def daemon_xruns(self) -> int:
        """Xruns charged to the daemon: from the log where known, else every one counted."""
        return len(self.ours) if self.known else self.counted

    def __str__(self) -> str:
        if not self.known:
            return f"{self.counted} JACK xruns counted (no server log: {LOG_ENV} unset, all charged to the daemon)"
        return (f"{self.counted} JACK xruns counted; the server's log: {len(self.ours)} line(s) naming a daemon "
                f"client that overran its callback {self.ours}, {len(self.machine)} line(s) outside the daemon "
                f"{self.machine}")


STALL_WINDOW = 0.25  # s: 43 periods of 256 frames at 44.1 kHz; stalls here come in bursts
_END_OF_CYCLE = "Process error"


def _parse(line: str) -> tuple[float | None, str]:
    head, _, rest = line.strip().partition(" ")
    try:
        return float(head), rest
    except ValueError:
        return None, line.strip()


def classify(lines: list[str], daemon_clients: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(ours, machine): the xrun lines of a server log, in their order, split as the module doc says."""
    cycles: list[list[tuple[float | None, str, str, str]]] = []  # per lost cycle: (time, line, client, state)
    current: list[tuple[float | None, str, str, str]] = []
    for raw in lines:
        t, line = _parse(raw)
        if m := _NOT_FINISHED.search(line):
            current.append((t, raw.strip(), m["client"], m["state"]))
        elif m := _LATE_FINISH.search(line):
            current.append((t, raw.strip(), m["client"], "Running"))
        elif _DRIVER.search(line):
            if current:
                cycles.append(current)
                current = []
            cycles.append([(t, raw.strip(), "", "Driver")])
        elif _END_OF_CYCLE in line and current:
            cycles.append(current)
            current = []
    if current:
        cycles.append(current)
    verdicts = []  # (time, its lines, the daemon's?, a sign of a stall?)
    for cycle in cycles:
        overran = [c for c in cycle if c[3] == "Running"]
        stalled = any(c[3] in ("Triggered", "Driver") for c in cycle) or len({c[2] for c in overran}) > 1
        mine = not stalled and len(overran) == 1 and _is_daemon(overran[0][2], daemon_clients)
        times = [c[0] for c in cycle if c[0] is not None]
        verdicts.append((min(times) if times else None, [c[1] for c in cycle], mine, stalled))
    stalls = [t for t, _, _, stalled in verdicts if stalled and t is not None]
    ours, machine = [], []
    for t, cycle_lines, mine, _ in verdicts:
        if mine and t is not None and any(abs(t - s) <= STALL_WINDOW for s in stalls):
            mine = False  # caught in a burst of stalls of the machine
        (ours if mine else machine).extend(cycle_lines)
    return ours, machine


def _is_daemon(client: str, daemon_clients: tuple[str, ...]) -> bool:
    return any(client == name or client.startswith(name + "-") for name in daemon_clients)


class JackLog:
    """The JACK server's log file (``LIVEGEN_JACK_LOG``; CI writes jackd's output there)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        path = path if path is not None else os.environ.get(LOG_ENV) or None
        self.path = Path(path) if path else None
        if self.path is not None and not self.path.is_file():
            raise AssertionError(f"{LOG_ENV}={self.path}: no such file (the JACK server's log)")

    @property
    def known(self) -> bool:
        return self.path is not None

    def mark(self) -> int:
        return self.path.stat().st_size if self.path is not None else 0

    def since(self, mark: int, daemon_clients: tuple[str, ...], counted: int) -> XrunReport:
        """The report for the window that began at ``mark``; ``counted``: the recorder's xruns."""
        if self.path is None:
            return XrunReport(known=False, counted=counted)
        time.sleep(0.1)  # the server writes its lines from its own threads
        with open(self.path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        ours, machine = classify(text.splitlines(), daemon_clients)
        return XrunReport(known=True, ours=ours, machine=machine, counted=counted)


def stamp(inp, out) -> None:
    """Copy ``inp`` to ``out``, each line prefixed with the monotonic time it arrived."""
    for line in inp:
        out.write(f"{time.monotonic():.6f} {line}")
        out.flush()


if __name__ == "__main__":
    import sys

    stamp(sys.stdin, sys.stdout)
