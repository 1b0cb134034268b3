"""`livegen send HOST:PORT /address args... [--types sif] [--wait-reply S | --no-wait] [--until-done]`.

A small OSC client for the daemon. Argument types are inferred (whole numbers -> int, other
numbers -> float, the rest -> string) unless ``--types`` gives one tag per argument (i, f, d, s, T,
F). The message goes out from a socket of its own, and the daemon answers every message on it:
``send`` prints each reply on a line of its own and stops at the first final one (``/livegen/ack``,
``/livegen/get``, ``/livegen/status``, ``/livegen/ready``, ``/livegen/done`` or ``/livegen/error``).
With ``--until-done`` an ack of a job is not final: the progress of that job is printed until its
done or error. Exit code 0 after ack/get/status/ready/done, 1 after an error reply or when nothing
answers within the wait (5 s unless ``--wait-reply S``; ``--no-wait`` sends and exits 0 at once).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import dataclass

from pythonosc.osc_message import OscMessage
from pythonosc.osc_packet import OscPacket, ParseError

from livegen.cli import UsageError
from livegen.control.osc import build_message

DEFAULT_WAIT = 5.0  # seconds for the first reply
DONE_WAIT = 600.0  # --until-done: seconds of silence allowed after the ack, unless --wait-reply is given
ACK, GET, STATUS, READY, DONE, ERROR = (f"/livegen/{n}" for n in ("ack", "get", "status", "ready", "done", "error"))
FINAL = (ACK, GET, STATUS, READY, DONE, ERROR)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="send one OSC message and print the daemon's replies")
    p.add_argument("target", help="HOST:PORT of the daemon, e.g. 127.0.0.1:9000")
    p.add_argument("address", help="OSC address, e.g. /livegen/generate")
    p.add_argument("args", nargs="*", help="arguments (types inferred unless --types)")
    p.add_argument("--types", help="one type tag per argument: i f d s T F (e.g. sif)")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--wait-reply", type=float, default=None, metavar="S",
                      help=f"wait up to S seconds for a reply (default {DEFAULT_WAIT:g}; with --until-done also "
                           "the longest silence allowed after the ack)")
    wait.add_argument("--no-wait", action="store_true", help="send and exit 0 without listening for replies")
    p.add_argument("--until-done", action="store_true",
                   help="after an ack of a job, keep printing its progress until its done or error")
    p.set_defaults(func=run)


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"the target must be HOST:PORT (e.g. 127.0.0.1:9000), not {text}")
    return host.strip("[]"), int(port)


def infer(arg: str) -> int | float | str:
    try:
        return int(arg)
    except ValueError:
        pass
    try:
        value = float(arg)
    except ValueError:
        return arg
    return value if value == value and abs(value) != float("inf") else arg


def format_message(msg: OscMessage) -> str:
    return " ".join([msg.address] + [repr(a) if isinstance(a, str) else str(a) for a in msg.params])


@dataclass
class Outcome:
    code: int  # the exit code
    message: str | None = None  # for stderr


def _job_of(msg: OscMessage) -> int | None:
    params = list(msg.params)
    return params[0] if params and isinstance(params[0], int) and not isinstance(params[0], bool) else None


def _error_text(msg: OscMessage) -> str:
    texts = [p for p in msg.params if isinstance(p, str)]
    return texts[-1] if texts else "no reason given"


def listen(sock: socket.socket, where: str, wait: float, until_done: bool, done_wait: float) -> Outcome:
    """Print replies until a final one (see the module docstring); the exit code and a sentence."""
    deadline = time.monotonic() + wait
    job: int | None = None  # --until-done: the acknowledged job being followed
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if job is not None:
                return Outcome(1, f"no done or error for job {job} from {where} within {done_wait:g} s of its "
                                  "last reply.")
            return Outcome(1, f"no reply from {where} within {wait:g} s: is `livegen serve` running there?")
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65536)
        except TimeoutError:
            continue
        except ConnectionRefusedError:  # the host answered "port unreachable"
            return Outcome(1, f"nothing listens on {where} (connection refused): is `livegen serve` running there?")
        try:
            messages = [m.message for m in OscPacket(data).messages]
        except ParseError:
            print(f"(a reply that is not OSC: {len(data)} bytes)", flush=True)
            continue
        for msg in messages:
            print(format_message(msg), flush=True)
            if job is not None:
                deadline = time.monotonic() + done_wait
                if msg.address in (DONE, ERROR) and _job_of(msg) in (job, None if msg.address == ERROR else job):
                    if msg.address == ERROR:
                        return Outcome(1, f"job {job} failed: {_error_text(msg)}")
                    return Outcome(0)
                continue
            if msg.address not in FINAL:
                continue
            if msg.address == ERROR:
                return Outcome(1, f"{where} answered with an error: {_error_text(msg)}")
            acked = _job_of(msg) if msg.address == ACK else None
            if until_done and acked:  # job 0: an action without a job, nothing to wait for
                job = acked
                deadline = time.monotonic() + done_wait
                continue
            return Outcome(0)


def run(args: argparse.Namespace) -> int:
    host, port = parse_target(args.target)
    if not args.address.startswith("/"):
        raise UsageError(f"an OSC address starts with '/', not {args.address}")
    if args.wait_reply is not None and args.wait_reply < 0:
        raise UsageError(f"--wait-reply must not be negative, got {args.wait_reply:g}")
    if args.until_done and (args.no_wait or args.wait_reply == 0):
        raise UsageError("--until-done needs to listen for replies; drop --no-wait (or --wait-reply 0)")
    values = list(args.args) if args.types else [infer(a) for a in args.args]
    try:
        data = build_message(args.address, values, types=args.types)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve the host {host} ({exc.strerror})") from None
    where = f"{host}:{port}"
    no_wait = args.no_wait or args.wait_reply == 0
    wait = DEFAULT_WAIT if args.wait_reply is None else args.wait_reply
    done_wait = DONE_WAIT if args.wait_reply is None else args.wait_reply
    with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(data, info[4])
        except OSError as exc:
            raise UsageError(f"cannot send to {where} ({exc.strerror or exc})") from None
        if no_wait:
            return 0
        outcome = listen(sock, where, wait, args.until_done, done_wait)
    if outcome.message:
        print(f"livegen send: {outcome.message}", file=sys.stderr)
    return outcome.code
