"""`livegen send HOST:PORT /address args... [--types sif] [--wait-reply S]`: a small OSC client.

Argument types are inferred (whole numbers -> int, other numbers -> float, the rest -> string)
unless ``--types`` gives one tag per argument (i, f, d, s, T, F). With ``--wait-reply`` the
command listens on its own socket for the daemon's replies and prints them, one per line, until
``/livegen/done``, ``/livegen/status`` or ``/livegen/error`` arrives or S seconds pass. The exit
code is 1 after an error reply or when nothing came back, else 0.
"""

from __future__ import annotations

import argparse
import socket
import time

from pythonosc.osc_message import OscMessage
from pythonosc.osc_packet import OscPacket, ParseError

from livegen.cli import UsageError
from livegen.control.osc import build_message

FINAL = ("/livegen/done", "/livegen/error", "/livegen/status")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="send one OSC message (and print the replies)")
    p.add_argument("target", help="HOST:PORT of the daemon, e.g. 127.0.0.1:9000")
    p.add_argument("address", help="OSC address, e.g. /livegen/generate")
    p.add_argument("args", nargs="*", help="arguments (types inferred unless --types)")
    p.add_argument("--types", help="one type tag per argument: i f d s T F (e.g. sif)")
    p.add_argument("--wait-reply", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for replies and print them")
    p.set_defaults(func=run)


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"target must be HOST:PORT (e.g. 127.0.0.1:9000), not {text!r}")
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


def run(args: argparse.Namespace) -> int:
    host, port = parse_target(args.target)
    if not args.address.startswith("/"):
        raise UsageError(f"an OSC address starts with '/', not {args.address!r}")
    values = list(args.args) if args.types else [infer(a) for a in args.args]
    try:
        data = build_message(args.address, values, types=args.types)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {host!r}: {exc}") from exc
    with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
        sock.sendto(data, info[4])
        if args.wait_reply <= 0:
            return 0
        deadline = time.monotonic() + args.wait_reply
        received = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                reply, _ = sock.recvfrom(65536)
            except TimeoutError:
                break
            except ConnectionRefusedError:
                print(f"livegen send: nothing listens on {host}:{port}")
                return 1
            try:
                messages = [m.message for m in OscPacket(reply).messages]
            except ParseError as exc:
                print(f"(unparsable reply: {exc})")
                continue
            for msg in messages:
                received += 1
                print(format_message(msg), flush=True)
                if msg.address == "/livegen/error":
                    return 1
                if msg.address in FINAL:
                    return 0
        if not received:
            print(f"livegen send: no reply within {args.wait_reply:g} s")
            return 1
        return 0
