"""Shared test fixtures.

Parity tests need the PyTorch reference stack and real-time tests need a JACK server. Locally
they skip when those are missing; CI sets ``LIVEGEN_REQUIRE_PARITY=1`` and
``LIVEGEN_REQUIRE_REALTIME=1`` which turn every such skip into a failure, so a required part
can never be skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from livegen import _blas

_blas.preload()  # the optimised BLAS before anything imports mlx.core (the entry points' contract)


def _required(var: str) -> bool:
    return os.environ.get(var, "").strip() not in ("", "0", "false", "no")


def require_or_skip(var: str, reason: str) -> None:
    if _required(var):
        pytest.fail(f"{reason} (required because {var} is set)", pytrace=False)
    pytest.skip(reason)


def need_parity(module: str):
    """Import a reference module or skip (fail under LIVEGEN_REQUIRE_PARITY)."""
    try:
        return __import__(module, fromlist=["_"])
    except Exception as exc:  # ImportError, or a broken native library
        require_or_skip("LIVEGEN_REQUIRE_PARITY", f"reference {module} unavailable: {exc}")


@pytest.fixture(scope="session")
def torch_ref():
    torch = need_parity("torch")
    torch.manual_seed(0)
    return torch


@pytest.fixture(scope="session")
def transformers_ref(torch_ref):
    return need_parity("transformers")


@pytest.fixture(scope="session")
def sat_ref(torch_ref):
    """stable-audio-tools' factory and sampling modules (see tests/reference/sat.py)."""
    try:
        from tests.reference import sat

        return sat.load()
    except Exception as exc:
        require_or_skip("LIVEGEN_REQUIRE_PARITY", f"stable-audio-tools unavailable: {exc}")


@pytest.fixture(scope="session")
def jack_server():
    """A running JACK server (the CI starts `jackd -d dummy`); skip/fail otherwise."""
    if shutil.which("jack_lsp") is None:
        require_or_skip("LIVEGEN_REQUIRE_REALTIME", "JACK tools are not installed")
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    ports = ""
    for _ in range(3):  # a busy machine can keep jack_lsp waiting; a dead server answers at once
        try:
            proc = subprocess.run(["jack_lsp"], capture_output=True, text=True, env=env, timeout=15)
        except subprocess.TimeoutExpired:
            continue
        if proc.returncode == 0:
            ports = proc.stdout
            break
    if "system:playback_1" not in ports:
        require_or_skip("LIVEGEN_REQUIRE_REALTIME", "no JACK server is running (start bin/livegen-jack-dummy)")
    return ports.split()


@pytest.fixture(scope="session")
def jack_log():
    """The JACK server's log (``LIVEGEN_JACK_LOG``, set by CI): which client lost a cycle
    (tests/jack_log.py)."""
    from tests.jack_log import JackLog

    return JackLog()


@pytest.fixture(autouse=True)
def _restore_mlx_configuration():
    """A test that starts a generation worker switches the process to the daemon's realtime
    configuration (livegen.device.configure_mlx); later tests get back what was there before."""
    from livegen import device

    saved = device._configured
    yield
    device._configured = saved


def pytest_unconfigure(config) -> None:
    """The test process's own MLX streams, released on the main thread before the interpreter
    finalises (mx.clear_streams, as MLX asks): the full suite's pytest process ended with a
    segfault (exit status 139) after every test had run."""
    from livegen.engine.worker import release_mlx_streams

    release_mlx_streams()
