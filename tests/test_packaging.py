"""Packaging: every package is listed in pyproject.toml and a wheel carries the shipped mappings."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from livegen import settings as S

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "livegen").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk | {"livegen.mappings"}
    assert config["package-dir"] == {"livegen.mappings": "mappings"}


def test_shipped_mapping_names_resolve_in_the_checkout():
    names = S.shipped_mapping_names()
    assert names == sorted(p.stem for p in (ROOT / "mappings").glob("*.yaml"))
    assert "default" in names and "akai-mpd218" in names
    assert S.shipped_mapping("akai-mpd218") == ROOT / "mappings" / "akai-mpd218.yaml"
    assert S.shipped_mapping("akai-mpd218.yaml") == ROOT / "mappings" / "akai-mpd218.yaml"
    assert S.shipped_mapping("no-such-pad") is None
    assert S.shipped_mapping("mappings/default") is None  # a path, not a name
    assert S.DEFAULT_MAPPING == ROOT / "mappings" / "default.yaml"


def test_settings_accept_shipped_mapping_names(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text((ROOT / "mappings" / "default.yaml").read_text())
    cfg = tmp_path / "livegen.yaml"
    cfg.write_text("mappings:\n  - launchpad\n  - mine.yaml\n")
    assert S.load_settings(cfg).mappings == [ROOT / "mappings" / "launchpad.yaml", own]
    cfg.write_text("mappings:\n  - not-shipped\n")  # left as a path; the daemon reports it missing
    assert S.load_settings(cfg).mappings == [tmp_path / "not-shipped"]


def test_serve_mapping_option_takes_shipped_names(capsys):
    from livegen.cli import main

    assert main(["serve", "--dry-run", "--mapping", "touchdesigner"]) == 0
    assert str(ROOT / "mappings" / "touchdesigner.yaml") in capsys.readouterr().out
    assert main(["serve", "--dry-run", "--mapping", "nope"]) == 2
    err = capsys.readouterr().err
    assert "not found: nope" in err and "akai-mpd218" in err


@pytest.mark.slow
def test_wheel_installs_the_shipped_mappings(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("livegen-*.whl")
    shipped = sorted(p.name for p in (ROOT / "mappings").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as z:
        assert sorted(n.split("/")[-1] for n in z.namelist() if n.startswith("livegen/mappings/")) == shipped
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import livegen.settings as s; print(s.shipped_mappings_dir()); print(s.DEFAULT_MAPPING.is_file());"
            "print(','.join(s.shipped_mapping_names()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin"},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")
    assert out[0] == str(target / "livegen" / "mappings")
    assert out[1] == "True"
    assert out[2].split(",") == [Path(n).stem for n in shipped]
