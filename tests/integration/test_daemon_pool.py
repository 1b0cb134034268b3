"""The daemon on a Ray Serve pool (``engine.kind: ray``): a replica stalled mid-render, then the
cluster stopped mid-set.

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

# engine.remote_deadline of the scenario: above the time the daemon takes to see the cluster gone
# (about remote_start after the stop: the retry does not start), so step 3 falls back for the loss,
# not for the deadline; short, since step 2's stalled job waits for it
REMOTE_DEADLINE = 10
REMOTE_START = 5


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
                                   f"  remote_deadline: {REMOTE_DEADLINE}\n  remote_start: {REMOTE_START}\n", 1))
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
    # 2. a replica stalled (SIGSTOP) mid-render: late, said so at its deadline, rendered here
    stall = out["stall"]
    assert stall["replica_state"] == "T", where  # it was stopped
    assert stall["remote_running_while_stalled"] == 1, where  # the job was the pool's when it stalled
    reason = stall["reason"]
    assert reason.startswith("rendering locally: ") and "deadline" in reason, where
    assert reason.endswith(f"{REMOTE_DEADLINE:g} s after the trigger (engine.remote_deadline)"), where
    assert REMOTE_DEADLINE - 0.25 <= stall["fallback_after_trigger"] <= REMOTE_DEADLINE + 3, where
    assert stall["job"]["fallback"] == [[stall["job"]["done"][0], reason]], where  # announced once
    assert stall["job"]["wav"] and os.path.exists(stall["job"]["wav"]), where
    assert stall["replica_state_at_done"] == "T", where  # done here while the pool was still stalled
    assert stall["status_latency_max"] < 1.0 and stall["status_queries"] >= 5, where
    assert stall["replica_state_after_cont"] != "T", where
    # then the pool renders again (the resumed replica, or the one Serve put in its place)
    assert not stall["recovered"]["fallback"] and stall["recovered"]["wav"], where
    assert len(stall["replicas_after"]) == 1, where
    assert out["after_stall"]["state"] == "connected", where
    assert out["after_stall"]["remote"] >= out["after_remote"]["remote"] + 2, where
    assert out["after_stall"]["fallbacks"] == stall["recovery_tries"], where  # the stall's, and any retry's
    # 3. the job in flight when the cluster stopped: rendered here, said so, before its deadline
    assert out["in_flight"]["fallback"], where
    assert "deadline" not in out["in_flight"]["fallback"][0][1], where  # for the loss, not for lateness
    assert out["fallback_after_stop"] < REMOTE_DEADLINE, where  # within the deadline (engine.remote_deadline)
    assert out["final_pool"]["fallbacks"] >= out["after_stall"]["fallbacks"] + 1, where
    assert out["final_pool"]["last_fallback"], where
    assert out["status_latency_max"] < 1.0, where  # the loop never waited for the pool
    # 4. the same request and seed rendered here after the stop equals the pool's render, sample for sample
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
