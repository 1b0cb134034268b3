"""`livegen convert` on a tiny Stable Audio checkpoint in the real on-disk format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from livegen.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(sat_ref, tmp_path_factory) -> dict:
    from tests.reference.sa_checkpoint import build_tiny_stable_audio

    return build_tiny_stable_audio(tmp_path_factory.mktemp("sa"), "small", dit={"depth": 1})


def test_convert_prints_dir_and_reuses_cache(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    args = ["convert", str(tiny_checkpoint["checkpoint_dir"]), "--t5", str(tiny_checkpoint["t5_dir"])]
    assert main(args) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out.is_relative_to(tmp_path / "cache" / "converted" / "stable_audio")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "stable_audio" and manifest["dtype"] == "float32"
    assert manifest["source"] == str(tiny_checkpoint["checkpoint_dir"].resolve())
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert main(args) == 0
    assert Path(capsys.readouterr().out.strip()) == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # not converted again
    assert main(args + ["--force"]) == 0
    capsys.readouterr()
    assert (out / "manifest.json").stat().st_mtime_ns != stamp


def test_convert_errors_exit_2(tiny_checkpoint, tmp_path, capsys, monkeypatch, torch_ref):
    from safetensors.numpy import load_file

    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["convert", str(tmp_path / "absent" / "dir")]) == 2
    assert "neither an existing directory nor a Hugging Face repo id" in capsys.readouterr().err
    assert main(["convert", "someone/not-cached"]) == 2
    assert "is not in the Hugging Face cache" in capsys.readouterr().err

    ckpt = tmp_path / "pickled"
    ckpt.mkdir()
    (ckpt / "model_config.json").write_text(tiny_checkpoint["config_path"].read_text())
    state = {k: torch_ref.from_numpy(v.copy()) for k, v in load_file(str(tiny_checkpoint["weights"])).items()}
    torch_ref.save({"state_dict": state}, ckpt / "model.ckpt")
    t5 = ["--t5", str(tiny_checkpoint["t5_dir"])]
    assert main(["convert", str(ckpt), *t5]) == 2
    err = capsys.readouterr().err
    assert "model.ckpt" in err and "--allow-pickle" in err and err.count("\n") == 1
    assert main(["convert", str(ckpt), *t5, "--allow-pickle", "--output", str(tmp_path / "conv")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "conv")
    assert (tmp_path / "conv" / "model.safetensors").is_file()

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    assert main(["convert", str(other)]) == 2
    assert "not a supported model" in capsys.readouterr().err


def test_convert_musicgen_dispatch(monkeypatch, capsys, tmp_path):
    import livegen.models.musicgen.convert as mg

    calls = []

    def fake(source, out_dir=None, dtype="float32", allow_pickle=False, force=False):
        calls.append((source, out_dir, dtype, allow_pickle, force))
        return tmp_path / "mg"

    monkeypatch.setattr(mg, "convert", fake)
    assert main(["convert", "musicgen-small", "--dtype", "float16", "--allow-pickle"]) == 0
    assert calls == [("musicgen-small", None, "float16", True, False)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "mg")
    assert main(["convert", "musicgen-small", "--t5", "x"]) == 2


def test_convert_subprocess(tiny_checkpoint, tmp_path):
    env = dict(os.environ, LIVEGEN_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "half"
    proc = subprocess.run(
        [sys.executable, "-m", "livegen", "convert", str(tiny_checkpoint["checkpoint_dir"]),
         "--t5", str(tiny_checkpoint["t5_dir"]), "--dtype", "float16", "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "float16"
    assert (out / "t5" / "model.safetensors").is_file() and (out / "t5" / "tokenizer.json").is_file()


def test_registry_names_and_engines(tmp_path):
    from livegen.errors import ModelTypeError
    from livegen.models import registry

    assert registry.repo_id("stable-audio-small") == "stabilityai/stable-audio-open-small"
    assert registry.repo_id("stable-audio-1.0") == "stabilityai/stable-audio-open-1.0"
    assert len(registry.MUSICGEN) == 10
    assert registry.repo_id("musicgen-stereo-melody-large") == "facebook/musicgen-stereo-melody-large"
    assert registry.repo_id("org/other") == "org/other"
    assert registry.engine_for("stable-audio-1.0") == "stable_audio"
    assert registry.engine_for("facebook/musicgen-melody") == "musicgen"
    for name, text, engine in [("model_config.json", '{"model_type": "diffusion_cond"}', "stable_audio"),
                               ("config.json", '{"model_type": "musicgen_melody"}', "musicgen"),
                               ("config.json", '{"model_type": "musicgen"}', "musicgen")]:
        d = tmp_path / f"{engine}-{len(text)}"
        d.mkdir()
        (d / name).write_text(text)
        assert registry.engine_for(str(d)) == engine
    with pytest.raises(ModelTypeError, match="has neither model_config.json nor config.json"):
        registry.engine_of_dir(tmp_path)
