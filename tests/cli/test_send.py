"""`livegen send` against a real UDP socket that answers from a thread (in-process, no daemon)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pythonosc.osc_packet import OscPacket

from livegen.cli import main
from livegen.control.osc import build_message


class FakeDaemon:
    """Answers each message it receives with ``script(address, params)``: a list of
    ``(address, args, types)`` replies sent to the sender, ``delay`` seconds apart."""

    def __init__(self, script, delay: float = 0.0):
        self.script = script
        self.delay = delay
        self.received: list[tuple[str, list]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            for m in OscPacket(data).messages:
                address, params = m.message.address, list(m.message.params)
                self.received.append((address, params))
                for reply_address, reply_args, types in self.script(address, params):
                    time.sleep(self.delay)
                    self.sock.sendto(build_message(reply_address, reply_args, types=types), sender)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def daemon_with():
    made: list[FakeDaemon] = []

    def make(script, delay: float = 0.0) -> FakeDaemon:
        d = FakeDaemon(script, delay)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_listener_says_so(capsys):
    port = _free_port()
    t0 = time.monotonic()
    assert main(["send", f"127.0.0.1:{port}", "/livegen/status", "--wait-reply", "1"]) == 1
    assert time.monotonic() - t0 < 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("livegen send: ") and err.endswith("is `livegen serve` running there?")
    assert f"127.0.0.1:{port}" in err and "\n" not in err


def test_silent_listener_times_out_with_a_sentence(daemon_with, capsys):
    d = daemon_with(lambda a, p: [])
    t0 = time.monotonic()
    assert main(["send", d.target, "/livegen/status", "--wait-reply", "0.5"]) == 1
    assert 0.4 < time.monotonic() - t0 < 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (f"livegen send: no reply from {d.target} within 0.5 s: "
                                    "is `livegen serve` running there?")
    assert d.received == [("/livegen/status", [])]


def test_default_waits_and_set_is_answered_by_its_echo(daemon_with, capsys):
    # the review's case: a successful set was silent, so `--wait-reply 1` said "no reply" and exited 1
    d = daemon_with(lambda a, p: [("/livegen/get", [p[0], p[1]], "sf")] if a == "/livegen/set" else [])
    assert main(["send", d.target, "/livegen/set", "cfg", "4.5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "/livegen/get 'cfg' 4.5" and captured.err == ""
    assert d.received == [("/livegen/set", ["cfg", 4.5])]


def test_ack_status_ready_are_final(daemon_with, capsys):
    replies = {"/livegen/generate": [("/livegen/ack", [7, "queued"], "is"),
                                     ("/livegen/progress", [7, 1, 8], "iii")],
               "/livegen/status": [("/livegen/status", [1, 0, 0, 3, 0, 0, 120.0, "{}"], "iiiiiifs")],
               "/livegen/reload": [("/livegen/ready", [], None)]}
    d = daemon_with(lambda a, p: replies.get(a, []))
    assert main(["send", d.target, "/livegen/generate", "dub", "techno", "--wait-reply", "2"]) == 0
    assert capsys.readouterr().out.strip() == "/livegen/ack 7 'queued'"  # stops at the ack
    assert d.received[-1] == ("/livegen/generate", ["dub", "techno"])
    assert main(["send", d.target, "/livegen/status"]) == 0
    assert capsys.readouterr().out.strip() == "/livegen/status 1 0 0 3 0 0 120.0 '{}'"
    assert main(["send", d.target, "/livegen/reload"]) == 0
    assert capsys.readouterr().out.strip() == "/livegen/ready"


def test_error_reply_exits_1_with_the_reason(daemon_with, capsys):
    d = daemon_with(lambda a, p: [("/livegen/error", ["unknown parameter 'cfgg'; did you mean cfg?"], "s")])
    assert main(["send", d.target, "/livegen/set", "cfgg", "3"]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "/livegen/error \"unknown parameter 'cfgg'; did you mean cfg?\""
    assert captured.err.strip() == (f"livegen send: {d.target} answered with an error: "
                                    "unknown parameter 'cfgg'; did you mean cfg?")


def test_until_done_follows_the_job(daemon_with, capsys):
    script = [("/livegen/ack", [3, "queued"], "is"), ("/livegen/progress", [3, 1, 2], "iii"),
              ("/livegen/done", [9, "/other.wav", 1.0], "isf"),  # another job's: not ours
              ("/livegen/progress", [3, 2, 2], "iii"), ("/livegen/done", [3, "/x/clip.wav", 2.5], "isf")]
    d = daemon_with(lambda a, p: script, delay=0.02)
    assert main(["send", d.target, "/livegen/generate", "pad", "--until-done"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["/livegen/ack 3 'queued'", "/livegen/progress 3 1 2", "/livegen/done 9 '/other.wav' 1.0",
                     "/livegen/progress 3 2 2", "/livegen/done 3 '/x/clip.wav' 2.5"]


def test_until_done_job_error_and_silence(daemon_with, capsys):
    d = daemon_with(lambda a, p: [("/livegen/ack", [4, "queued"], "is"),
                                  ("/livegen/error", [4, "the model ran out of memory."], "is")])
    assert main(["send", d.target, "/livegen/generate", "x", "--until-done"]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "/livegen/error 4 'the model ran out of memory.'"
    assert captured.err.strip() == "livegen send: job 4 failed: the model ran out of memory."
    quiet = daemon_with(lambda a, p: [("/livegen/ack", [5, "queued"], "is")])
    assert main(["send", quiet.target, "/livegen/generate", "x", "--until-done", "--wait-reply", "0.4"]) == 1
    assert (f"no done or error for job 5 from {quiet.target} within 0.4 s of its last reply."
            in capsys.readouterr().err)


def test_no_wait_sends_and_exits(daemon_with, capsys):
    d = daemon_with(lambda a, p: [])
    t0 = time.monotonic()
    assert main(["send", d.target, "/livegen/trigger", "2", "--no-wait"]) == 0
    assert time.monotonic() - t0 < 1
    assert capsys.readouterr().out == ""
    for _ in range(50):
        if d.received:
            break
        time.sleep(0.02)
    assert d.received == [("/livegen/trigger", [2])]


@pytest.mark.parametrize("argv, message", [
    (["send", "localhost", "/x"], "the target must be HOST:PORT (e.g. 127.0.0.1:9000), not localhost."),
    (["send", "127.0.0.1:9000", "x"], "an OSC address starts with '/', not x."),
    (["send", "127.0.0.1:9000", "/x", "1", "--types", "ii"], "2 type tag(s) for 1 argument(s)."),
    (["send", "127.0.0.1:9000", "/x", "--no-wait", "--until-done"], "--until-done needs to listen for replies"),
])
def test_usage_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("livegen send: ") and message in err and "\n" not in err
