#!/usr/bin/env python3
"""A small livegen OSC client: ask for a clip, follow its progress, print where it landed.

    python examples/python/livegen_client.py "warm analog pad" --seed 42 --seconds 8
    python examples/python/livegen_client.py --status

Needs only python-osc (pip install python-osc). The client listens on its own UDP socket; the
daemon answers to the address a request came from (ack, progress, done, error).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket


def message(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def replies(sock: socket.socket, timeout: float):
    """Yield (address, args) for every message that arrives before ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65536)
        except TimeoutError:
            return
        for timed in OscPacket(data).messages:
            yield timed.message.address, timed.message.params


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt", nargs="?", help="what to generate")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--status", action="store_true", help="print the daemon's status and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the clip")
    args = ap.parse_args()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        target = (args.host, args.port)
        if args.status or not args.prompt:
            sock.sendto(message("/livegen/status"), target)
            for address, params in replies(sock, 5.0):
                if address == "/livegen/status":
                    print(json.dumps(json.loads(params[-1]), indent=2))
                    return 0
            print("no answer: is `livegen serve` running?", file=sys.stderr)
            return 1

        request = [args.prompt]
        if args.seed is not None or args.seconds is not None:
            request.append(args.seed if args.seed is not None else -1)
        if args.seconds is not None:
            request.append(float(args.seconds))
        sock.sendto(message("/livegen/generate", *request), target)
        job = None
        for address, params in replies(sock, args.timeout):
            if address == "/livegen/ack" and job is None:
                job = params[0]
                print(f"job {job}: {params[1]}")
            elif address == "/livegen/progress" and params[0] == job:
                print(f"  step {params[1]}/{params[2]}", end="\r", flush=True)
            elif address == "/livegen/done" and params[0] == job:
                where = params[1] or "(played, not written: set folder.path to keep clips)"
                print(f"\ndone: {params[2]:.2f} s -> {where}")
                return 0
            elif address == "/livegen/error":
                print(f"\nerror: {params[-1]}", file=sys.stderr)
                return 1
        print("no result in time", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
