#!/usr/bin/env python3
"""A small livegen OSC client: every address of the daemon, and a listener that prints replies.

    python examples/python/livegen_client.py generate "warm analog pad" --seed 42 --seconds 8
    python examples/python/livegen_client.py set cfg 7          # -> /livegen/get cfg 7.0 (the echo)
    python examples/python/livegen_client.py get steps
    python examples/python/livegen_client.py launch bar         # /livegen/<param> value, also: bank, bpm, ...
    python examples/python/livegen_client.py param seed -1      # any single-value address
    python examples/python/livegen_client.py trigger 0 | stop [slot] | cancel [job] | reroll [slot]
    python examples/python/livegen_client.py status | reload | subscribe [port]
    python examples/python/livegen_client.py listen             # subscribe, print every reply until Ctrl-C

Needs only python-osc (pip install python-osc). The client sends from its own UDP socket and the
daemon answers to that address. Each reply is printed as one line, ``/address arg arg ...``. A
request that queues a job (generate, reroll) waits for that job's /livegen/done or /livegen/error;
every other message waits for its reply (and prints what follows within 0.2 s: setting seconds
also reports bars, which it clears). Exit status: 0 when the answer is not an error, 1
otherwise (or when nothing came back in time).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Iterator

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

ADDR = "/livegen/"
# The single-value addresses /livegen/<param> value.
PARAMS = ("prompt", "negative_prompt", "model", "sampler", "seed", "steps", "cfg", "seconds", "bars",
          "bpm", "beats_per_bar", "gain", "launch", "loop", "priority", "bank")
TEXT_PARAMS = ("prompt", "negative_prompt", "model", "sampler")  # always sent as strings


def message(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def value(text: str, name: str = "") -> int | float | str:
    """A command-line word as OSC sends it: an int, else a float, else a string (always a string
    for the text parameters)."""
    if name in TEXT_PARAMS:
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def replies(sock: socket.socket, timeout: float | None) -> Iterator[tuple[str, list]]:
    """Yield (address, args) for every message that arrives before ``timeout`` seconds pass
    (None: forever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65536)
        except TimeoutError:
            return
        for timed in OscPacket(data).messages:
            yield timed.message.address, list(timed.message.params)


def show(address: str, args: list) -> str:
    if address == ADDR + "status" and args and isinstance(args[-1], str):
        head = " ".join(str(a) for a in args[:-1])
        return f"{address} {head}\n{json.dumps(json.loads(args[-1]), indent=2)}"
    return " ".join([address, *(str(a) for a in args)])


def request(ns: argparse.Namespace) -> tuple[str, list]:
    """The OSC message of a sub-command."""
    cmd = ns.command
    if cmd == "generate":
        args: list = [" ".join(ns.prompt)]
        if ns.seed is not None or ns.seconds is not None:
            args.append(ns.seed if ns.seed is not None else -1)
        if ns.seconds is not None:
            args.append(float(ns.seconds))
        return ADDR + "generate", args
    if cmd == "trigger":
        return ADDR + cmd, [ns.slot]
    if cmd in ("stop", "reroll"):
        return ADDR + cmd, [] if ns.slot is None else [ns.slot]
    if cmd == "cancel":
        return ADDR + cmd, [] if ns.job is None else [ns.job]
    if cmd == "set":
        return ADDR + "set", [ns.name, value(ns.value, ns.name)]
    if cmd == "get":
        return ADDR + "get", [ns.name]
    if cmd == "param":
        return ADDR + ns.name, [value(ns.value, ns.name)]
    if cmd in PARAMS:
        return ADDR + cmd, [value(ns.value, cmd)]
    if cmd == "subscribe":
        return ADDR + cmd, [] if ns.port is None else [ns.port]
    return ADDR + cmd, []  # status, reload


def wait_answer(sock: socket.socket, timeout: float, follow_job: bool) -> int:
    """Print replies until the answer to the message just sent is complete; ``follow_job``: the
    message queues a job (generate, reroll), so wait for that job's done or error."""
    job = None
    for address, args in replies(sock, timeout):
        print(show(address, args), flush=True)
        if follow_job and address == ADDR + "ack" and job is None and args and args[0]:
            job = args[0]  # the queued job: wait for its end
            continue
        if address == ADDR + "progress":
            continue
        if job is None:
            for more in replies(sock, 0.2):  # e.g. the second /livegen/get of a set
                print(show(*more), flush=True)
            return 1 if address == ADDR + "error" else 0
        if address in (ADDR + "done", ADDR + "error") and args and args[0] == job:
            return 0 if address == ADDR + "done" else 1
    print("no answer in time: is `livegen serve` running?", file=sys.stderr)
    return 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000, help="the daemon's OSC port")
    ap.add_argument("--timeout", type=float, help="seconds to wait for the answer (default 600; listen: "
                    "until Ctrl-C)")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="queue a clip and wait for it")
    g.add_argument("prompt", nargs="+", help="what to generate (several words are joined)")
    g.add_argument("--seed", type=int, help="-1: random")
    g.add_argument("--seconds", type=float)
    sub.add_parser("trigger", help="replay a slot's last clip").add_argument("slot", type=int)
    sub.add_parser("stop", help="fade out a slot (all without one)").add_argument("slot", type=int, nargs="?")
    sub.add_parser("cancel", help="cancel a job (all without one)").add_argument("job", type=int, nargs="?")
    sub.add_parser("reroll", help="the slot's last request, new seed").add_argument("slot", type=int, nargs="?")
    s = sub.add_parser("set", help="/livegen/set param value")
    s.add_argument("name")
    s.add_argument("value", help='"" or default restores the default')
    sub.add_parser("get", help="/livegen/get param").add_argument("name")
    p = sub.add_parser("param", help="/livegen/<name> value (a single-value address)")
    p.add_argument("name", choices=PARAMS)
    p.add_argument("value")
    for name in PARAMS:
        sub.add_parser(name, help=f"/livegen/{name} value").add_argument("value")
    sub.add_parser("status", help="the daemon's status")
    sub.add_parser("reload", help="reload the mapping files")
    sub.add_parser("subscribe", help="send pushes to this client").add_argument("port", type=int, nargs="?")
    lst = sub.add_parser("listen", help="subscribe and print every reply and push until Ctrl-C")
    lst.add_argument("--on", type=int, default=0, help="local UDP port to listen on (default: any)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        target = (ns.host, ns.port)
        if ns.command == "listen":
            sock.bind(("0.0.0.0" if ns.host not in ("127.0.0.1", "localhost") else "127.0.0.1", ns.on))
            sock.sendto(message(ADDR + "subscribe"), target)
            try:
                for address, args in replies(sock, ns.timeout):
                    print(show(address, args), flush=True)
            except KeyboardInterrupt:
                pass
            return 0
        address, args = request(ns)
        sock.sendto(message(address, *args), target)
        return wait_answer(sock, 600.0 if ns.timeout is None else ns.timeout,
                           follow_job=ns.command in ("generate", "reroll"))


if __name__ == "__main__":
    sys.exit(main())
