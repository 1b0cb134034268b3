import re
from pathlib import Path

import pytest

from livegen.settings import (
    AudioSettings,
    SettingsError,
    documented_keys,
    load_settings,
    settings_from_dict,
)

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path, text):
    p = tmp_path / "livegen.yaml"
    p.write_text(text)
    return p


def test_defaults_without_a_file():
    s = load_settings(None)
    assert s.osc.port == 9000 and s.osc.host == "127.0.0.1" and s.osc.reply is True
    assert s.audio == AudioSettings()
    assert s.tempo.bpm == 120 and s.tempo.beats_per_bar == 4
    assert s.model("default").engine == "stable-audio"
    assert s.mappings and s.mappings[0].name == "default.yaml"


def test_values_and_relative_paths(tmp_path):
    p = _write(tmp_path, """
models:
  sao: {engine: stable-audio, path: ./ckpt, steps: 8}
  mg: {engine: musicgen, path: facebook/musicgen-small, top_k: 100}
default_model: sao
osc: {port: 9100, allow: [127.0.0.1, 192.168.1.0/24], status_port: 9101}
audio: {device: 3, latency: 0.02, blocksize: 128}
folder: {path: renders, subtype: pcm24}
tempo: {bpm: 97.5, beats_per_bar: 3}
engine: {warmup_seconds: [2, 4.5], max_steps: 50}
prerender: {enabled: true, memory_mb: 64}
mappings: [maps/a.yaml, /abs/b.yaml]
""")
    s = load_settings(p)
    assert s.model().path == "./ckpt" and s.model("mg").top_k == 100
    assert s.osc.port == 9100 and s.osc.status_port == 9101
    assert s.audio.device == 3 and s.audio.latency == 0.02
    assert s.folder.path == tmp_path / "renders" and s.folder.subtype == "pcm24"
    assert s.tempo.bpm == 97.5 and s.engine.warmup_seconds == [2.0, 4.5]
    assert s.mappings == [tmp_path / "maps/a.yaml", Path("/abs/b.yaml")]
    assert isinstance(s.engine.warmup_seconds[0], float)
    with pytest.raises(KeyError):
        s.model("nope")


def test_every_mistake_is_reported_with_its_line(tmp_path):
    p = _write(tmp_path, """audio:
  voises: 3
  blocksize: -1
osc:
  port: "9000"
  allow: [1.2.3.400]
tempo: {bpm: 500}
models:
  a: {engine: musicgn}
default_model: b
audio2: 1
midi:
  virtual: yes please
folder:
  subtype: float
  subtype: pcm16
""")
    with pytest.raises(SettingsError) as info:
        load_settings(p)
    errs = info.value.errors
    want = [
        (2, "unknown setting 'audio.voises'", "Did you mean 'voices'?"),
        (3, "'audio.blocksize' must be between 0 and 8192", "-1"),
        (5, "'osc.port' must be a whole number", "'9000'"),
        (6, "osc.allow[0]", "1.2.3.400"),
        (7, "'tempo.bpm' must be between 20 and 400", "500"),
        (9, "'models.a.engine' must be one of", "Did you mean 'musicgen'?"),
        (10, "default_model 'b'", "models"),
        (11, "unknown setting 'audio2'", "Did you mean 'audio'?"),
        (13, "'midi.virtual' must be true or false", "yes please"),
        (16, "appears twice", "line 15"),
    ]
    assert len(errs) == len(want), errs
    for line, a, b in want:
        hits = [e for e in errs if e.startswith(f"{p}:{line}: ") and a in e and b in e]
        assert hits, (line, a, errs)


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = _write(tmp_path, "audio:\n  voices: 3\n  blocksize: [1, 2\n")
    with pytest.raises(SettingsError) as info:
        load_settings(p)
    assert re.match(rf"{re.escape(str(p))}:\d+: this is not valid YAML", str(info.value))


def test_top_level_must_be_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(SettingsError):
        load_settings(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)
    assert settings_from_dict({}).osc.port == 9000


def test_every_key_is_documented_and_in_the_example():
    doc = (ROOT / "docs" / "daemon-settings.md").read_text()
    example_text = (ROOT / "examples" / "livegen.yaml").read_text()
    for key, help_text in documented_keys():
        assert help_text, key
        assert f"`{key}`" in doc, f"{key} missing from docs/daemon-settings.md"
        leaf = key.split(".")[-1]
        assert re.search(rf"^\s*#?\s*{re.escape(leaf)}:.*#", example_text, re.M), f"{key} missing in example"


def test_the_annotated_example_loads():
    s = load_settings(ROOT / "examples" / "livegen.yaml")
    assert s.osc.port == 9000
