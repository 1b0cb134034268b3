"""Packaging: the packages are found (not listed by hand), a wheel carries every livegen module and
the shipped mappings, and the install keeps runtime and test dependencies apart."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from livegen import settings as S

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS_FOR_WHEELS = (70, 1)  # bdist_wheel is part of setuptools from 70.1 (before: the wheel package)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_packages_are_found_not_listed():
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["packages"] == {"find": {"include": ["livegen*"]}}  # what the wheel holds: see below
    assert tool["package-dir"] == {"livegen.mappings": "mappings"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_test_tools_are_not_runtime_dependencies():
    project = _pyproject()["project"]
    runtime = _names(project["dependencies"])
    assert not runtime & {"pytest", "pytest-rerunfailures", "ruff", "jack-client", "setuptools", "torch"}
    assert {"tqdm", "soxr"} <= runtime
    dev = _names(project["optional-dependencies"]["dev"])
    assert {"pytest", "setuptools"} <= dev
    (spec,) = [r for r in project["optional-dependencies"]["dev"] if r.lower().startswith("setuptools")]
    assert tuple(int(v) for v in spec.split(">=")[1].split(".")) >= SETUPTOOLS_FOR_WHEELS


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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    setuptools = pytest.importorskip("setuptools")
    have = tuple(int(v) for v in re.findall(r"\d+", setuptools.__version__)[:2])
    if have < SETUPTOOLS_FOR_WHEELS:
        pytest.skip(f"building a wheel without build isolation needs setuptools >= 70.1, this is "
                    f"{setuptools.__version__}: install the dev extra (pip install -e \".[dev]\")")
    # Built from a copy of what the build reads: setuptools builds in the source tree's build/,
    # where files that were since removed would stay and end up in the wheel.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("livegen", "mappings"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = dist.glob("livegen-*.whl")
    return found


@pytest.mark.slow
def test_wheel_carries_every_module(wheel):
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "livegen").rglob("*.py")
                     if "__pycache__" not in p.parts)
    with zipfile.ZipFile(wheel) as z:
        in_wheel = sorted(n for n in z.namelist() if n.startswith("livegen/") and n.endswith(".py"))
        top = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/top_level.txt"))).decode().split()
    assert in_wheel == on_disk
    assert top == ["livegen"]  # tests, bench, mappings are not installed as packages of their own


@pytest.mark.slow
def test_wheel_carries_the_exact_clock_library(wheel):
    """livegen/output/_rtclock.c is built into the wheel where a C compiler is (CI has one); the
    build is optional, so without a compiler the wheel is still made (and the player says so)."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the exact clock is not built")
    with zipfile.ZipFile(wheel) as z:
        libs = [n for n in z.namelist() if n.startswith("livegen/output/_rtclock") and n.endswith((".so", ".pyd"))]
    assert len(libs) == 1, libs


@pytest.mark.slow
def test_wheel_installs_the_shipped_mappings(wheel, tmp_path):
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


@pytest.mark.slow
def test_wheel_carries_the_web_surface(wheel):
    static = sorted(p.name for p in (ROOT / "livegen" / "control" / "web_static").iterdir())
    assert {"index.html", "app.js", "style.css"} <= set(static)
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith("livegen/control/web_static/")]
    assert sorted(n.split("/")[-1] for n in names) == static
