"""The daemon on a Ray pool, then the cluster stopped mid-set: run inside a network namespace with
only ``lo`` (test_daemon_pool.py starts it there), since a cluster of several processes binds the
machine's external address otherwise.

``python tests/integration/pool_scenario.py CONFIG RESULT.json``. This process is the cluster's
head (``ray.init()``; the cluster stops with ``ray.shutdown()``), deploys the pool, starts the
daemon (``engine.kind: ray``), drives it over OSC and writes what it saw to RESULT.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.integration.conftest import OscClient  # noqa: E402


def main() -> int:
    config, result_path, port, status_port, folder = (Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]),
                                                      int(sys.argv[4]), Path(sys.argv[5]))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    from livegen.engine.ray_pool import deploy
    from livegen.settings import load_settings

    out: dict = {"events": []}
    t0 = time.monotonic()

    def note(what: str, **kw) -> None:
        out["events"].append({"t": round(time.monotonic() - t0, 2), "what": what, **kw})

    settings = load_settings(config)
    ctx = ray.init(namespace="livegen", include_dashboard=False, log_to_driver=False, num_cpus=2)
    address = ctx.address_info["gcs_address"]
    deploy(settings, settings.engine.deployment, ["default"], replicas=1, num_cpus=1)
    note("pool deployed", address=address)
    config.write_text(config.read_text().replace("address: auto", f"address: {address}"))
    status = OscClient(status_port)
    log = config.parent / "daemon.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    with open(log, "wb") as f:
        daemon = subprocess.Popen([sys.executable, "-m", "livegen", "serve", "--config", str(config)],
                                  stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    client = OscClient()
    try:
        status.wait("/livegen/ready", 0, timeout=180)
        note("daemon ready")

        def query() -> dict:
            mark = client.mark()
            client.send(port, "/livegen/status")
            msg = client.wait("/livegen/status", mark, timeout=10)
            return json.loads(msg.params[-1])

        deadline = time.monotonic() + 60
        while query()["worker"].get("pool", {}).get("state") != "connected":
            assert time.monotonic() < deadline, query()["worker"]
            time.sleep(0.2)
        note("pool connected", pool=query()["worker"]["pool"])

        def generate(seed: int, steps: int, wait: float = 120.0) -> dict:
            seen = set(folder.glob("*.wav"))
            mark = status.mark()
            client.send(port, "/livegen/set", "seed", seed)
            client.send(port, "/livegen/set", "steps", steps)
            client.send(port, "/livegen/generate", f"pool clip {seed}")
            ack = status.wait("/livegen/ack", mark, timeout=20, where=lambda p: str(p[1]).startswith("queued"))
            return {"job": ack.params[0], "mark": mark, "seen": seen, "t": time.monotonic()}

        def finish(job: dict, timeout: float = 120.0) -> dict:
            done = status.wait("/livegen/done", job["mark"], timeout=timeout, where=lambda p: p[0] == job["job"])
            msgs = [(m.address, list(m.params)) for m in status.since(job["mark"])]
            fallback = [p for a, p in msgs if a == "/livegen/ack" and str(p[1]).startswith("rendering locally")]
            wav = None
            end = time.monotonic() + 20
            while wav is None and time.monotonic() < end:
                new = [p for p in folder.glob("*.wav") if p not in job["seen"] and p.with_suffix(".json").exists()]
                wav = str(new[0]) if new else None
                time.sleep(0.05)
            return {"done_after": round(time.monotonic() - job["t"], 2), "fallback": fallback, "wav": wav,
                    "done": list(done.params)}

        # 1. rendered by the pool
        out["remote"] = finish(generate(101, 4))
        out["after_remote"] = query()["worker"]["pool"]
        note("remote clip done")
        # 2. a long clip in flight on the pool when the cluster stops
        job = generate(202, 30)
        status.wait("/livegen/progress", job["mark"], timeout=60, where=lambda p: p[0] == job["job"])
        note("long job rendering remotely")
        t_stop = time.monotonic()
        ray.shutdown()  # the whole cluster: head, raylet, the replica
        out["stop_seconds"] = round(time.monotonic() - t_stop, 2)
        note("cluster stopped")
        status.wait("/livegen/ack", job["mark"], timeout=60,
                    where=lambda p: p[0] == job["job"] and str(p[1]).startswith("rendering locally"))
        out["fallback_after_stop"] = round(time.monotonic() - t_stop, 2)
        note("fallback announced")
        # the loop answers during the outage
        lat = []
        for _ in range(5):
            t = time.monotonic()
            query()
            lat.append(time.monotonic() - t)
        out["status_latency_max"] = round(max(lat), 3)
        out["in_flight"] = finish(job, timeout=180)
        note("in-flight job done")
        # 3. the first request of step 1 again: now rendered here, the same samples
        out["after_stop"] = finish(generate(101, 4), timeout=120)
        note("same request done after the stop")
        out["final_pool"] = query()["worker"]["pool"]
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        t = time.monotonic()
        try:
            out["daemon_rc"] = daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            out["daemon_rc"] = "killed"
        out["daemon_stop_seconds"] = round(time.monotonic() - t, 2)
        status.close()
        if ray.is_initialized():
            ray.shutdown()
        out["log"] = log.read_text(errors="replace")[-6000:]
        result_path.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
