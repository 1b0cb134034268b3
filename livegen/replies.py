"""Where the daemon's OSC replies and pushes go: the sender, subscribers and the status port.

- a reply to one message goes to its sender (when ``osc.reply``), to every subscriber and to the
  status port (``osc.status_port``), so a patch that listens on another port sees it too;
- ``/livegen/subscribe [port]`` adds a subscriber: at most :data:`livegen.limits.SUBSCRIBERS_MAX`
  (the oldest is dropped), each expiring after :data:`livegen.limits.SUBSCRIPTION_SECONDS` unless
  renewed by subscribing again;
- an ``origin`` is the string a request carries: ``osc:HOST:PORT`` for OSC, ``midi:...`` for MIDI
  (no sender to answer: subscribers and the status port only);
- observers (:attr:`Replies.observers`, e.g. the browser control surface) see every reply
  :meth:`Replies.send` routes, with its origin, whether or not OSC is enabled.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from livegen import limits
from livegen.control import osc_verbs as verbs
from livegen.control.ratelimit import RateLimitedLog

log = logging.getLogger("livegen.daemon")

Target = tuple[str, int]
SendFn = Callable[[Target, str, tuple], None]
ObserverFn = Callable[[str | None, str, tuple], None]  # (origin, address, args)


def parse_origin(origin: str | None) -> Target | None:
    if not origin or not origin.startswith("osc:"):
        return None
    host, _, port = origin[4:].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def osc_origin(sender: Target) -> str:
    return f"osc:{sender[0]}:{sender[1]}"


class Replies:
    """Routes replies; ``send(target, address, args)`` is the OSC server's send (never raises)."""

    def __init__(self, send: SendFn | None, reply_to_sender: bool = True, status_target: Target | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self.reply_to_sender = reply_to_sender
        self.status_target = status_target
        self._clock = clock
        self.subscribers: OrderedDict[Target, float] = OrderedDict()  # target -> expiry time
        # one warning line per origin per 10 s (a flood of bad messages must not flood the log)
        self._errors_log = RateLimitedLog(log, window=10.0)
        self.observers: list[ObserverFn] = []  # see every reply send() routes; must not block

    # ---- subscriptions ------------------------------------------------------------------
    def subscribe(self, target: Target) -> None:
        self.subscribers.pop(target, None)
        self.subscribers[target] = self._clock() + limits.SUBSCRIPTION_SECONDS
        while len(self.subscribers) > limits.SUBSCRIBERS_MAX:
            dropped, _ = self.subscribers.popitem(last=False)
            log.info("subscriber %s:%s dropped: at most %d are kept", dropped[0], dropped[1],
                     limits.SUBSCRIBERS_MAX)

    def _live_subscribers(self) -> list[Target]:
        now = self._clock()
        for target in [t for t, expiry in self.subscribers.items() if expiry < now]:
            del self.subscribers[target]
            log.info("subscription of %s:%s expired (subscribe again to renew)", *target)
        return list(self.subscribers)

    # ---- sending ------------------------------------------------------------------------
    def targets(self, origin: str | None) -> list[Target]:
        out: list[Target] = []
        sender = parse_origin(origin)
        if sender is not None and self.reply_to_sender:
            out.append(sender)
        out.extend(self._live_subscribers())
        if self.status_target is not None:
            out.append(self.status_target)
        return list(dict.fromkeys(out))

    def send(self, origin: str | None, address: str, *args: Any) -> None:
        """To the origin's sender, the subscribers and the status port (and every observer)."""
        for observe in list(self.observers):
            try:
                observe(origin, address, args)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop the replies
                log.warning("a reply observer failed on %s", address, exc_info=True)
        if self._send is None:
            return
        for target in self.targets(origin):
            self._send(target, address, args)

    def push(self, address: str, *args: Any) -> None:
        """To the subscribers and the status port (no sender)."""
        self.send(None, address, *args)

    def to_sender(self, origin: str | None, address: str, *args: Any) -> None:
        """To the sender only (e.g. the answer to a get)."""
        sender = parse_origin(origin)
        if self._send is not None and sender is not None and self.reply_to_sender:
            self._send(sender, address, args)

    def to(self, target: Target, address: str, *args: Any) -> None:
        if self._send is not None:
            self._send(target, address, args)

    # ---- the protocol -------------------------------------------------------------------
    def ack(self, origin: str | None, job: int, text: str) -> None:
        self.send(origin, verbs.ACK, int(job), text)

    def echo(self, origin: str | None, param: str, values: tuple) -> None:
        self.send(origin, verbs.GET, param, *values)

    def error(self, origin: str | None, reason: str, job: int | None = None) -> None:
        self._errors_log.log(logging.WARNING, origin, "error%s to %s: %s",
                             f" (job {job})" if job is not None else "", origin or "subscribers", reason[:300])
        if job is None:
            self.send(origin, verbs.ERROR, reason)
        else:
            self.send(origin, verbs.ERROR, int(job), reason)
