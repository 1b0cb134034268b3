"""Fixtures for the daemon integration tests: a tiny real checkpoint, the real daemon process,
OSC clients, a JACK recorder and a folder watcher.

One daemon (``python -m livegen serve``) is shared by this package's tests; it plays through JACK
(the CI's dummy server) and writes into a temporary DAW folder. Its ``osc.status_port`` points
at ``status``, a listener that receives every push (ready, progress, done, error).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_packet import OscPacket

from livegen.control.osc import build_message
from tests.conftest import require_or_skip
from tests.integration.jack_recorder import Recorder  # noqa: F401  (the tests' JACK recorder)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SIZE = 22528  # the tiny model's window: 0.51 s at 44.1 kHz (attention cost grows as length^2)
MIDI_PORT = "lgtest"
# the JACK clients a test daemon opens: audio (audio.client_name, or PortAudio's with the python
# backend), MIDI in (midi.port_name) with its guard and lister, MIDI out, the stream guard's probe
DAEMON_CLIENTS = ("livegen", "PortAudio", "livegen-probe", MIDI_PORT, f"{MIDI_PORT}_guard", f"{MIDI_PORT}_list",
                  f"{MIDI_PORT}_out")

MAPPING = """\
name: integration
params:
  prompt: test tone
  seconds: 0.1
  steps: 2
  launch: now
midi:
  - note: 60-61
    action: generate
    prompt: "midi pad {pad}"
    seconds: 0.1
  - cc: 1
    action: set
    param: steps
    range: [1, 8]
osc:
  - address: /test/pad/{pad}
    action: generate
    prompt: "osc pad {pad}"
    seconds: 0.05
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OscClient:
    """A UDP socket that sends OSC and collects every message sent back to it."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.messages: list[OscMessage] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data, _ = self.sock.recvfrom(65536)
            except OSError:
                return
            try:
                msgs = [m.message for m in OscPacket(data).messages]
            except Exception:  # noqa: BLE001 - record nothing for garbage
                continue
            with self._cond:
                self.messages.extend(msgs)
                self._cond.notify_all()

    def send(self, target: int, address: str, *args: Any, types: str | None = None) -> None:
        self.sock.sendto(build_message(address, args, types=types), ("127.0.0.1", target))

    def send_raw(self, target: int, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", target))

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def wait(self, address: str, since: int = 0, timeout: float = 60.0, where=None) -> OscMessage:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[since:]:
                    if m.address == address and (where is None or where(m.params)):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(m.address, m.params) for m in self.messages[since:]]
                    raise AssertionError(f"no {address} within {timeout} s; got {got}")
                self._cond.wait(left)

    def since(self, mark: int) -> list[OscMessage]:
        with self._cond:
            return list(self.messages[mark:])

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class Daemon:
    def __init__(self, proc: subprocess.Popen, port: int, status: OscClient, folder: Path, log: Path,
                 mapping: Path) -> None:
        self.proc = proc
        self.port = port
        self.status = status
        self.folder = folder
        self.log = log
        self.mapping = mapping

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def query_status(self, client: OscClient) -> dict:
        mark = client.mark()
        client.send(self.port, "/livegen/status")
        msg = client.wait("/livegen/status", mark, timeout=10)
        return json.loads(msg.params[-1])

    def alive(self) -> bool:
        return self.proc.poll() is None


def write_settings(path: Path, model: dict, port: int, status_port: int, folder: Path | None,
                   mapping: Path, audio: bool = True, midi: bool = True, midi_port: str = MIDI_PORT,
                   prerender: bool = False, musicgen: bool = False, finish_running_on_shutdown: bool = False,
                   midi_connect: list[str] | None = None, web_port: int | None = None,
                   web_host: str | None = None, audio_lines: tuple[str, ...] = ()) -> None:
    lines = [
        "models:",
        "  default:",
        "    engine: stable-audio",
        f"    path: {model['model']}",
        f"    t5: {model['t5']}",
        "    seconds: 0.1",
        "    steps: 2",
        *(["  mg:", "    engine: musicgen", f"    path: {model['musicgen']}", "    seconds: 0.1",
           "    top_k: 8"] if musicgen else []),
        "osc:",
        f"  port: {port}",
        f"  status_port: {status_port}",
        "midi:",
        f"  enabled: {'true' if midi else 'false'}",
        f"  port_name: {midi_port}",
        "  api: jack",
        *([f"  connect: [{', '.join(midi_connect)}]"] if midi_connect else []),
        "audio:",
        f"  enabled: {'true' if audio else 'false'}",
        *(f"  {line}" for line in audio_lines),  # more audio settings, e.g. "stream: false"
        "engine:",
        "  warmup_seconds: [0.1]",
        "  max_seconds: 0.5",
        *(["  finish_running_on_shutdown: true"] if finish_running_on_shutdown else []),
        f"mappings: [{mapping}]",
    ]
    if folder is not None:
        lines += ["folder:", f"  path: {folder}"]
    if prerender:
        lines += ["prerender:", "  enabled: true", "  variations: 1", "  memory_mb: 16"]
    # the browser surface only where a test asks for it (on a port of its own)
    lines += ["web:", f"  port: {web_port}"] if web_port else ["web:", "  enabled: false"]
    if web_port and web_host:
        lines.append(f"  host: {web_host}")
    path.write_text("\n".join(lines) + "\n")


def start_daemon(tmp: Path, model: dict, audio: bool = True, midi: bool = True,
                 folder: bool = True, midi_port: str = MIDI_PORT, prerender: bool = False,
                 musicgen: bool = False, mapping_text: str = MAPPING, finish_running_on_shutdown: bool = False,
                 midi_connect: list[str] | None = None, web_port: int | None = None,
                 web_host: str | None = None, audio_lines: tuple[str, ...] = ()) -> Daemon:
    tmp.mkdir(parents=True, exist_ok=True)
    daw = tmp / "daw"
    daw.mkdir(exist_ok=True)
    mapping = tmp / "mapping.yaml"
    mapping.write_text(mapping_text)
    status = OscClient()
    port = free_port()
    config = tmp / "livegen.yaml"
    write_settings(config, model, port, status.port, daw if folder else None, mapping, audio, midi, midi_port,
                   prerender, musicgen, finish_running_on_shutdown, midi_connect, web_port=web_port,
                   web_host=web_host, audio_lines=audio_lines)
    env = dict(os.environ, JACK_NO_START_SERVER="1", PYTHONUNBUFFERED="1",
               LIVEGEN_CACHE=str(model["cache"]), PYTHONPATH=str(REPO))
    log = tmp / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "livegen", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    daemon = Daemon(proc, port, status, daw, log, mapping)
    deadline = time.monotonic() + 180
    while not any(m.address == "/livegen/ready" for m in daemon.status.messages):  # stall notices may follow
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}):\n{daemon.log_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the daemon did not get ready:\n{daemon.log_text()}")
        time.sleep(0.1)
    return daemon


def stop_daemon(daemon: Daemon, timeout: float = 10.0) -> tuple[int, float]:
    t0 = time.monotonic()
    if daemon.alive():
        daemon.proc.send_signal(signal.SIGTERM)
    try:
        rc = daemon.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        rc = daemon.proc.wait()
    daemon.status.close()
    return rc, time.monotonic() - t0


@pytest.fixture(scope="session")
def tiny_model(sat_ref, transformers_ref, tmp_path_factory) -> dict:
    """Tiny random checkpoints in the real formats: Stable Audio (+ its T5) and MusicGen (32 kHz)."""
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen
    from tests.reference.sa_checkpoint import build_tiny_stable_audio

    root = tmp_path_factory.mktemp("tiny-models")
    info = build_tiny_stable_audio(root, "small", sample_size=SAMPLE_SIZE)
    make_tiny_musicgen(root / "musicgen", "mono")
    return {"model": info["checkpoint_dir"], "t5": info["t5_dir"], "musicgen": root / "musicgen",
            "cache": root / "cache"}


@pytest.fixture(scope="package")
def daemon(jack_server, tiny_model, tmp_path_factory):
    """The shared daemon; package scope, so it is gone before other packages' real-time tests run."""
    for tool in ("oscsend", "inotifywait", "soxi", "pd", "jack_midiseq", "jack_connect"):
        if shutil.which(tool) is None:
            require_or_skip("LIVEGEN_REQUIRE_REALTIME",
                            f"{tool} is not installed (liblo-tools, inotify-tools, sox, puredata-core, jack-tools)")
    try:
        import jack  # noqa: F401  (JACK-Client, for the recorder)
    except (ImportError, OSError) as exc:
        require_or_skip("LIVEGEN_REQUIRE_REALTIME", f"JACK-Client is not usable: {exc}")
    before = portaudio_ports()
    d = start_daemon(tmp_path_factory.mktemp("daemon"), tiny_model, musicgen=True)
    try:
        d.ports = wait_new_ports(before)  # type: ignore[attr-defined]
        yield d
    finally:
        stop_daemon(d)


@pytest.fixture()
def client():
    c = OscClient()
    yield c
    c.close()


# ---------------------------------------------------------------------------------------- JACK
AUDIO_PORTS = "(PortAudio|livegen)[^:]*:out_.*"  # the daemon's output ports: audio.client_name (livegen), or PortAudio


def portaudio_ports() -> set[tuple[str, int]]:
    """(name, uuid) of every PortAudio output port: a client re-created under a freed name (other
    PortAudio users on the same server) still gets new port uuids."""
    import jack

    client = jack.Client("lgprobe", no_start_server=True)
    try:
        return {(p.name, p.uuid) for p in client.get_ports(AUDIO_PORTS, is_output=True, is_audio=True)}
    finally:
        client.close()


def wait_new_ports(before: set[tuple[str, int]], timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted(name for name, _ in portaudio_ports() - before)
        if len(new) >= 2:
            return new[:2]
        time.sleep(0.1)
    raise AssertionError(f"the daemon's PortAudio ports did not appear (had {sorted(before)})")


# ---------------------------------------------------------------------------------------- folder
class FolderWatch:
    """``inotifywait -m -e close_write,moved_to`` on a folder, lines collected in a thread."""

    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen(["inotifywait", "-m", "-e", "close_write,moved_to", "--format", "%e %f",
                                      str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[tuple[str, str]] = []
        for line in self.proc.stderr:  # "Setting up watches." then "Watches established."
            if "established" in line:
                break
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            event, _, name = line.strip().partition(" ")
            self.events.append((event, name))

    def close(self) -> list[tuple[str, str]]:
        time.sleep(0.2)
        self.proc.terminate()
        self.proc.wait(5)
        self._thread.join(5)
        return list(self.events)


def exact_clock(daemon: Any, client: OscClient) -> bool:
    """Whether the daemon's audio runs the exact frame clock (livegen/output/_rtclock.c, built at
    install). Under LIVEGEN_REQUIRE_REALTIME (CI builds it) anything else fails the test."""
    audio = daemon.query_status(client)["audio"]
    exact = audio.get("clock") == "exact"
    if not exact and os.environ.get("LIVEGEN_REQUIRE_REALTIME"):
        pytest.fail(f"the daemon's audio runs without the exact clock ({audio.get('clock')!r}): "
                    "livegen/output/_rtclock.c was not built", pytrace=False)
    return exact
