"""Hostile OSC input against a running livegen daemon, with a report.

    python -m tests.soak.osc_fuzz --port 9000 --packets 100000 [--pid PID] [--log daemon.log]

Packets go to 127.0.0.1 only, at ``--rate`` packets per second (1,000 by default: a request
storm), from one UDP socket per class so that every reply can be attributed:

- ``malformed``: undecodable bytes: random bytes, truncated and oversized packets, mutated type
  tags, bundles with negative, zero-length or overlong elements, bundles nested too deep, the
  exact bytes that froze or stalled older daemons. Expected: at most one ``/livegen/error`` per
  second in all (the server's rate limit), never silence for good.
- ``bad``: decodable messages every one of which the daemon must refuse: unknown addresses,
  invalid patterns (``/livegen/[``), reply addresses, wrong argument types and counts, NaN, inf
  and huge numbers, future-dated bundles of those. Expected: exactly one ``/livegen/error`` each.
- ``mutant``: mutations of harmless messages that still decode. Expected: exactly one reply each
  (an error, or the status/ack the message asks for).
- ``valid``: valid commands interleaved (status, stop, a short generate now and then). Expected:
  their replies; every generate finished (``/livegen/done``) or refused.
- ``subscribe``: ``/livegen/subscribe`` with ports 70000, -1 and 70000.0 (the acks of those killed
  the OSC socket once). Expected: nothing breaks; the reply, if any, is an error.
- ``probe``: a ``/livegen/status`` every ``--status-every`` packets, answered within 2 s (the
  socket is alive), its latency measured.

Packets are classified by the daemon's own decoder (:func:`livegen.control.osc_wire.decode`,
itself checked against python-osc), so "decodable" means what the daemon can decode. No daemon
state is changed on purpose: state-changing addresses only get values they must refuse.

The report (printed, and written as JSON with ``--json``) has the packets sent per class, the
replies by class (errors, other replies, silence), daemon and socket alive, status latency
p50/p99, RSS at start and end (``--pid``), the daemon's log growth and its tracebacks
(``--log``), and the daemon's own OSC counters from its last status. The exit status is 0 when
every expectation held.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from livegen.control.osc_wire import MAX_DATAGRAM, MalformedPacket, decode, encode_bundle, encode_message

FREEZE = bytes.fromhex("2362756e646c65000000000000000001fffffffc")
CLASSES = ("malformed", "bad", "mutant", "valid", "subscribe", "probe")


@dataclass
class Reply:
    at: float
    address: str
    args: tuple


class Peer:
    """One UDP socket on 127.0.0.1 and a thread collecting what comes back to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.replies: list[Reply] = []
        self.undecodable = 0
        self.cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name=f"fuzz-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            now = time.monotonic()
            try:
                messages = decode(data)
            except MalformedPacket:
                self.undecodable += 1
                continue
            with self.cond:
                self.replies.extend(Reply(now, m.address, m.args) for m in messages)
                self.cond.notify_all()

    def send(self, port: int, data: bytes) -> bool:
        try:
            self.sock.sendto(data, ("127.0.0.1", port))
        except OSError:  # e.g. a momentarily full send buffer: the packet is not sent (counted)
            return False
        return True

    def wait_for(self, address: str, since: int, timeout: float) -> Reply | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.replies[since:]:
                    if r.address == address:
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def count(self) -> int:
        with self.cond:
            return len(self.replies)

    def close(self) -> None:
        self._closed = True
        self.sock.close()


# ---------------------------------------------------------------------------------------- packets
def _msg(address: str, tags: str = "", *args: Any) -> bytes:
    return encode_message(address, tags, list(args))


def _word(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_-") for _ in range(rng.randrange(1, n)))


def bad_message(rng: random.Random) -> bytes:
    """A decodable message the daemon must refuse with exactly one error."""
    nan, inf = math.nan, math.inf
    choices = [
        lambda: _msg("/livegen/" + "zz" + _word(rng)),
        lambda: _msg("/fuzz/" + _word(rng), "i", rng.randrange(-2**31, 2**31)),
        lambda: _msg(rng.choice(["/livegen/[", "/livegen/{a,", "/livegen/[!]", "/[", "//", "/livegen/]x"])),
        lambda: _msg("/livegen/done", "isf", 1, "x", 2.0),
        lambda: _msg("/livegen/ack", "is", 0, "spoofed"),
        lambda: _msg("/livegen/error", "s", "spoofed"),
        lambda: _msg("/livegen/trigger", "s", "one"),
        lambda: _msg("/livegen/trigger"),
        lambda: _msg("/livegen/trigger", "h", rng.choice([2**62, -(2**63), 2**31])),
        lambda: _msg("/livegen/trigger", "d", rng.choice([nan, inf, -inf, 1e308, 2.5])),
        lambda: _msg("/livegen/cancel", "i", rng.choice([2**31 - 1, 987654321])),
        lambda: _msg("/livegen/steps", "s", "many"),
        lambda: _msg("/livegen/steps", "f", rng.choice([nan, inf, 2.5, -inf])),
        lambda: _msg("/livegen/bpm", rng.choice("fd"), rng.choice([nan, inf, -inf])),
        lambda: _msg("/livegen/cfg", "I"),
        lambda: _msg("/livegen/gain", "s", "loud"),
        lambda: _msg("/livegen/seconds", "N"),
        lambda: _msg("/livegen/set", "si", "volume", 1),
        lambda: _msg("/livegen/set", "s", "steps"),
        lambda: _msg("/livegen/set", "sf", "steps", nan),
        lambda: _msg("/livegen/status", "i", 1),
        lambda: _msg("/livegen/reload", "s", "now"),
        lambda: _msg("/livegen/generate"),
        lambda: _msg("/livegen/generate", "i", 12),
        lambda: _msg("/livegen/generate", "sif", "pad", 1, nan),
        lambda: _msg("/livegen/generate", "sif", "pad", 1, inf),
        lambda: _msg("/livegen/generate", "sf", "pad", 4.5),
        lambda: _msg("/livegen/generate", "sib", "pad", 1, b"\x00" * rng.randrange(1, 64)),
        lambda: _msg("/livegen/subscribe", "s", "me"),
        lambda: _msg("/fuzz/big", "s", "x" * rng.randrange(1000, 60000)),
        lambda: _msg("/fuzz/tags", "i" * 64, *range(64)),
        lambda: _msg("/livegen/" + "x" * 1000),
        lambda: _msg("/livegen/trigger", "c", "q"),
        lambda: _msg("/livegen/trigger", "m", (0, 0x90, 60, 100)),
        lambda: _msg("/livegen/trigger", "t", (1 << 31, 7)),
        lambda: _msg("/livegen/trigger", "r", 0xFFFFFFFF),
    ]
    return rng.choice(choices)()


HARMLESS = [
    _msg("/livegen/status", "i", 5),
    _msg("/livegen/frobnicate", "sif", "pad", 3, 0.5),
    _msg("/fuzz/x", "s", "abcd"),
    _msg("/livegen/trigger", "i", 424242),
    _msg("/livegen/done", "isf", 1, "x", 2.0),
    _msg("/livegen/[", "ff", 1.0, 2.0),
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        if op == 0 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op == 1 and out:  # a type tag replaced by any printable character
            comma = out.find(b",")
            if comma >= 0 and comma + 1 < len(out):
                out[comma + 1 + rng.randrange(max(1, min(4, len(out) - comma - 1)))] = rng.randrange(32, 127)
        elif op == 2:
            del out[rng.randrange(len(out) + 1):]
        elif op == 3:
            out[rng.randrange(len(out) + 1):rng.randrange(len(out) + 1)] = rng.randbytes(rng.randrange(1, 9))
        else:
            out += bytes(rng.randrange(1, 5) * 4)
    return bytes(out)


def malformed_packet(rng: random.Random) -> bytes:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 256))
    if kind == 1:
        return FREEZE
    if kind == 2:  # a type tag of tens of thousands of unknown characters
        n = rng.randrange(65, 65000)
        return _pad(b"/livegen/status") + _pad(b"," + bytes(rng.choice(b"qwxyzQWX") for _ in range(n)))
    if kind == 3:  # zero-length elements
        return b"#bundle\x00" + struct.pack(">Q", 1) + b"\x00" * 4 * rng.randrange(1, 1000)
    if kind == 4:  # negative or overlong element sizes
        size = rng.choice([-4, -1, -(2**31), 2**31 - 1, 4096, 3])
        return b"#bundle\x00" + struct.pack(">Qi", 1, size) + _msg("/livegen/status")
    if kind == 5:  # nested too deep
        packet = _msg("/livegen/status")
        for _ in range(rng.randrange(6, 40)):
            packet = encode_bundle([packet], timetag=rng.randrange(2**64))
        return packet
    if kind == 6:  # truncated
        full = _msg("/livegen/generate", "sif", "warm pad", 42, 8.0)
        return full[:rng.randrange(1, len(full) - 1)]
    if kind == 7:  # oversized: as large as a datagram gets, with no terminator
        return b"/" + b"a" * (MAX_DATAGRAM - 1)
    if kind == 8:  # an unsupported type tag
        return _msg("/livegen/status") [:-4] + _pad(b",i" + bytes([rng.choice(b"qzQ@")])) + bytes(8)
    if kind == 9:  # many elements
        return encode_bundle([_msg("/livegen/status")] * rng.randrange(257, 2700))  # 2,700 fill a datagram
    if kind == 10:  # a blob claiming more bytes than there are
        return _pad(b"/fuzz/b") + _pad(b",b") + struct.pack(">i", rng.choice([-8, 2**31 - 1, 1000]))
    return mutate(rng, rng.choice(HARMLESS))


def _pad(raw: bytes) -> bytes:
    return raw + b"\x00" * (4 - len(raw) % 4)


def _decodes(data: bytes) -> list | None:
    try:
        return decode(data)
    except MalformedPacket:
        return None


# ---------------------------------------------------------------------------------------- report
@dataclass
class ClassReport:
    sent: int = 0
    messages: int = 0  # decodable messages in what was sent
    errors: int = 0
    other: int = 0
    silence: int = 0  # messages (or, for malformed, seconds) without a reply
    ok: bool = True
    note: str = ""


@dataclass
class Report:
    packets: int = 0
    unsent: int = 0  # packets the local socket refused to send (not counted in the classes)
    seconds: float = 0.0
    rate: float = 0.0
    daemon_alive: bool = True
    socket_alive: bool = True
    probes: int = 0
    probes_answered: int = 0
    status_p50_ms: float = 0.0
    status_p99_ms: float = 0.0
    status_max_ms: float = 0.0
    generates: int = 0
    generates_done: int = 0
    rss_start_kb: int | None = None
    rss_end_kb: int | None = None
    log_start_bytes: int | None = None
    log_end_bytes: int | None = None
    tracebacks: int | None = None
    daemon_osc: dict = field(default_factory=dict)
    classes: dict[str, ClassReport] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.daemon_alive and self.socket_alive and all(c.ok for c in self.classes.values())

    def text(self) -> str:
        lines = [f"packets sent: {self.packets} in {self.seconds:.1f} s ({self.rate:.0f}/s); "
                 f"{self.unsent} refused by the local socket",
                 f"daemon alive: {self.daemon_alive}; socket alive: {self.socket_alive} "
                 f"({self.probes_answered}/{self.probes} status probes answered)",
                 f"status latency: p50 {self.status_p50_ms:.1f} ms, p99 {self.status_p99_ms:.1f} ms, "
                 f"max {self.status_max_ms:.1f} ms",
                 f"generates: {self.generates_done}/{self.generates} done"]
        if self.rss_start_kb is not None:
            lines.append(f"RSS: {self.rss_start_kb / 1024:.1f} MiB -> {self.rss_end_kb / 1024:.1f} MiB")
        if self.log_start_bytes is not None:
            lines.append(f"log: {self.log_start_bytes} -> {self.log_end_bytes} bytes "
                         f"(+{self.log_end_bytes - self.log_start_bytes}), tracebacks: {self.tracebacks}")
        lines.append(f"daemon OSC counters: {json.dumps(self.daemon_osc)}")
        lines.append(f"{'class':10} {'sent':>7} {'messages':>8} {'errors':>7} {'other':>7} {'silence':>7}  ok")
        for name, c in self.classes.items():
            lines.append(f"{name:10} {c.sent:7} {c.messages:8} {c.errors:7} {c.other:7} {c.silence:7}  "
                         f"{'yes' if c.ok else 'NO'} {c.note}")
        lines.append("RESULT: " + ("all expectations held" if self.ok else "EXPECTATIONS FAILED"))
        return "\n".join(lines)


def _rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


# ---------------------------------------------------------------------------------------- run
def run_fuzz(port: int, packets: int, rate: float = 1000.0, status_every: int = 500, seed: int = 1,
             pid: int | None = None, log: Path | None = None, generate_every: int = 2000,
             drain: float = 3.0, out=None) -> Report:
    """Send ``packets`` hostile and valid packets to 127.0.0.1:``port`` and report."""
    rng = random.Random(seed)
    peers = {name: Peer(name) for name in CLASSES}
    report = Report(classes={name: ClassReport() for name in CLASSES})
    report.rss_start_kb = _rss_kb(pid)
    report.log_start_bytes = log.stat().st_size if log is not None and log.exists() else None
    log_offset = report.log_start_bytes or 0
    latencies: list[float] = []
    expect_one = {"bad": 0, "mutant": 0}
    t0 = time.monotonic()
    period = 1.0 / rate if rate > 0 else 0.0
    last_status: Reply | None = None
    try:
        for name, data in (("subscribe", _msg("/livegen/subscribe", "i", 70000)),
                           ("subscribe", _msg("/livegen/subscribe", "i", -1)),
                           ("subscribe", _msg("/livegen/subscribe", "f", 70000.0))):
            peers[name].send(port, data)
            report.classes[name].sent += 1
        for i in range(packets):
            if period:
                lag = t0 + i * period - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
            if status_every and i % status_every == 0:
                probe = peers["probe"]
                mark = probe.count()
                sent_at = time.monotonic()
                probe.send(port, _msg("/livegen/status"))
                report.probes += 1
                got = probe.wait_for("/livegen/status", mark, 2.0)
                if got is None:
                    report.socket_alive = False
                    if not _alive(pid):
                        break
                else:
                    report.probes_answered += 1
                    latencies.append(got.at - sent_at)
                    last_status = got
            roll = rng.random()
            if generate_every and i % generate_every == generate_every // 2:
                name, data = "valid", _msg("/livegen/generate", "sif", "fuzz pad", rng.randrange(1000), 0.05)
                report.generates += 1
            elif roll < 0.40:
                name, data = "malformed", malformed_packet(rng)
            elif roll < 0.75:
                name, data = "bad", bad_message(rng)
                if rng.random() < 0.05:  # the same in a (future-dated) bundle
                    data = encode_bundle([data, bad_message(rng)], timetag=rng.choice([1, 2**64 - 1, 2**63]))
            elif roll < 0.95:
                name, data = "mutant", mutate(rng, rng.choice(HARMLESS))
            else:
                name, data = "valid", rng.choice([_msg("/livegen/status"), _msg("/livegen/stop", "i", 99)])
            messages = _decodes(data)
            if name in ("bad", "mutant", "valid") and messages is None:
                name = "malformed"  # e.g. a mutant that no longer decodes
            elif name == "malformed" and messages is not None:
                name = "mutant"
            if not peers[name].send(port, data):
                report.unsent += 1
                continue
            if name in expect_one:
                expect_one[name] += len(messages)
            report.classes[name].sent += 1
            report.classes[name].messages += len(messages or [])
            report.packets += 1
            if out is not None and i and i % 10000 == 0:
                print(f"  {i} packets, {time.monotonic() - t0:.0f} s", file=out, flush=True)
        report.seconds = time.monotonic() - t0
        report.rate = report.packets / report.seconds if report.seconds else 0.0
        # let the replies (and the short generates) arrive
        deadline = time.monotonic() + drain + 30.0
        quiet_since = time.monotonic()
        counts = [p.count() for p in peers.values()]
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now_counts = [p.count() for p in peers.values()]
            if now_counts != counts:
                counts, quiet_since = now_counts, time.monotonic()
            done = sum(r.address == "/livegen/done" for r in peers["valid"].replies)
            if time.monotonic() - quiet_since >= drain and done >= report.generates:
                break
        probe = peers["probe"]
        mark = probe.count()
        sent_at = time.monotonic()
        probe.send(port, _msg("/livegen/status"))
        report.probes += 1
        got = probe.wait_for("/livegen/status", mark, 5.0)
        if got is not None:
            report.probes_answered += 1
            latencies.append(got.at - sent_at)
            last_status = got
        else:
            report.socket_alive = False
    finally:
        for p in peers.values():
            p.close()
    report.daemon_alive = _alive(pid) and report.probes_answered > 0
    report.rss_end_kb = _rss_kb(pid)
    if log is not None and log.exists():
        report.log_end_bytes = log.stat().st_size
        with open(log, "rb") as f:
            f.seek(log_offset)
            report.tracebacks = f.read().count(b"Traceback (most recent call last)")
    if latencies:
        ms = [x * 1000 for x in latencies]
        report.status_p50_ms, report.status_p99_ms = _percentile(ms, 0.5), _percentile(ms, 0.99)
        report.status_max_ms = max(ms)
    if last_status is not None:
        try:
            report.daemon_osc = json.loads(last_status.args[-1]).get("osc", {})
        except (ValueError, IndexError, AttributeError):
            report.daemon_osc = {}
    _judge(report, peers, expect_one)
    return report


def _judge(report: Report, peers: dict[str, Peer], expect_one: dict[str, int]) -> None:
    for name, peer in peers.items():
        c = report.classes[name]
        c.errors = sum(r.address == "/livegen/error" for r in peer.replies)
        c.other = len(peer.replies) - c.errors
    mal = report.classes["malformed"]
    replies = peers["malformed"].replies
    seconds = math.ceil(report.seconds) + 1
    per_second: dict[int, int] = {}
    for r in replies:
        per_second[int(r.at)] = per_second.get(int(r.at), 0) + 1
    mal.silence = max(0, seconds - len(replies))
    mal.ok = mal.other == 0 and max(per_second.values(), default=0) <= 2 and len(replies) <= seconds + 1 and (
        mal.sent == 0 or mal.errors >= 1)
    mal.note = f"(limit: one error per second; {len(replies)} in {report.seconds:.1f} s)"
    bad = report.classes["bad"]
    bad.silence = max(0, expect_one["bad"] - len(peers["bad"].replies))
    bad.ok = bad.errors == expect_one["bad"] and bad.other == 0
    bad.note = f"(expected exactly {expect_one['bad']} errors)"
    mut = report.classes["mutant"]
    mut.silence = max(0, expect_one["mutant"] - len(peers["mutant"].replies))
    mut.ok = len(peers["mutant"].replies) == expect_one["mutant"]
    mut.note = f"(expected exactly one reply for each of {expect_one['mutant']} messages)"
    valid = report.classes["valid"]
    report.generates_done = sum(r.address == "/livegen/done" for r in peers["valid"].replies)
    valid.ok = report.generates_done == report.generates and valid.errors == 0
    valid.note = "(every generate done, no errors)"
    sub = report.classes["subscribe"]
    sub.silence = max(0, sub.sent - len(peers["subscribe"].replies))
    sub.ok = sub.other == 0
    sub.note = "(acks to impossible ports cannot arrive; an error is fine)"
    probe = report.classes["probe"]
    probe.sent = report.probes
    probe.silence = report.probes - report.probes_answered
    probe.ok = report.socket_alive
    probe.note = "(every status probe answered within 2 s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=9000, help="the daemon's OSC port on 127.0.0.1")
    p.add_argument("--packets", type=int, default=100000)
    p.add_argument("--rate", type=float, default=1000.0, help="packets per second (0: as fast as possible)")
    p.add_argument("--status-every", type=int, default=500, help="a status probe every N packets")
    p.add_argument("--generate-every", type=int, default=2000, help="a short generate every N packets")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pid", type=int, help="the daemon's PID (alive check, RSS)")
    p.add_argument("--log", type=Path, help="the daemon's log file (growth, tracebacks)")
    p.add_argument("--json", type=Path, help="write the report here as JSON")
    a = p.parse_args(argv)
    report = run_fuzz(a.port, a.packets, a.rate, a.status_every, a.seed, a.pid, a.log, a.generate_every,
                      out=sys.stderr)
    print(report.text())
    if a.json is not None:
        data = asdict(report)
        data["ok"] = report.ok
        data["host"] = os.uname().nodename
        a.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
