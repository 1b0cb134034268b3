"""Ray Client addresses (ray://) are refused with the reason, everywhere a pool address is given:
Ray Serve's streaming handle calls, which carry every clip of the pool, raise under Ray Client
(the installed Ray's own check, asserted here so a Ray that lifts it is noticed)."""

from __future__ import annotations

import pytest

from livegen.cli import main
from livegen.settings import SettingsError, check_ray_address, load_settings


def test_check_ray_address():
    assert check_ray_address("auto") is None
    assert check_ray_address("gpu-box.local:6379") is None
    assert check_ray_address("10.0.0.5:6379") is None
    why = check_ray_address("ray://gpu-box:10001")
    assert why is not None and "Ray Client" in why and "ray start --address" in why
    assert check_ray_address("RAY://x:1") is not None
    assert check_ray_address("") is not None


def test_settings_refuse_a_ray_client_address_with_its_line(tmp_path):
    p = tmp_path / "livegen.yaml"
    p.write_text("engine:\n  kind: ray\n  address: ray://gpu-box:10001\n")
    with pytest.raises(SettingsError) as info:
        load_settings(p)
    text = str(info.value)
    assert f"{p}:3:" in text and "Ray Client" in text


@pytest.mark.parametrize("argv", [
    ["render", "BANK", "--ray", "ray://gpu-box:10001"],
    ["serve-pool", "--address", "ray://gpu-box:10001"],
])
def test_the_clis_refuse_a_ray_client_address(argv, tmp_path, capsys):
    bank = tmp_path / "bank.csv"
    bank.write_text("prompt\nkick\n")
    argv = [str(bank) if a == "BANK" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ray://gpu-box:10001" in err and "Ray Client" in err and len(err.strip().splitlines()) == 1


def test_ray_still_refuses_streaming_handles_over_ray_client():
    serve_handle = pytest.importorskip("ray.serve.handle", reason="the ray extra is not installed")
    import inspect

    source = inspect.getsource(serve_handle)
    assert "Streaming DeploymentHandles are not currently supported" in source
