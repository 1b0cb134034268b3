from __future__ import annotations

import json
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from livegen import weights
from livegen.weights import WeightsError


def _hub_repo(cache: Path, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> Path:
    """A minimal Hugging Face hub cache entry, laid out as huggingface_hub writes it."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        blob = base / "blobs" / f"{i:064x}"
        blob.write_bytes(data)
        (snap / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snap


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    mx.save_safetensors(str(path), {k: mx.array(v) for k, v in arrays.items()})


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "c"))
    assert weights.cache_root() == tmp_path / "c"
    d = weights.converted_dir("stable_audio", "stabilityai/stable-audio-open-small", "abc123", "float32")
    parts = ("converted", "stable_audio", "stabilityai--stable-audio-open-small", "abc123", "float32")
    assert d == tmp_path.joinpath("c", *parts)
    monkeypatch.delenv("LIVEGEN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if weights.sys.platform.startswith("linux"):
        assert weights.cache_root() == tmp_path / "xdg" / "livegen"


def test_resolve_local_dir(tmp_path):
    path, info = weights.resolve(str(tmp_path))
    assert path == tmp_path.resolve()
    assert info == {"source": str(tmp_path.resolve())}


def test_resolve_rejects_missing_path_and_file(tmp_path):
    with pytest.raises(WeightsError, match="neither an existing directory"):
        weights.resolve(str(tmp_path / "nope" / "deeper"))
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"")
    with pytest.raises(WeightsError, match="is a file"):
        weights.resolve(str(f))


def test_resolve_offline_hub_cache(monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    snap = _hub_repo(cache, "org/tiny", {"config.json": b"{}", "model.safetensors": b"x"}, commit="c" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, info = weights.resolve("org/tiny")
    assert path == snap
    assert info == {"repo": "org/tiny", "revision": "c" * 40}
    assert (path / "config.json").read_text() == "{}"
    with pytest.raises(WeightsError, match="not in the Hugging Face cache .* downloading is off") as exc:
        weights.resolve("org/absent")
    assert str(cache) in str(exc.value)


@pytest.mark.parametrize(
    "error, match",
    [("GatedRepoError", r"is gated: accept its licence at https://huggingface.co/org/gated"),
     ("RepositoryNotFoundError", "was not found on the Hugging Face hub")],
)
def test_resolve_hub_errors(monkeypatch, error, match):
    import huggingface_hub
    from huggingface_hub import errors

    response = types.SimpleNamespace(headers={}, request=None, status_code=403)

    def fake(*_a, **_k):
        raise getattr(errors, error)("denied", response=response)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(WeightsError, match=match):
        weights.resolve("org/gated")


def test_load_file_dir_and_shards(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((5,)).astype(np.float32)
    single = tmp_path / "single"
    single.mkdir()
    _save(single / "model.safetensors", {"a": a, "b": b})
    for src in (single, single / "model.safetensors"):
        got = weights.load_weights(src)
        assert set(got) == {"a", "b"}
        np.testing.assert_array_equal(np.array(got["a"]), a)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    _save(sharded / "model-00001-of-00002.safetensors", {"a": a})
    _save(sharded / "model-00002-of-00002.safetensors", {"b": b})
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    got = weights.load_weights(sharded)
    np.testing.assert_array_equal(np.array(got["b"]), b)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsError, match="model-00002-of-00002.safetensors"):
        weights.load_weights(sharded)


def test_corrupt_safetensors_names_file(tmp_path):
    path = tmp_path / "model.safetensors"
    _save(path, {"a": np.ones((64, 64), np.float32)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors is not a valid safetensors file .*truncated"):
        weights.load_weights(tmp_path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        weights.load_weights(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="has no weights"):
        weights.load_weights(tmp_path / "empty")


def test_pickle_needs_flag(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"state_dict": {"w": t, "h": t.to(torch.bfloat16)}}, tmp_path / "model.ckpt")
    with pytest.raises(WeightsError, match="pass --allow-pickle"):
        weights.load_weights(tmp_path)
    with pytest.raises(WeightsError, match="pass --allow-pickle"):
        weights.load_weights(tmp_path / "model.ckpt")
    got = weights.load_weights(tmp_path, allow_pickle=True)
    np.testing.assert_array_equal(np.array(got["w"]), t.numpy())
    assert got["h"].dtype == mx.bfloat16
    # a safetensors file wins over the pickle when both exist
    _save(tmp_path / "model.safetensors", {"s": np.zeros(2, np.float32)})
    assert set(weights.load_weights(tmp_path)) == {"s"}


def test_check_keys_lists_problems():
    got = {"a": mx.zeros((2, 3)), "b": mx.zeros((4,)), "extra": mx.zeros((1,))}
    weights.check_keys({"a": (2, 3), "b": (4,)}, {"a": got["a"], "b": got["b"]}, "f.safetensors")
    with pytest.raises(WeightsError) as exc:
        weights.check_keys({"a": (3, 2), "b": (4,), "c": (1,)}, got, "f.safetensors")
    msg = str(exc.value)
    assert msg.startswith("f.safetensors does not match")
    assert "missing 1: c" in msg and "unexpected 1: extra" in msg and "a (2, 3) != (3, 2)" in msg
    many = {f"k{i:02d}": (1,) for i in range(15)}
    with pytest.raises(WeightsError, match=r"missing 15: k00, .*k09 \(\+5 more\)"):
        weights.check_keys(many, {}, "f")


def test_save_converted_atomic(tmp_path):
    out = tmp_path / "conv" / "m"
    w = {"x": mx.arange(4, dtype=mx.float32)}
    manifest = {"repo": "org/m", "revision": "r", "dtype": "float32"}
    weights.save_converted(out, w, {"model_type": "t"}, manifest)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["repo"] == "org/m" and manifest["dtype"] == "float32"
    assert manifest["livegen_version"] and manifest["created"]
    assert json.loads((out / "config.json").read_text()) == {"model_type": "t"}
    np.testing.assert_array_equal(np.array(weights.load_weights(out)["x"]), np.arange(4))
    weights.save_converted(out, {"y": mx.ones((2,))}, {}, {"repo": "org/m"})
    assert set(weights.load_weights(out)) == {"y"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]  # no temp dirs left behind
