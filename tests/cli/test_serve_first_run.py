"""`livegen serve` on a fresh machine: no weights, no Hugging Face login, no network.

The README's quick start runs `livegen serve` right after the install. Without weights it must not
wait, retry or print a traceback: it exits within seconds with exit code 2 and one sentence on
stderr saying how to get the weights (accept the licence, `hf auth login` or HF_TOKEN).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 20.0


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE", "LIVEGEN_"))}  # no token, no caches, no overrides
    for name in ("hf", "cache", "home"):
        (tmp_path / name).mkdir()
    env.update(HF_HOME=str(tmp_path / "hf"), LIVEGEN_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    return env


def test_serve_without_weights_exits_2_with_one_sentence(tmp_path):
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "livegen", "serve"], cwd=tmp_path, env=_fresh_env(tmp_path),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, nothing else
        out, err = proc.communicate()
        pytest.fail(f"livegen serve without weights was still running after {LIMIT_S:g} s; stderr:\n{err[-2000:]}")
    took = time.monotonic() - start
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit code {proc.returncode}; stderr:\n{err[-2000:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[-2000:]}"
    assert "HF_TOKEN" in lines[0] or "hf auth login" in lines[0], lines[0]
    assert "Traceback" not in err and lines[0].rstrip().endswith(".")
    assert took < LIMIT_S
    assert not list((tmp_path / "cache").iterdir())  # nothing half-converted left behind
