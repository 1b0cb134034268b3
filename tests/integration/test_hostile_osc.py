"""Hostile OSC against the real daemon: the exact bytes that froze it, killed its socket or
flooded its log, then a reduced run of the fuzzer (tests/soak/osc_fuzz.py) at 1,000 packets/s.

Afterwards the daemon must answer status, finish a normal generate, have written less than 1 MB
of log, and have answered every decodable bad message with exactly one error."""

from __future__ import annotations

import time

import pytest

from tests.control.test_osc_wire import FREEZE, stall_message, zero_elements
from tests.integration.conftest import OscClient
from tests.soak.osc_fuzz import run_fuzz

pytestmark = pytest.mark.realtime


def _errors(client: OscClient, mark: int) -> list:
    return [m for m in client.since(mark) if m.address == "/livegen/error"]


@pytest.mark.parametrize("name, data", [("freeze", FREEZE), ("stall", stall_message()),
                                        ("zero elements", zero_elements())])
def test_the_bytes_that_broke_the_daemon_get_one_error(daemon, name, data):
    size = daemon.log.stat().st_size
    peer = OscClient()  # a fresh sender: one "malformed" reply per sender per second
    try:
        t0 = time.monotonic()
        peer.send_raw(daemon.port, data)
        reply = peer.wait("/livegen/error", 0, timeout=5)
        assert time.monotonic() - t0 < 1.0
        assert f"The OSC packet of {len(data)} bytes is malformed" in reply.params[-1]
        assert daemon.query_status(peer)["ready"]
        time.sleep(0.2)
        assert len(_errors(peer, 0)) == 1
    finally:
        peer.close()
    assert daemon.log.stat().st_size - size < 4000  # was 7 MB for the stalling type tag


@pytest.mark.parametrize("types, port", [("i", 70000), ("i", -1), ("f", 70000.0)])
def test_subscribing_an_impossible_port_leaves_the_socket_alive(daemon, client, types, port):
    client.send(daemon.port, "/livegen/subscribe", port, types=types)
    time.sleep(0.3)
    assert daemon.alive()
    assert daemon.query_status(client)["ready"]  # the socket still receives and answers
    mark = client.mark()
    client.send(daemon.port, "/livegen/stop", 99)
    client.wait("/livegen/ack", mark, timeout=5)


def test_an_invalid_pattern_gets_an_error(daemon, client):
    client.send_raw(daemon.port, b"/livegen/[\x00\x00,\x00\x00\x00")
    reply = client.wait("/livegen/error", 0, timeout=5)
    assert "/livegen/[" in reply.params[-1]
    time.sleep(0.3)
    assert len(_errors(client, 0)) == 1


def test_a_reduced_fuzz_run_leaves_the_daemon_working(daemon, client):
    log_before = daemon.log.stat().st_size
    report = run_fuzz(daemon.port, packets=3000, rate=1000.0, status_every=250, seed=11,
                      pid=daemon.proc.pid, log=daemon.log, generate_every=1000, drain=2.0)
    print(report.text())
    assert report.daemon_alive and report.socket_alive, report.text()
    assert report.probes_answered == report.probes
    for name, c in report.classes.items():
        assert c.ok, f"{name}: {c}\n{report.text()}"
    bad = report.classes["bad"]
    assert bad.messages > 500 and bad.errors == bad.messages  # exactly one error per bad message
    assert report.classes["malformed"].sent > 500
    assert report.tracebacks == 0
    assert daemon.log.stat().st_size - log_before < 1_000_000

    assert daemon.alive() and daemon.query_status(client)["ready"]
    mark = client.mark()
    client.send(daemon.port, "/livegen/generate", "after the fuzz", 3, 0.1)
    done = client.wait("/livegen/done", mark, timeout=60)
    assert done.params[-1] > 0
    assert not _errors(client, mark)
