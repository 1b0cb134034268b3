"""The daemon on a Ray pool, then the cluster stopped mid-set: run inside a network namespace with
only ``lo`` (test_daemon_pool.py starts it there), since a cluster of several processes binds the
machine's external address otherwise.

``python tests/integration/pool_scenario.py CONFIG RESULT.json``. This process is the cluster's
head (``ray.init()``; the cluster stops with ``ray.shutdown()``), deploys the pool, starts the
daemon (``engine.kind: ray``), drives it over OSC and writes what it saw to RESULT.json.

The steps: a clip rendered by the pool; a stalled replica (SIGSTOP mid-render, a hung GPU box:
the job is late, rendered here, then the replica resumes and the pool renders again); the cluster
stopped mid-job; the first request again, rendered here. The only processes signalled are this
process's own descendants (the replica, found by its process title, is a worker of this head's
raylet), and a stopped replica is always continued.
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


def own_processes() -> dict[int, str]:
    """This process's descendants (the cluster's raylet and workers, the daemon, its bridge):
    pid -> command line, from ``ps``."""
    rows = subprocess.run(["ps", "-e", "-ww", "-o", "pid=,ppid=,args="], capture_output=True, text=True,
                          check=True).stdout
    children: dict[int, list[int]] = {}
    args: dict[int, str] = {}
    for line in rows.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
            continue
        pid, ppid = int(parts[0]), int(parts[1])
        args[pid] = parts[2] if len(parts) > 2 else ""
        children.setdefault(ppid, []).append(pid)
    out: dict[int, str] = {}
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out[child] = args[child]
                todo.append(child)
    return out


def replicas(app: str) -> list[int]:
    """The PIDs of this cluster's Serve replicas of ``app`` (their title: ray::ServeReplica:APP:...)."""
    return sorted(p for p, a in own_processes().items() if "ServeReplica" in a and f"{app}:" in a)


def proc_state(pid: int) -> str | None:
    """The process's state letter (``T``: stopped), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_own_replica(pid: int, app: str) -> bool:
    """Whether ``pid`` is (still) a Serve replica of ``app`` descending from this process (from
    /proc alone: it must hold even when ``ps`` cannot run)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if "ServeReplica" not in title or f"{app}:" not in title:
        return False
    p = pid
    for _ in range(64):
        try:
            p = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if p == os.getpid():
            return True
        if p <= 1:
            return False
    return False


def signal_replica(pid: int, app: str, sig: int) -> bool:
    """``sig`` to ``pid``, only while it is one of this cluster's replicas of ``app``; False when
    it is not (gone: Serve may have replaced it)."""
    if not is_own_replica(pid, app):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def main() -> int:
    config, result_path, port, status_port, folder = (Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]),
                                                      int(sys.argv[4]), Path(sys.argv[5]))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    from livegen.engine.ray_pool import DEPLOYMENT, deploy
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
            sent = time.monotonic()  # at most the daemon's trigger time (it receives this later)
            client.send(port, "/livegen/generate", f"pool clip {seed}")
            ack = status.wait("/livegen/ack", mark, timeout=20, where=lambda p: str(p[1]).startswith("queued"))
            return {"job": ack.params[0], "mark": mark, "seen": seen, "t": time.monotonic(), "sent": sent}

        def falls_back(job: dict):  # noqa: ANN202 - a predicate on an ack's params
            return lambda p: p[0] == job["job"] and str(p[1]).startswith("rendering locally")

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
        # 2. a stalled replica (a hung GPU box): SIGSTOP while it renders; the job is late, the
        # daemon says so by its deadline and renders it here, its loop answering all along
        app = f"{settings.engine.deployment}-default"
        budget = float(settings.engine.remote_deadline)
        found = replicas(app)
        assert len(found) == 1, (app, own_processes())
        replica = found[0]
        out["stall"] = stall = {"replica_pid": replica, "remote_deadline": budget}
        job = generate(303, 8)
        status.wait("/livegen/progress", job["mark"], timeout=60, where=lambda p: p[0] == job["job"])
        stopped = False
        try:
            stopped = signal_replica(replica, app, signal.SIGSTOP)
            assert stopped, (replica, own_processes())
            stall["stopped_after"] = round(time.monotonic() - job["sent"], 2)
            time.sleep(0.05)
            stall["replica_state"] = proc_state(replica)
            note("replica stopped")
            lat, pools, fell = [], [], None
            end = job["sent"] + budget + 30
            while fell is None:
                t = time.monotonic()
                pools.append(query()["worker"]["pool"])
                lat.append(time.monotonic() - t)
                try:
                    fell = status.wait("/livegen/ack", job["mark"], timeout=0.25, where=falls_back(job))
                except AssertionError:
                    if time.monotonic() > end:
                        raise
            stall["fallback_after_trigger"] = round(time.monotonic() - job["sent"], 2)
            stall["reason"] = str(fell.params[1])
            note("stalled job: fallback announced")
            stall["status_latency_max"] = round(max(lat), 3)
            stall["status_queries"] = len(lat)
            stall["remote_running_while_stalled"] = pools[0]["remote_running"]
            stall["state_while_stalled"] = pools[-1]["state"]
            stall["job"] = finish(job, timeout=120)  # here, the replica still stopped
            stall["replica_state_at_done"] = proc_state(replica)
            note("stalled job done here")
        finally:
            if stopped:  # gone instead when Serve replaced it (a failed health check) meanwhile
                stall["continued"] = signal_replica(replica, app, signal.SIGCONT)
                stall["continued_after"] = round(time.monotonic() - job["sent"], 2)
        time.sleep(0.05)
        stall["replica_state_after_cont"] = proc_state(replica)
        note("replica continued")
        # the pool renders again: Serve still reports the deployment healthy (or replaced the
        # replica), and a request completes there without a fallback
        from ray import serve

        t_cont = time.monotonic()
        end = t_cont + 120
        serve_states = []
        while True:
            dep = serve.status().applications[app].deployments[DEPLOYMENT]
            serve_states.append((str(dep.status), dict(dep.replica_states)))
            if str(dep.status).rsplit(".", 1)[-1] == "HEALTHY" and dep.replica_states.get("RUNNING", 0) >= 1 \
                    and query()["worker"]["pool"]["state"] == "connected":
                break
            assert time.monotonic() < end, serve_states
            time.sleep(0.2)
        stall["serve_states"] = [s for i, s in enumerate(serve_states) if i == 0 or s != serve_states[i - 1]]
        tries = []
        while True:
            tries.append(finish(generate(404, 4), timeout=120))
            if not tries[-1]["fallback"]:
                break
            assert time.monotonic() < end, tries
            time.sleep(1.0)
        stall["recovery_tries"] = len(tries)
        stall["recovery_fallbacks"] = [t["fallback"] for t in tries[:-1]]
        stall["recovered_after_cont"] = round(time.monotonic() - t_cont, 2)
        stall["recovered"] = tries[-1]
        stall["replicas_after"] = replicas(app)
        stall["replica_restarted"] = stall["replicas_after"] != [replica]
        out["after_stall"] = query()["worker"]["pool"]
        note("pool renders again")
        # 3. a long clip in flight on the pool when the cluster stops
        job = generate(202, 30)
        status.wait("/livegen/progress", job["mark"], timeout=60, where=lambda p: p[0] == job["job"])
        note("long job rendering remotely")
        t_stop = time.monotonic()
        ray.shutdown()  # the whole cluster: head, raylet, the replica
        out["stop_seconds"] = round(time.monotonic() - t_stop, 2)
        note("cluster stopped")
        status.wait("/livegen/ack", job["mark"], timeout=60, where=falls_back(job))
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
        # 4. the first request of step 1 again: now rendered here, the same samples
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
