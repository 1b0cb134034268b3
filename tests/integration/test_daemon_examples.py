"""The example clients and the CLI against the real daemon, and the example patches' structure."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from livegen.control.osc import parse_command
from tests.integration.conftest import REPO

EXAMPLES = REPO / "examples"


def _number(word: str):
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    return word


def test_max_patch_is_a_wired_patcher_speaking_the_address_space():
    patcher = json.loads((EXAMPLES / "max" / "livegen.maxpat").read_text())["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    texts = {b.get("text", "").split(" ")[0] for b in boxes.values() if b["maxclass"] == "newobj"}
    assert {"udpsend", "udpreceive", "route", "print"} <= texts
    send = next(i for i, b in boxes.items() if b.get("text", "").startswith("udpsend"))
    fed = {line["patchline"]["source"][0] for line in patcher["lines"]
           if line["patchline"]["destination"][0] == send}
    messages = [b for b in boxes.values() if b["maxclass"] == "message"]
    assert messages and all(b["id"] in fed for b in messages if b["text"].startswith("/livegen/"))
    for line in patcher["lines"]:
        (src, outlet), (dst, inlet) = line["patchline"]["source"], line["patchline"]["destination"]
        assert outlet < boxes[src]["numoutlets"] and inlet < boxes[dst]["numinlets"], line
    for b in messages:
        address, *args = shlex.split(b["text"].replace("$1", "1"))
        parse_command(address, tuple(_number(a) for a in args))  # raises for a wrong message


def test_pd_patch_connections_are_consistent():
    text = (EXAMPLES / "puredata" / "livegen.pd").read_text()
    records = [r.strip() for r in re.split(r"(?<!\\);\n", text) if r.strip()]
    objects = [r for r in records if r.startswith(("#X obj", "#X msg", "#X text", "#X floatatom"))]
    for r in records:
        if r.startswith("#X connect"):
            src, _, dst, _ = (int(x) for x in r.split()[2:6])
            assert src < len(objects) and dst < len(objects), r
    assert any("netsend -u -b" in o for o in objects) and any("oscformat livegen generate" in o for o in objects)


@pytest.mark.realtime
def test_python_client_example(daemon):
    out = subprocess.run([sys.executable, str(EXAMPLES / "python" / "livegen_client.py"), "python client",
                          "--seed", "9", "--seconds", "0.05", "--port", str(daemon.port), "--timeout", "120"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "queued: python client" in out.stdout and "_9.wav" in out.stdout


@pytest.mark.realtime
def test_livegen_send_waits_for_the_reply(daemon):
    cmd = [sys.executable, "-m", "livegen", "send", f"127.0.0.1:{daemon.port}", "/livegen/generate",
           "cli clip", "11", "0.05", "--wait-reply", "120"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=str(REPO))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("/livegen/ack") and "'queued: cli clip'" in lines[0]
    assert lines[-1].startswith("/livegen/done") and "_11.wav" in lines[-1]
    bad = subprocess.run(cmd[:6] + ["7", "--types", "i", "--wait-reply", "10"], capture_output=True, text=True,
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
