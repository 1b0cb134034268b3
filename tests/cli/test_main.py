"""`livegen` main: user errors are one sentence, unexpected ones an 'internal error' sentence, and
tracebacks only with --log-level debug or LIVEGEN_DEBUG=1."""

from __future__ import annotations

import pytest

import livegen.cli.send as send
from livegen.cli import main, sentence
from livegen.errors import WeightsError


def _raise(exc: BaseException):
    def run(_args):
        raise exc

    return run


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("LIVEGEN_DEBUG", raising=False)


def test_livegen_error_is_one_sentence(monkeypatch, capsys):
    monkeypatch.setattr(send, "run", _raise(WeightsError("/m/config.json is missing; convert it again")))
    assert main(["send", "127.0.0.1:9", "/x"]) == 2
    err = capsys.readouterr().err
    assert err == "livegen send: /m/config.json is missing; convert it again.\n"


def test_unexpected_error_hides_class_and_traceback(monkeypatch, capsys):
    monkeypatch.setattr(send, "run", _raise(KeyError("slot")))
    assert main(["send", "127.0.0.1:9", "/x"]) == 1
    err = capsys.readouterr().err
    assert err == ("livegen send: internal error: 'slot'; run with --log-level debug or LIVEGEN_DEBUG=1 for the "
                   "traceback, and please report it.\n")
    assert "KeyError" not in err and "Traceback" not in err
    monkeypatch.setenv("LIVEGEN_DEBUG", "1")
    assert main(["send", "127.0.0.1:9", "/x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("livegen send: internal error: 'slot';") and "Traceback" in err and "KeyError" in err


def test_sentence():
    assert sentence("a problem") == "a problem."
    assert sentence("done.") == "done."
    assert sentence("first\n  second:") == "first; second."


def test_no_class_names_in_cli_messages():
    import pathlib
    import re

    cli = pathlib.Path(send.__file__).parent
    for path in cli.glob("*.py"):
        text = path.read_text()
        assert "type(exc).__name__" not in text, path
        assert not re.search(r"\{exc!r\}", text), path
