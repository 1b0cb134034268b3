"""`livegen doctor` checks what `livegen serve` would load (same options, same settings loader).

Each case the review found passing as "all checks passed" is here with its exact input: no weights
and no network, a mapping serve refuses, corrupt/truncated/missing weights, JACK down with
midi.api: jack, invalid settings. Audio is disabled where the test is not about it, so the result
does not depend on the machine's sound devices.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from livegen.cli import build_parser, main
from tests.models.stable_audio.random_converted import broken_copy


@pytest.fixture(scope="module")
def tiny_converted(tmp_path_factory) -> Path:
    """The tiny random model, with a 60 s window (its weights do not depend on it) so that serve's
    checks of durations against the model pass with the default settings and mapping."""
    import json

    from tests.models.stable_audio.random_converted import write_random_converted

    out = write_random_converted(tmp_path_factory.mktemp("doctor") / "converted")
    config = json.loads((out / "config.json").read_text())
    config["sample_size"] = 60 * 44100
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("LIVEGEN_DEBUG", raising=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(tmp_path: Path, model: str, *, midi: str = "enabled: false", extra: str = "") -> Path:
    path = tmp_path / "livegen.yaml"
    path.write_text(
        f"models:\n  default:\n    engine: stable-audio\n    path: {model}\n"
        f"midi:\n  {midi}\naudio:\n  enabled: false\nosc:\n  port: {_free_port()}\n{extra}"
    )
    return path


def _doctor(capsys, *argv: str) -> tuple[int, list[str]]:
    rc = main(["doctor", *argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return rc, out.out.splitlines()


def _fails(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("[FAIL]")]


def test_doctor_takes_serves_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    opts = {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}
    assert opts["serve"] - {"--dry-run"} <= opts["doctor"]


def test_all_good_exits_0(env, tiny_converted, tmp_path, capsys):
    rc, lines = _doctor(capsys, "--config", str(_settings(tmp_path, str(tiny_converted))))
    assert rc == 0, lines
    assert lines[-1] == "all checks passed: `livegen serve` would start."
    model = next(line for line in lines if "model default" in line)
    assert model.startswith("[  ok]") and "is a converted Stable Audio model, ready to load." in model


def test_no_weights_no_network(env, tmp_path, capsys, monkeypatch):
    cfg = _settings(tmp_path, "stabilityai/stable-audio-open-small")
    rc, lines = _doctor(capsys, "--config", str(cfg))
    assert rc == 1 and lines[-1] == "1 problem(s) to fix: `livegen serve` would not start as configured."
    (line,) = _fails(lines)
    assert "is not downloaded and HF_HUB_OFFLINE is set" in line and "hf download" in line
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online mode, but the network is absent here
    rc, lines = _doctor(capsys, "--config", str(cfg))
    (line,) = _fails(lines)
    assert rc == 1 and "the Hugging Face hub cannot be reached" in line
    assert "accept its licence at https://huggingface.co/stabilityai/stable-audio-open-small" in line
    assert "`hf auth login` or set HF_TOKEN" in line


def test_mapping_serve_refuses(env, tiny_converted, tmp_path, capsys):
    mapping = tmp_path / "broken.yaml"
    mapping.write_text("midi:\n  - note: 200\n    action: generate\n    prompt: x\n  - cc: 1\n    action: fly\n")
    cfg = _settings(tmp_path, str(tiny_converted))
    rc, lines = _doctor(capsys, "--config", str(cfg), "--mapping", str(mapping))
    fails = _fails(lines)
    assert rc == 1 and len(fails) >= 2
    assert all(str(mapping) in f and "serve refuses to start with this mapping." in f for f in fails)
    assert any(":2:" in f for f in fails) and any(":6:" in f for f in fails)
    rc, lines = _doctor(capsys, "--config", str(cfg), "--mapping", "no-such-mapping")
    (line,) = _fails(lines)
    assert rc == 1 and "mapping file(s) not found: no-such-mapping" in line
    rc, lines = _doctor(capsys, "--config", str(cfg), "--mapping", "akai-mpd218")  # a shipped one, by name
    assert rc == 0 and any("akai-mpd218.yaml" in line for line in lines), lines


BROKEN = [
    ("truncated safetensors", "model.safetensors is not a valid safetensors file (truncated: tensors need"),
    ("truncated config.json", "config.json ends early at line"),
    ("config.json not JSON", "config.json is not valid JSON (Expecting value at line 1, column 1)"),
    ("no manifest.json", "manifest.json is missing"),
    ("no t5", "/t5 is missing (the T5 text encoder of a converted Stable Audio model)"),
]


@pytest.mark.parametrize("how, message", BROKEN)
def test_broken_weights_fail(env, tiny_converted, tmp_path, capsys, how, message):
    model = broken_copy(tiny_converted, tmp_path / "model", how)
    rc, lines = _doctor(capsys, "--config", str(_settings(tmp_path, str(model))))
    (line,) = _fails(lines)
    assert rc == 1 and message in line and f"delete {model} and convert the model again" in line


def test_missing_model_folder_and_model_option(env, tiny_converted, tmp_path, capsys):
    cfg = _settings(tmp_path, str(tmp_path / "gone"))
    rc, lines = _doctor(capsys, "--config", str(cfg))
    (line,) = _fails(lines)
    assert rc == 1 and f"the model folder {tmp_path / 'gone'} does not exist" in line
    rc, lines = _doctor(capsys, "--config", str(cfg), "--model", str(tiny_converted))  # as serve --model
    assert rc == 0, lines


def test_jack_down_with_midi_api_jack(env, tiny_converted, tmp_path, capsys, monkeypatch):
    from livegen.cli.doctor import compiled_midi_apis

    if "UNIX_JACK" not in compiled_midi_apis():
        pytest.skip("python-rtmidi has no JACK support here")
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "livegen-doctor-test-no-such-server")
    cfg = _settings(tmp_path, str(tiny_converted), midi="api: jack")
    rc, lines = _doctor(capsys, "--config", str(cfg))
    (line,) = _fails(lines)
    assert rc == 1 and "MIDI would use JACK (midi.api: jack) but no JACK server is running" in line
    assert "start JACK" in line


def test_invalid_settings_are_reported_not_replaced_by_defaults(env, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("osc:\n  port: 99999\nmidi:\n  api: beos\n")
    rc, lines = _doctor(capsys, "--config", str(cfg))
    fails = _fails(lines)
    assert rc == 1 and len(fails) == 2 and all(f.startswith("[FAIL] settings") for f in fails)
    assert any("osc.port" in f and "99999" in f for f in fails) and any("beos" in f for f in fails)
    assert not any("model default" in line or "[  ok] OSC" in line for line in lines)  # no defaults checked
    assert main(["doctor", "--config", str(tmp_path / "absent.yaml")]) == 1
    assert f"the settings file {tmp_path / 'absent.yaml'} does not exist" in capsys.readouterr().out


def test_unwritable_daw_folder(env, tiny_converted, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    cfg = _settings(tmp_path, str(tiny_converted), extra=f"folder:\n  path: {tmp_path / 'afile' / 'clips'}\n")
    rc, lines = _doctor(capsys, "--config", str(cfg))
    (line,) = _fails(lines)
    assert rc == 1 and "cannot be created because" in line
    cfg = _settings(tmp_path, str(tiny_converted), extra=f"folder:\n  path: {tmp_path / 'new' / 'clips'}\n")
    rc, lines = _doctor(capsys, "--config", str(cfg))
    assert rc == 0 and any("is created with the first clip" in line for line in lines)
