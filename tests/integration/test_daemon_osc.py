"""The real daemon driven over OSC: play + DAW folder, bad input, oscsend, Pure Data, reload."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import DAEMON_CLIENTS, REPO, FolderWatch, Recorder

pytestmark = pytest.mark.realtime

PD_PATCH = REPO / "examples" / "puredata" / "livegen.pd"


def soxi(flag: str, path: Path) -> str:
    out = subprocess.run(["soxi", flag, str(path)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "WARN" not in out.stderr, out.stderr
    return out.stdout.strip()


# Zero xruns and zero underflows stay strict in every run; on a shared machine a stall of another
# process can still cost JACK one cycle, so a failing run is repeated (at most twice) and every
# failure is printed by pytest-rerunfailures. A real glitch in livegen fails all three.
@pytest.mark.flaky(reruns=2, reruns_delay=2)
def test_bar_request_is_played_and_lands_in_the_folder_exactly(daemon, client, jack_log):
    watch = FolderWatch(daemon.folder)
    recorder = Recorder(daemon.ports, seconds=20.0)
    time.sleep(0.5)  # a fresh connection may add an xrun; start counting after it
    log_mark = jack_log.mark()
    recorder.recording = True
    before = daemon.query_status(client)
    # 1/4 bar of 1 beat at 240 bpm: round(0.25 * 60 / 240 * 44100) = round(2756.25) = 2756 frames
    for address, value in (("/livegen/bpm", 240), ("/livegen/beats_per_bar", 1), ("/livegen/bars", 0.25),
                           ("/livegen/launch", "now"), ("/livegen/steps", 4)):
        client.send(daemon.port, address, value)
    mark = client.mark()
    client.send(daemon.port, "/livegen/generate", "deep bass", 5)
    ack = client.wait("/livegen/ack", mark, timeout=10)
    job = ack.params[0]
    done = client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
    progress = [m.params for m in client.since(mark) if m.address == "/livegen/progress"]
    assert progress == [[job, s, 4] for s in range(1, 5)]
    time.sleep(0.5)  # let the clip finish playing
    after = daemon.query_status(client)
    audio = recorder.close()
    events = watch.close()

    path = Path(done.params[1])
    assert path.parent == daemon.folder and path.suffix == ".wav"
    # a repeated run (the rerun policy) finds its earlier file there: the new one is "-2", "-3", ...
    assert "240bpm" in path.name and "0.25bars" in path.name and re.search(r"_5(-\d+)?\.wav$", path.name), path
    assert done.params[2] == pytest.approx(2756 / 44100, rel=1e-6)
    # one atomic appearance: the WAV is renamed into place, never written under its own name
    assert events.count(("MOVED_TO", path.name)) == 1
    assert ("CLOSE_WRITE,CLOSE", path.name) not in events
    assert soxi("-s", path) == "2756" and soxi("-r", path) == "44100" and soxi("-c", path) == "2"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["seed"] == 5 and sidecar["prompt"] == "deep bass"

    # what reached JACK: the clip's frames, not silence, without xruns or new underflows
    loud = np.flatnonzero(np.abs(audio).max(axis=0) > 1e-6)
    assert loud.size > 0, "nothing was played"
    span = loud[-1] - loud[0] + 1
    assert abs(span - 2756) <= 256 + 8, span
    # JACK xruns are server-wide (PortAudio reports every one to every client as an underflow): the
    # server's log says whose callback overran (tests/jack_log.py); only the daemon's count here
    xruns = jack_log.since(log_mark, DAEMON_CLIENTS, recorder.xruns)
    underflows = (before["audio"]["underflows"], after["audio"]["underflows"])
    print(f"{xruns}; daemon underflows before/after: {underflows}; JACK clients: {recorder.clients}")
    assert xruns.daemon_xruns == 0, (str(xruns), underflows, recorder.clients)
    new_underflows = after["audio"]["underflows"] - before["audio"]["underflows"]
    # each cycle the machine lost is flagged to the daemon's stream too: no underflow of its own
    assert new_underflows <= (xruns.counted if xruns.known else 0), (str(xruns), underflows)
    assert (after["underflows_after_start"] - before["underflows_after_start"]
            <= (xruns.counted if xruns.known else 0)), (str(xruns), underflows)
    assert after["clips_played"] == before["clips_played"] + 1
    # back to short second-based clips for the other tests
    client.send(daemon.port, "/livegen/bars", 0)  # 0 clears the bars


def test_a_musicgen_clip_is_resampled_for_the_stream_and_kept_at_32_khz(daemon, client):
    before = daemon.query_status(client)["clips_played"]
    mark = client.mark()
    client.send(daemon.port, "/livegen/model", "mg")
    client.send(daemon.port, "/livegen/generate", "tiny tune", 8, 0.05)
    job = client.wait("/livegen/ack", mark, timeout=10).params[0]
    done = client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
    client.send(daemon.port, "/livegen/model", "default")
    path = Path(done.params[1])
    assert soxi("-r", path) == "32000" and soxi("-s", path) == str(round(0.05 * 32000))
    assert json.loads(path.with_suffix(".json").read_text())["model"] == "mg"
    deadline = time.monotonic() + 10
    while daemon.query_status(client)["clips_played"] == before:  # resampled to 44.1 kHz and scheduled
        assert time.monotonic() < deadline
        time.sleep(0.1)
    mark = client.mark()
    client.send(daemon.port, "/livegen/generate", "unknown model", 1, 0.05)
    client.send(daemon.port, "/livegen/model", "nope")
    client.send(daemon.port, "/livegen/generate", "unknown model", 1, 0.05)
    err = client.wait("/livegen/error", mark, timeout=10)
    assert "no model 'nope'" in err.params[-1]
    client.send(daemon.port, "/livegen/model", "default")


BAD = [
    (b"\x00garbage\x01", "malformed"),
    (("/livegen/generate", 12), "prompt must be a string"),
    (("/livegen/trigger", "one"), "slot must be a whole number"),
    (("/livegen/nowhere", 1), "unknown address /livegen/nowhere"),
    (("/not/livegen",), "unknown address /not/livegen"),
    (("/livegen/generate", "pad", 1, -1.0), "positive number of seconds"),
    (("/livegen/steps", 10**9), "Steps must be a whole number from 1 to"),
    (("/livegen/seconds", 10**6), "at most 0.5 s"),
    (("/livegen/bpm", 1.5), "between 20 and 400 bpm"),
    # refused at intake, never queued (they used to be acked, then fail in the worker)
    (("/livegen/sampler", "foo"), "has no sampler 'foo'"),
    (("/livegen/model", "nosuch"), "no model 'nosuch'"),
    (("/livegen/bars", 1e-9), "bars must be between"),
    (("/livegen/bars", 1e30), "bars must be between"),
    (("/livegen/generate", "x", 1, 1e-30), "shorter than one audio frame"),
    (("/livegen/seconds", 2.0), "at most 0.5 s"),
    (("/livegen/subscribe", 70000), "port must be a whole number from 1 to 65535"),
    (("/livegen/subscribe", -1), "port must be a whole number from 1 to 65535"),
]


def test_bad_input_is_answered_and_the_daemon_keeps_serving(daemon, client):
    for item, reason in BAD:
        mark = client.mark()
        if isinstance(item, bytes):
            client.send_raw(daemon.port, item)
        else:
            client.send(daemon.port, *item)
        err = client.wait("/livegen/error", mark, timeout=10)
        assert reason.lower() in err.params[-1].lower(), (item, err.params)
        assert not [m for m in client.since(mark) if m.address == "/livegen/ack"], item  # nothing queued
    # the largest prompt one UDP datagram can carry (65507 bytes payload) against the 500-char limit
    prompt = "x" * 65400
    mark = client.mark()
    client.send(daemon.port, "/livegen/generate", prompt)
    err = client.wait("/livegen/error", mark, timeout=10)
    assert "65400 characters; the limit is 500" in err.params[-1]
    with pytest.raises(OSError):  # a 1 MB prompt cannot even leave the client
        client.send(daemon.port, "/livegen/generate", "x" * 1_000_000)
    # still serving: a normal request completes
    mark = client.mark()
    client.send(daemon.port, "/livegen/generate", "after the storm", 3, 0.05)
    job = client.wait("/livegen/ack", mark, timeout=10).params[0]
    client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
    assert daemon.alive()


def test_oscsend_requests_reach_the_daemon(daemon, client):
    status = daemon.status
    mark = status.mark()
    env = dict(os.environ)
    subprocess.run(["oscsend", "localhost", str(daemon.port), "/livegen/generate", "sif", "from liblo", "42",
                    "0.05"], check=True, timeout=10, env=env)
    # oscsend does not listen: the status port receives the pushes
    ack = status.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[1] == "queued: from liblo")
    done = status.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == ack.params[0])
    assert Path(done.params[1]).name.endswith("_42.wav")


def test_pure_data_patch_talks_to_the_daemon(daemon):
    from tests.integration.conftest import free_port

    reply_port = free_port()
    proc = subprocess.run(
        ["pd", "-nogui", "-noaudio", "-nomidi", "-stderr",
         "-send", f"livegen-port {daemon.port}", "-send", f"livegen-reply-port {reply_port}",
         "-send", "livegen-generate pd pad 42 0.05", "-send", "livegen-demo bang",
         "-send", "livegen-quit-after 8000", "-open", str(PD_PATCH)],
        capture_output=True, text=True, timeout=60,
    )
    out = proc.stderr
    assert proc.returncode == 0, out
    # Pd prints symbols with escaped spaces and semicolons
    lines = [line.replace("\\", "") for line in out.splitlines() if line.startswith("livegen:")]
    assert any("ack" in line and "subscribed" in line for line in lines), out
    # Pd sends every number as a float (42.0): the daemon takes whole floats as ints, and the
    # prompt Pd split at its space is joined again
    acks = [line for line in lines if "ack" in line and "queued" in line]
    assert len(acks) == 1 and "pd" in acks[0] and "pad" in acks[0], out
    assert any("done" in line and "_42.wav" in line for line in lines), out
    # the demo asks for 4 s, beyond the tiny model's window: the error reaches Pd too
    assert any("error" in line and "at most 0.5" in line for line in lines), out


def test_reload_keeps_the_old_mapping_when_the_new_one_is_broken(daemon, client):
    good = daemon.mapping.read_text()
    try:
        daemon.mapping.write_text(good + "  - cc: 300\n    action: nonsense\n")
        mark = client.mark()
        client.send(daemon.port, "/livegen/reload")
        err = client.wait("/livegen/error", mark, timeout=10)
        assert "mapping reload refused" in err.params[-1].lower() and "mapping.yaml:" in err.params[-1]
        # the old mapping still answers its OSC rule
        mark = client.mark()
        client.send(daemon.port, "/test/pad/1")
        job = client.wait("/livegen/ack", mark, timeout=10, where=lambda p: "osc pad 1" in p[1]).params[0]
        client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
    finally:
        daemon.mapping.write_text(good.replace("osc pad {pad}", "renamed pad {pad}"))
    # the file watcher picks up the change (polling every 0.5 s)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mark = client.mark()
        client.send(daemon.port, "/test/pad/2")
        ack = client.wait("/livegen/ack", mark, timeout=10)
        job = ack.params[0]
        client.wait("/livegen/done", mark, timeout=120, where=lambda p, job=job: p[0] == job)
        if "renamed pad 2" in ack.params[1]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the changed mapping file was not reloaded")
