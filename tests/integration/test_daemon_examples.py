"""The example clients and the CLI against the real daemon, and the example patches' structure."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from livegen.control.osc import build_message
from livegen.control.osc_verbs import parse as parse_command  # the daemon's parser of the built-in addresses
from tests.integration.conftest import REPO, OscClient, free_port

EXAMPLES = REPO / "examples"
DOCS = REPO / "docs" / "daemon.md"

# The built-in addresses of the protocol (the contract, not the code): every example covers them.
VERBS = ("generate", "trigger", "stop", "cancel", "reroll", "set", "get", "status", "reload", "subscribe")
PARAMS = ("prompt", "negative_prompt", "model", "sampler", "seed", "steps", "cfg", "seconds", "bars", "bpm",
          "beats_per_bar", "gain", "launch", "loop", "priority", "bank")
ADDRESSES = {f"/livegen/{name}" for name in VERBS + PARAMS}
REPLIES = ("ack", "get", "progress", "done", "error", "ready", "status")


def _number(word: str):
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    return word


# ---------------------------------------------------------------------------------------- Max
def _max_patcher() -> dict:
    return json.loads((EXAMPLES / "max" / "livegen.maxpat").read_text())["patcher"]


def _feeds(patcher: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in patcher["lines"]:
        out.setdefault(line["patchline"]["source"][0], set()).add(line["patchline"]["destination"][0])
    return out


def _reaches(feeds: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        box = todo.pop()
        if box == goal:
            return True
        if box not in seen:
            seen.add(box)
            todo.extend(feeds.get(box, ()))
    return False


def test_max_patch_has_a_wired_box_for_every_builtin_address():
    patcher = _max_patcher()
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    for line in patcher["lines"]:
        (src, outlet), (dst, inlet) = line["patchline"]["source"], line["patchline"]["destination"]
        assert outlet < boxes[src]["numoutlets"] and inlet < boxes[dst]["numinlets"], line
    feeds = _feeds(patcher)
    send = next(i for i, b in boxes.items() if b.get("text", "").startswith("udpsend 127.0.0.1 9000"))
    requests = [b for b in boxes.values() if b["maxclass"] == "message" and b.get("text", "").startswith("/")]
    assert ADDRESSES <= {b["text"].split(" ")[0] for b in requests}
    for b in requests:
        assert _reaches(feeds, b["id"], send), b["text"]
    # the typed prompt becomes one symbol before /max/generate (the maxmsp mapping binds one arg)
    chain = {b["text"].split(" ")[0]: i for i, b in boxes.items() if b["maxclass"] == "newobj"}
    assert {"tosymbol", "pack", "prepend"} <= set(chain)
    assert _reaches(feeds, chain["tosymbol"], chain["pack"]) and _reaches(feeds, chain["pack"], send)
    assert next(b for b in boxes.values() if b.get("text", "").startswith("prepend /max/generate"))


def _refused(address: str, args: tuple) -> str | None:
    try:
        return None if parse_command(address, args) is not None else "not a built-in address"
    except ValueError as exc:
        return str(exc)


def test_max_patch_messages_are_accepted_by_the_daemon_parser():
    requests = [b["box"]["text"] for b in _max_patcher()["boxes"]
                if b["box"]["maxclass"] == "message" and b["box"].get("text", "").startswith("/livegen/")]
    refused = []
    for text in requests:
        address, *args = shlex.split(text.replace("$1", "120"))  # a value every knob accepts
        if (why := _refused(address, tuple(_number(a) for a in args))) is not None:
            refused.append((text, why))
    assert not refused, "\n".join(f"{text}: {why}" for text, why in refused)


def test_max_patch_displays_every_reply():
    patcher = _max_patcher()
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    recv = next(i for i, b in boxes.items() if b.get("text", "").startswith("udpreceive"))
    route = next(i for i, b in boxes.items() if b.get("text", "").startswith("route /livegen/"))
    assert _reaches(_feeds(patcher), recv, route)
    routed = boxes[route]["text"].split()[1:]
    assert routed == [f"/livegen/{r}" for r in REPLIES]
    for outlet in range(len(routed) + 1):  # the last outlet: anything else
        targets = {line["patchline"]["destination"][0] for line in patcher["lines"]
                   if line["patchline"]["source"] == [route, outlet]}
        texts = {boxes[t].get("text", "").split(" ")[0] for t in targets}
        assert {"print", "prepend"} <= texts, (outlet, texts)
        shown = [d for t in targets if boxes[t].get("text") == "prepend set"
                 for d in _feeds(patcher).get(t, ())]
        assert shown and all(boxes[d]["maxclass"] == "message" for d in shown)


# ---------------------------------------------------------------------------------------- Pd
PD_PATCH = EXAMPLES / "puredata" / "livegen.pd"


def _pd_objects() -> tuple[list[str], list[tuple[int, int, int, int]]]:
    text = PD_PATCH.read_text()
    records = [r.strip() for r in re.split(r"(?<!\\);\n", text) if r.strip()]
    objects = [r for r in records if r.startswith(("#X obj", "#X msg", "#X text", "#X floatatom"))]
    conns = [tuple(int(x) for x in r.split()[2:6]) for r in records if r.startswith("#X connect")]
    return objects, conns  # type: ignore[return-value]


def _pd_atoms(body: str) -> tuple[Any, ...]:
    """What a Pd message box sends through [oscformat]: escaped spaces stay inside one symbol,
    every number is a float."""
    words = [w.replace("\x00", " ") for w in body.replace("\\ ", "\x00").split()]
    if words == ["bang"]:
        return ()
    if words and words[0] == "list":
        words = words[1:]
    out: list[Any] = []
    for w in words:
        try:
            out.append(float(w))
        except ValueError:
            out.append(w)
    return tuple(out)


def test_pd_patch_has_every_address_and_quits_on_request():
    objects, conns = _pd_objects()
    for src, _, dst, _ in conns:
        assert src < len(objects) and dst < len(objects), (src, dst)
    texts = [o.split(" ", 4)[4] if len(o.split(" ", 4)) > 4 else "" for o in objects]
    send = next(i for i, t in enumerate(texts) if t == "list prepend send")
    assert any("netsend -u -b" in t for t in texts)
    feeds: dict[int, set[int]] = {}
    for src, _, dst, _ in conns:
        feeds.setdefault(src, set()).add(dst)
    addresses = {"/livegen/" + msg.split()[2] for msg in texts if msg.startswith("oscformat livegen ")}
    assert ADDRESSES <= addresses, ADDRESSES - addresses
    for i, msg in enumerate(texts):
        if msg.startswith("oscformat livegen "):
            assert send in feeds.get(i, set()), msg
    receivers = {t.split()[1] for t in texts if t.startswith("r ")}
    assert {"livegen-quit", "livegen-quit-after", "livegen-quit-when-done", "livegen-generate",
            "livegen-port", "livegen-reply-port"} <= receivers
    assert any(o.startswith("#X msg") and o.endswith("\\; pd quit") for o in objects)


def test_pd_patch_messages_are_accepted_by_the_daemon_parser():
    objects, conns = _pd_objects()
    refused = []
    for src, _, dst, _ in conns:
        words = objects[dst].split()
        if objects[dst].startswith("#X obj") and words[4:6] == ["oscformat", "livegen"]:
            address = "/livegen/" + words[6]
            if objects[src].startswith("#X msg"):
                body = objects[src].split(" ", 4)[4]
            elif objects[src].startswith("#X floatatom"):
                body = "120"  # a value every knob accepts
            else:
                continue
            if (why := _refused(address, _pd_atoms(body))) is not None:
                refused.append((f"{address} {body}", why))
    assert not refused, "\n".join(f"{text}: {why}" for text, why in refused)


def pd_headless(port: int, reply_port: int, generate: str, quit_ms: int) -> list[str]:
    """The headless Pd command of docs/daemon.md."""
    return ["pd", "-nogui", "-noaudio", "-nomidi", "-stderr",
            "-send", f"livegen-port {port}", "-send", f"livegen-reply-port {reply_port}",
            "-send", f"livegen-generate {generate}", "-send", f"livegen-quit-when-done {quit_ms}",
            "-open", "examples/puredata/livegen.pd"]


def test_docs_give_the_headless_pd_command_that_the_test_runs():
    lines = [line.strip() for line in DOCS.read_text().splitlines() if line.strip().startswith("pd -nogui")]
    assert [shlex.split(line) for line in lines] == [pd_headless(9000, 9001, "warm analog pad 42 4", 120000)]


def _pd_lines(stderr: str) -> list[str]:
    # Pd prints symbols with escaped spaces
    return [line.replace("\\", "") for line in stderr.splitlines() if line.startswith("livegen:")]


@pytest.mark.realtime
def test_pd_headless_generates_and_quits_by_itself(daemon):
    t0 = time.monotonic()
    proc = subprocess.run(pd_headless(daemon.port, free_port(), "pd headless 43 0.05", 60000),
                          capture_output=True, text=True, timeout=90, cwd=str(REPO))
    took = time.monotonic() - t0
    lines = _pd_lines(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    acks = [line for line in lines if "ack" in line and "queued" in line]
    assert len(acks) == 1 and "pd headless" in acks[0], proc.stderr
    assert any("done" in line and "_43.wav" in line for line in lines), proc.stderr
    assert took < 50, f"pd quit after {took:.1f} s: at its timeout, not when the clip was done"


@pytest.mark.realtime
def test_pd_headless_quits_when_the_request_is_refused(daemon):
    t0 = time.monotonic()
    proc = subprocess.run(pd_headless(daemon.port, free_port(), "too long 1 4", 60000),
                          capture_output=True, text=True, timeout=90, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert any("error" in line and "at most 0.5" in line for line in _pd_lines(proc.stderr)), proc.stderr
    assert time.monotonic() - t0 < 50


# ---------------------------------------------------------------------------------------- mappings
@pytest.fixture()
def maxmsp_mapping(daemon, client):
    """The shared daemon runs mappings/maxmsp.yaml (a reload) and gets its own mapping back after."""
    own = daemon.mapping.read_text()

    def load(text: str) -> None:
        daemon.mapping.write_text(text)
        mark = client.mark()
        client.send(daemon.port, "/livegen/reload")
        client.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[1] == "mappings reloaded")

    shipped = (REPO / "mappings" / "maxmsp.yaml").read_text()
    # the rules as shipped; only the default length is one the tiny test model can render
    assert "\n  seconds: 8\n" in shipped
    load(shipped.replace("\n  seconds: 8\n", "\n  seconds: 0.2\n"))
    try:
        yield
    finally:
        load(own)


def _max_generate(daemon, client: OscClient, *args: Any) -> dict:
    mark = client.mark()
    client.send(daemon.port, "/max/generate", *args)
    ack = client.wait("/livegen/ack", mark, timeout=10, where=lambda p: str(p[1]).startswith("queued"))
    assert ack.params[1] == "queued: two words"
    done = client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == ack.params[0])
    assert not [m for m in client.since(mark) if m.address == "/livegen/error"]
    path = Path(done.params[1])
    # files are never overwritten: the same prompt and seed again gets a "-2" name
    assert re.search(r"_7(-\d+)?\.wav$", path.name) and done.params[2] == pytest.approx(0.1, abs=1e-3)
    return json.loads(path.with_suffix(".json").read_text())


@pytest.mark.realtime
def test_maxmsp_generate_takes_prompt_seed_seconds(daemon, client, maxmsp_mapping):
    sidecar = _max_generate(daemon, client, "two words", 7, 0.1)
    assert sidecar["prompt"] == "two words" and sidecar["seed"] == 7 and sidecar["seconds"] == pytest.approx(0.1)
    assert sidecar["slot"] == 0


@pytest.mark.realtime
def test_maxmsp_generate_joins_a_prompt_sent_as_separate_words(daemon, client, maxmsp_mapping):
    # how Max and Pd send an unquoted prompt: one string atom per word (Pd: every number a float)
    sidecar = _max_generate(daemon, client, "two", "words", 7.0, 0.1)
    assert sidecar["prompt"] == "two words" and sidecar["seed"] == 7


# ---------------------------------------------------------------------------------------- TouchDesigner
class OscOutDat:
    """What the TouchDesigner script calls (``op('oscout1').sendOSC(address, values)``), sending real
    UDP from the test client's socket; it records the type tags it sent."""

    def __init__(self, client: OscClient, port: int) -> None:
        self.client, self.port = client, port
        self.sent: list[tuple[str, list]] = []

    def sendOSC(self, address: str, values: list) -> None:  # noqa: N802 - TouchDesigner's name
        self.sent.append((address, list(values)))
        self.client.send_raw(self.port, build_message(address, values))


class Chan:
    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value

    def eval(self) -> float:
        return self.value


class Chop:
    def __init__(self, **channels: float) -> None:
        self.channels = [Chan("/livegen/" + k, v) for k, v in channels.items()]

    def chans(self) -> list[Chan]:
        return self.channels


def _one_get(client: OscClient, mark: int, param: str) -> list:
    msg = client.wait("/livegen/get", mark, timeout=10, where=lambda p: p[0] == param)
    time.sleep(0.2)  # exactly one reply per message
    errors = [m.params for m in client.since(mark) if m.address == "/livegen/error"]
    assert not errors, errors
    return msg.params


@pytest.mark.realtime
def test_touchdesigner_channels_are_floats_the_daemon_accepts(daemon, client):
    dat = OscOutDat(client, daemon.port)
    td = runpy.run_path(str(EXAMPLES / "touchdesigner" / "livegen_oscout.py"), init_globals={"op": lambda name: dat})
    try:
        mark = client.mark()
        td["send_channel"]("/livegen/launch", 2.0)  # the OSC Out CHOP's launch channel: 2 = bar
        assert _one_get(client, mark, "launch") == ["launch", "bar"]
        for name, value, shown in (("cfg", 1.0, 1.0), ("steps", 2.0, 2), ("bank", 0.0, 0)):
            mark = client.mark()
            td["send_channels"](Chop(**{name: value}))
            assert _one_get(client, mark, name)[1] == shown
        mark = client.mark()
        td["get"]("launch")
        assert _one_get(client, mark, "launch") == ["launch", "bar"]
        channels = [(a, v) for a, v in dat.sent if a != "/livegen/get"]
        assert channels and all(len(v) == 1 and isinstance(v[0], float) for _, v in channels)
    finally:
        mark = client.mark()
        td["send_channel"]("/livegen/launch", 0.0)  # the integration mapping's launch: now
        assert _one_get(client, mark, "launch") == ["launch", "now"]


# ---------------------------------------------------------------------------------------- Python, CLI
def _client(daemon, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / "python" / "livegen_client.py"), "--port",
                           str(daemon.port), "--timeout", "120", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.realtime
def test_python_client_example(daemon):
    out = _client(daemon, "generate", "python client", "--seed", "9", "--seconds", "0.05")
    assert out.returncode == 0, out.stderr
    assert "queued: python client" in out.stdout and "_9.wav" in out.stdout
    out = _client(daemon, "get", "steps")
    assert out.returncode == 0 and out.stdout.splitlines() == ["/livegen/get steps 2"], out.stdout + out.stderr
    out = _client(daemon, "status")
    assert out.returncode == 0 and out.stdout.startswith("/livegen/status 1 "), out.stdout + out.stderr
    out = _client(daemon, "trigger", "12345")  # no such slot: the one error reply, exit status 1
    assert out.returncode == 1 and out.stdout.startswith("/livegen/error"), out.stdout + out.stderr


@pytest.mark.realtime
def test_python_client_listener_prints_pushes(daemon, client):
    port = free_port()
    listener = subprocess.Popen([sys.executable, str(EXAMPLES / "python" / "livegen_client.py"), "--port",
                                 str(daemon.port), "--timeout", "60", "listen", "--on", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [listener.stdout.readline().rstrip()]  # type: ignore[union-attr]  # the subscription's ack
        client.send(daemon.port, "/livegen/generate", "listened", 3, 0.05)  # another client's request
        for line in listener.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip())
            if line.startswith("/livegen/done"):
                break
    finally:
        listener.terminate()
        listener.wait(10)
    assert lines[0] == f"/livegen/ack 0 subscribed 127.0.0.1:{port}", lines
    assert any(line.startswith("/livegen/ack") and "queued: listened" in line for line in lines), lines
    assert lines[-1].startswith("/livegen/done") and lines[-1].split()[2].endswith("_3.wav"), lines


@pytest.mark.realtime
def test_livegen_send_waits_for_the_reply(daemon):
    cmd = [sys.executable, "-m", "livegen", "send", f"127.0.0.1:{daemon.port}", "/livegen/generate",
           "cli clip", "11", "0.05", "--until-done"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=str(REPO))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("/livegen/ack") and "'queued: cli clip'" in lines[0]
    assert lines[-1].startswith("/livegen/done") and "_11.wav" in lines[-1]
    bad = subprocess.run(cmd[:6] + ["7", "--types", "i"], capture_output=True, text=True,
                         timeout=60, cwd=str(REPO))
    assert bad.returncode == 1 and "prompt must be a string" in bad.stdout


def test_dry_run_reports_every_mapping_mistake(tmp_path):
    mapping = tmp_path / "broken.yaml"
    mapping.write_text("midi:\n  - note: 200\n    action: generate\n    prompt: x\n  - cc: 1\n    action: fly\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "livegen", "serve", "--dry-run", "--mapping", str(mapping)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=str(REPO))
    assert out.returncode == 1
    problems = [line for line in out.stderr.splitlines() if line.startswith(str(mapping))]
    assert len(problems) >= 2 and any(":2:" in p for p in problems) and any(":6:" in p for p in problems)
    ok = subprocess.run([sys.executable, "-m", "livegen", "serve", "--dry-run"], capture_output=True, text=True,
                        timeout=120, env=env, cwd=str(REPO))
    assert ok.returncode == 0 and "dry run: OK" in ok.stdout, ok.stdout + ok.stderr


def test_bin_jack_dummy_is_a_valid_script():
    script = REPO / "bin" / "livegen-jack-dummy"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)], timeout=10).returncode == 0
    assert Path(script).read_text().startswith("#!/bin/sh")
