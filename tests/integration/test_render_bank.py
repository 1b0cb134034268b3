"""`livegen render`: a bank rendered ahead of a set, resumed after a kill, then served by the daemon.

Real processes throughout: the CLI (``python -m livegen render``) on the tiny checkpoint, killed
by its PID with SIGKILL mid-run and run again; then the daemon (``python -m livegen serve``) on the
same settings and cache directory, driven over OSC.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from livegen.output import prerender as pc
from livegen.request import Request
from tests.integration.conftest import REPO, Daemon, OscClient, free_port, stop_daemon, write_settings

pytestmark = pytest.mark.realtime

PROMPTS = ("kick drum", "snare hit", "warm pad")
MAPPING = """\
name: bank
params:
  seconds: 0.4
  steps: 8
  launch: now
midi:
""" + "".join(f"  - note: {60 + i}\n    action: generate\n    prompt: {p}\n" for i, p in enumerate(PROMPTS)) + """\
osc:
  - address: /t/kick
    action: generate
    prompt: kick drum
"""


def _env(model: dict) -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", LIVEGEN_CACHE=str(model["cache"]), PYTHONPATH=str(REPO))


def _setup(tmp: Path, model: dict) -> tuple[Path, Path, Path, int, OscClient]:
    mapping = tmp / "mapping.yaml"
    mapping.write_text(MAPPING)
    cache = tmp / "cache"
    config = tmp / "livegen.yaml"
    status = OscClient()
    port = free_port()
    daw = tmp / "daw"
    daw.mkdir()
    write_settings(config, model, port, status.port, daw, mapping, audio=False, midi=False)
    with open(config, "a") as f:
        f.write(f"prerender:\n  enabled: true\n  variations: 2\n  memory_mb: 16\n  directory: {cache}\n")
    return config, mapping, cache, port, status


def _render_cmd(mapping: Path, config: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "livegen", "render", str(mapping), "--config", str(config), "--variations", "2",
            "--cache", str(cache), "--no-progress", *extra]


def _kept(cache: Path) -> dict[str, int]:
    """Complete kept entries (their .json exists) -> mtime of the .npy (ns)."""
    return {p.stem: p.with_suffix(".npy").stat().st_mtime_ns for p in cache.glob("*.json")}


def test_render_bank_resumes_after_kill_and_daemon_serves_it(tiny_model, tmp_path):
    config, mapping, cache, port, status = _setup(tmp_path, tiny_model)
    env = _env(tiny_model)
    # 1. a run killed (SIGKILL, by its PID) after two clips are complete
    proc = subprocess.Popen(_render_cmd(mapping, config, cache), env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    try:
        while len(_kept(cache) if cache.is_dir() else {}) < 2:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the render wrote no clips"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    before = _kept(cache)
    assert 2 <= len(before) < 6, f"the run was not interrupted mid-bank: {len(before)} clips"
    # 2. resumed: only the missing clips are rendered, the finished ones are not touched
    out = subprocess.run(_render_cmd(mapping, config, cache, "--folder", str(tmp_path / "daw2")), env=env,
                         cwd=str(REPO), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"rendered {6 - len(before)}, skipped {len(before)}" in out.stdout, out.stdout + out.stderr
    after = _kept(cache)
    assert len(after) == 6
    assert {k: after[k] for k in before} == before  # same files, same mtimes
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]
    # the folder got every clip (those rendered before the kill are copied from the cache)
    wavs = sorted((tmp_path / "daw2").glob("*.wav"))
    assert len(wavs) == 6
    # each prompt has two variations with the daemon's derived seeds
    metas = [json.loads((cache / f"{k}.json").read_text()) for k in after]
    assert sorted(m["request"]["prompt"] for m in metas) == sorted(PROMPTS * 2)
    for m in metas:
        req = Request(**{**m["request"], "outputs": tuple(m["request"]["outputs"])})
        assert m["seed"] in {pc.variation_seed(req, i) for i in (0, 1)}
    # 3. a third run has nothing to do
    out = subprocess.run(_render_cmd(mapping, config, cache), env=env, cwd=str(REPO), capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0 and "rendered 0, skipped 6" in out.stdout, out.stdout + out.stderr

    # 4. the daemon on that cache: serves them as cached pads, renders nothing in idle time
    daemon = _start(tmp_path, config, port, status, tiny_model)
    client = OscClient()
    try:
        st = daemon.query_status(client)
        assert st["prerender"]["kept_clips"] == 6, st["prerender"]
        mark = daemon.status.mark()
        client.send(port, "/t/kick")
        ack = daemon.status.wait("/livegen/ack", mark, timeout=20, where=lambda p: p[1] == "cached: kick drum")
        daemon.status.wait("/livegen/done", mark, timeout=10, where=lambda p: p[0] == ack.params[0])
        assert not [m for m in daemon.status.since(mark)
                    if m.address == "/livegen/progress" and m.params[0] == ack.params[0]]
        time.sleep(1.0)
        st = daemon.query_status(client)
        assert st["prerender"]["hits"] == 1
        # the clip the daemon played is a kept file, sample for sample (its folder copy)
        wav = _wait_wav(daemon.folder, set())
        played, _ = sf.read(wav, dtype="float32", always_2d=True)
        kept = [np.load(cache / f"{k}.npy") for k in after]
        assert any(a.shape == played.T.shape and np.array_equal(a, played.T) for a in kept)
        # 5. the daemon rendering the same request and seed itself gives the same samples
        meta = next(m for m in metas if m["request"]["prompt"] == "kick drum")
        seen = set(daemon.folder.glob("*.wav"))
        mark = daemon.status.mark()
        client.send(port, "/livegen/set", "seed", int(meta["seed"]))
        client.send(port, "/t/kick")
        ack = daemon.status.wait("/livegen/ack", mark, timeout=20, where=lambda p: str(p[1]).startswith("queued"))
        daemon.status.wait("/livegen/done", mark, timeout=60, where=lambda p: p[0] == ack.params[0])
        rendered, _ = sf.read(_wait_wav(daemon.folder, seen), dtype="float32", always_2d=True)
        key = pc.entry_name(pc.cache_key(Request(**{**meta["request"], "outputs": ("play",)})
                                         .replace(seed=int(meta["seed"]))))
        np.testing.assert_array_equal(rendered.T, np.load(cache / f"{key}.npy"))
    finally:
        client.close()
        rc, _ = stop_daemon(daemon)
    assert rc == 0, daemon.log_text()
    assert sorted(_kept(cache)) == sorted(after)  # playing a kept clip never deletes it


def _gcs_pids() -> set[int]:
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if "gcs_server" in line}


def test_render_bank_on_a_private_ray_cluster_gives_the_local_files(tiny_model, tmp_path):
    """`livegen render --ray local`: a private cluster started for the run (2 replicas), the same
    files as the local engine's, and no Ray process left after."""
    from tests.conftest import require_or_skip

    try:
        import ray  # noqa: F401
    except ImportError as exc:
        require_or_skip("LIVEGEN_REQUIRE_RAY", f"ray[serve] is not installed (pip install -e .[ray]): {exc}")
    config, mapping, cache, _, status = _setup(tmp_path, tiny_model)
    status.close()
    env = dict(_env(tiny_model), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               LIVEGEN_CPU_THREADS="1")  # both runs and the replicas: the same BLAS threads, the same samples
    local = subprocess.run(_render_cmd(mapping, config, cache), env=env, cwd=str(REPO), capture_output=True,
                           text=True, timeout=300)
    assert local.returncode == 0 and "rendered 6" in local.stdout, local.stdout + local.stderr
    before = _gcs_pids()
    pooled = tmp_path / "pooled"
    run = subprocess.run(_render_cmd(mapping, config, pooled, "--ray", "local", "--replicas", "2"), env=env,
                         cwd=str(REPO), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0 and "rendered 6" in run.stdout, run.stdout + run.stderr[-4000:]
    assert "Ray pool (default: 2 replica(s))" in run.stderr, run.stderr[-2000:]
    names = sorted(p.name for p in cache.glob("*.npy"))
    assert len(names) == 6 and names == sorted(p.name for p in pooled.glob("*.npy"))
    for name in names:
        np.testing.assert_array_equal(np.load(cache / name), np.load(pooled / name))
    deadline = time.monotonic() + 20
    while _gcs_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _gcs_pids() - before, "the run's Ray cluster is still running"


def _wait_wav(folder: Path, seen: set[Path], timeout: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [p for p in folder.glob("*.wav") if p not in seen and p.with_suffix(".json").exists()]
        if new:
            return new[0]
        time.sleep(0.05)
    raise AssertionError(f"no new WAV in {folder}")


def _start(tmp: Path, config: Path, port: int, status: OscClient, model: dict) -> Daemon:
    log = tmp / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "livegen", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=_env(model), cwd=str(REPO))
    daemon = Daemon(proc, port, status, tmp / "daw", log, tmp / "mapping.yaml")
    deadline = time.monotonic() + 180
    while not [m for m in status.messages if m.address == "/livegen/ready"]:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}):\n{daemon.log_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the daemon did not get ready:\n{daemon.log_text()}")
        time.sleep(0.1)
    return daemon
