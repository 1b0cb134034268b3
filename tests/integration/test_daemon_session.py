"""The session model through the real daemon: echoes and gets, status to subscribers, a hot
reload that changes ``params``, and a pad hit that pre-empts a background render."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import OscClient, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime


def test_sets_are_echoed_and_get_answers(daemon, client):
    listener = OscClient()  # a patch that listens on another port than it sends from
    try:
        lmark = listener.mark()
        client.send(daemon.port, "/livegen/subscribe", listener.port)
        listener.wait("/livegen/ack", lmark, timeout=10)  # the ack goes to the subscribed port...
        lmark = listener.mark()
        mark = client.mark()
        client.send(daemon.port, "/livegen/cfg", 3)
        echo = client.wait("/livegen/get", mark, timeout=10)
        assert echo.params == ["cfg", 3.0]
        assert listener.wait("/livegen/get", lmark, timeout=10).params == ["cfg", 3.0]  # ...and the echo too
        mark = client.mark()
        client.send(daemon.port, "/livegen/steps", "default")
        assert client.wait("/livegen/get", mark, timeout=10).params == ["steps", 2]  # the model's default (settings)
        mark = client.mark()
        client.send(daemon.port, "/livegen/get", "bpm")
        assert client.wait("/livegen/get", mark, timeout=10).params[0] == "bpm"
        mark, lmark = client.mark(), listener.mark()
        client.send(daemon.port, "/livegen/status")
        client.wait("/livegen/status", mark, timeout=10)
        listener.wait("/livegen/status", lmark, timeout=10)  # status reaches subscribers too
        client.send(daemon.port, "/livegen/steps", 2)
    finally:
        listener.close()


def test_livegen_send_prints_the_echo_and_exits_0(daemon):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "livegen", "send", f"127.0.0.1:{daemon.port}", "/livegen/seed",
                          "3"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "/livegen/get 'seed' 3" in out.stdout
    out = subprocess.run([sys.executable, "-m", "livegen", "send", f"127.0.0.1:{daemon.port}",
                          "/livegen/sampler", "foo"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no sampler 'foo'" in out.stdout + out.stderr
    subprocess.run([sys.executable, "-m", "livegen", "send", f"127.0.0.1:{daemon.port}", "/livegen/seed", "-1"],
                   capture_output=True, timeout=30)


def test_a_hot_reload_applies_an_edited_params_block(daemon, client):
    good = daemon.mapping.read_text()
    mark = client.mark()
    client.send(daemon.port, "/livegen/reload")  # a load: what performers set before it is now settled
    client.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[1] == "mappings reloaded")
    try:
        daemon.mapping.write_text(good.replace("  steps: 2\n", "  steps: 3\n  cfg: 2.5\n"))
        mark = client.mark()
        client.send(daemon.port, "/livegen/reload")
        client.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[1] == "mappings reloaded")
        mark = client.mark()
        client.send(daemon.port, "/livegen/get", "cfg")
        assert client.wait("/livegen/get", mark, timeout=10, where=lambda p: p[0] == "cfg").params == ["cfg", 2.5]
        mark = client.mark()
        client.send(daemon.port, "/livegen/generate", "after reload", 1, 0.05)
        job = client.wait("/livegen/ack", mark, timeout=10).params[0]
        client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
        progress = [m.params for m in client.since(mark) if m.address == "/livegen/progress" and m.params[0] == job]
        assert progress and progress[-1][2] == 3  # the file's new steps took effect
    finally:
        daemon.mapping.write_text(good)
        mark = client.mark()
        client.send(daemon.port, "/livegen/reload")
        client.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[1] == "mappings reloaded")


PREEMPT_MAPPING = """\
name: preempt
params:
  prompt: background
  seconds: 0.1
  steps: 60
  launch: now
midi:
  - note: 60-61
    action: generate
    prompt: "pad {pad}"
osc:
  - address: /hit
    action: generate
    prompt: "performer"
    steps: 2
"""


def test_a_pad_hit_during_a_prerender_starts_within_one_sampler_step(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=False, midi=False, folder=False, prerender=True,
                          mapping_text=PREEMPT_MAPPING)
    client = OscClient()
    try:
        deadline = time.monotonic() + 180
        while "pre-rendered job 1 " not in daemon.log_text():  # one 60-step pre-render took its seconds
            assert time.monotonic() < deadline, daemon.log_text()[-2000:]
            time.sleep(0.1)
        whole = float(re.search(r"pre-rendered job 1 \(([\d.]+) s\)", daemon.log_text()).group(1))
        time.sleep(1.0)  # the next pre-render (another variation) is well into its 60 steps
        mark = client.mark()
        sent = time.time()
        client.send(daemon.port, "/hit")
        job = client.wait("/livegen/ack", mark, timeout=20).params[0]
        first = client.wait("/livegen/progress", mark, timeout=60, where=lambda p: p[0] == job)
        waited = time.time() - sent
        client.wait("/livegen/done", mark, timeout=60, where=lambda p: p[0] == job)
        assert "cancelled for a performer's request" in daemon.log_text()
        assert first.params[1:] == [1, 2]
        # the performer's first step arrives within one pre-render step (whole / 60) plus its own step
        # and the round trip; generous for a loaded machine, and far below a whole pre-render
        assert waited < max(1.0, 6 * whole / 60) + 1.0, (waited, whole)
        assert waited < whole / 3, (waited, whole)
    finally:
        client.close()
        rc, _ = stop_daemon(daemon)
    assert rc == 0, daemon.log_text()[-3000:]


def test_slot_states_reach_subscribers(daemon, client):
    listener = OscClient()
    try:
        lmark = listener.mark()
        client.send(daemon.port, "/livegen/subscribe", listener.port)
        listener.wait("/livegen/ack", lmark, timeout=10)
        lmark = listener.mark()
        client.send(daemon.port, "/test/pad/5")  # a mapping rule: slot 5 ({pad}), launch now
        listener.wait("/livegen/slot", lmark, timeout=60, where=lambda p: p[:2] == [5, "playing"])
        listener.wait("/livegen/slot", lmark, timeout=30, where=lambda p: p[:2] == [5, "idle"])  # a one-shot ends
        states = [m.params[1] for m in listener.since(lmark) if m.address == "/livegen/slot" and m.params[0] == 5]
        assert states[0] == "queued" and "rendering" in states, states
        assert states.index("rendering") < states.index("playing") < len(states) - 1, states
    finally:
        listener.close()
