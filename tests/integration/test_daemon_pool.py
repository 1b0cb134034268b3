"""The daemon on a Ray Serve pool (``engine.kind: ray``), and the cluster stopped mid-set.

A multi-process cluster binds the machine's external address, so the whole scenario
(tests/integration/pool_scenario.py: the cluster's head, the pool, the daemon, the OSC clients)
runs inside a network namespace with only ``lo``, deleted after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import require_or_skip
from tests.integration.conftest import REPO, free_port, write_settings

pytestmark = pytest.mark.realtime


@pytest.fixture()
def netns():
    name = f"lg-pooltest-{os.getpid()}"
    if shutil.which("ip") is None or os.geteuid() != 0:
        require_or_skip("LIVEGEN_REQUIRE_RAY", "a network namespace needs `ip` and root")
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        require_or_skip("LIVEGEN_REQUIRE_RAY", f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_daemon_renders_on_the_pool_and_falls_back_when_the_cluster_stops(tiny_model, tmp_path, netns):
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        require_or_skip("LIVEGEN_REQUIRE_RAY", f"ray[serve] is not installed (pip install -e .[ray]): {exc}")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("name: pool\nparams:\n  seconds: 0.3\n  launch: now\n")
    config = tmp_path / "livegen.yaml"
    daw = tmp_path / "daw"
    daw.mkdir()
    port, status_port = free_port(), free_port()
    write_settings(config, tiny_model, port, status_port, daw, mapping, audio=False, midi=False)
    text = config.read_text()
    config.write_text(text.replace("engine:\n", "engine:\n  kind: ray\n  address: auto\n  deployment: lgscen\n"
                                   "  remote_deadline: 15\n  remote_start: 5\n", 1))
    result = tmp_path / "result.json"
    env = dict(os.environ, LIVEGEN_CACHE=str(tiny_model["cache"]), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               LIVEGEN_CPU_THREADS="1")  # daemon and replica: the same BLAS threads, the same samples
    run = subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(REPO / "tests/integration/pool_scenario.py"),
                          str(config), str(result), str(port), str(status_port), str(daw)],
                         env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600)
    assert result.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(result.read_text())
    where = json.dumps({k: v for k, v in out.items() if k != "log"}, indent=1)[:4000] + "\n" + out["log"]
    assert "error" not in out, where
    # 1. rendered by the pool, no fallback
    assert not out["remote"]["fallback"], where
    assert out["after_remote"]["remote"] >= 1 and out["after_remote"]["fallbacks"] == 0, where
    # 2. the job in flight when the cluster stopped: rendered here, said so, within the deadline
    assert out["in_flight"]["fallback"], where
    assert out["fallback_after_stop"] < 15, where  # within the deadline (engine.remote_deadline)
    assert out["final_pool"]["fallbacks"] >= 1 and out["final_pool"]["last_fallback"], where
    assert out["status_latency_max"] < 1.0, where  # the loop never waited for the pool
    # 3. the same request and seed rendered here after the stop equals the pool's render, sample for sample
    remote, _ = sf.read(out["remote"]["wav"], dtype="float32", always_2d=True)
    local, _ = sf.read(out["after_stop"]["wav"], dtype="float32", always_2d=True)
    np.testing.assert_array_equal(remote, local)
    assert out["daemon_rc"] == 0, where


def test_serve_pool_local_deploys_and_removes_the_pool(tiny_model, tmp_path, netns):
    """`livegen serve-pool --address local`: a private cluster with the pool, gone after Ctrl-C."""
    import signal
    import time

    try:
        import ray  # noqa: F401
    except ImportError as exc:
        require_or_skip("LIVEGEN_REQUIRE_RAY", f"ray[serve] is not installed (pip install -e .[ray]): {exc}")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("name: pool\n")
    config = tmp_path / "livegen.yaml"
    write_settings(config, tiny_model, free_port(), free_port(), None, mapping, audio=False, midi=False)
    env = dict(os.environ, LIVEGEN_CACHE=str(tiny_model["cache"]), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    log = tmp_path / "serve-pool.log"

    def gcs() -> set[int]:
        out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
        return {int(line.split()[0]) for line in out.splitlines()[1:] if "gcs_server" in line}

    before = gcs()
    with open(log, "w") as f:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "livegen", "serve-pool",
                                 "--config", str(config), "--address", "local", "--name", "lgsp"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    try:
        deadline = time.monotonic() + 180
        while "serve-pool: lgsp-default running" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert gcs() - before  # its cluster runs
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "serve-pool: removed lgsp-default" in log.read_text()
    deadline = time.monotonic() + 20
    while gcs() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not gcs() - before, "the private cluster is still running"
