from __future__ import annotations

import json
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from livegen import weights
from livegen.weights import WeightsError
from tests.models.stable_audio.random_converted import broken_copy


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


# ----------------------------------------------------------------------------- file problems


@pytest.mark.parametrize("text, problem", [
    ('{"model_type": "diffusion_cond", "sample_rate": 44', "ends early at line 1, column 51 (the file is truncated)"),
    ("model_type: diffusion_cond\n", "is not valid JSON (Expecting value at line 1, column 1)"),
    ("", "is empty"),
    ("[1, 2]", "holds JSON that is not an object"),
])
def test_json_problems_name_the_file(tmp_path, text, problem):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert weights.json_problem(path) == problem
    with pytest.raises(WeightsError) as exc:
        weights.read_json(path, "fix it")
    assert str(exc.value) == f"{path} {problem}; fix it."
    assert weights.json_problem(tmp_path / "absent.json") == "is missing"


def test_offline_miss_is_one_whole_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as exc:
        weights.resolve("org/absent")
    msg = str(exc.value)
    assert msg.endswith("(`hf download org/absent`).") and "Details" not in msg and "\n" not in msg


# ----------------------------------------------------------------------------- broken converted folders


@pytest.fixture(scope="module")
def tiny_converted(tmp_path_factory) -> Path:
    from tests.models.stable_audio.random_converted import write_random_converted

    return write_random_converted(tmp_path_factory.mktemp("w") / "converted")


BROKEN_CASES = [
    ("truncated config.json", "config.json", "ends early at line"),
    ("config.json not JSON", "config.json", "is not valid JSON (Expecting value at line 1, column 1)"),
    ("no manifest.json", "manifest.json", "is missing"),
    ("no t5", "t5", "is missing (the T5 text encoder of a converted Stable Audio model)"),
    ("truncated safetensors", "model.safetensors", "is not a valid safetensors file (truncated: tensors need"),
]


@pytest.mark.parametrize("how, name, problem", BROKEN_CASES)
def test_broken_converted_stable_audio_is_named(tiny_converted, tmp_path, monkeypatch, how, name, problem):
    # regression: a bare JSONDecodeError, or a Hugging Face download error for google-t5
    from livegen.models.stable_audio import StableAudioPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    broken = broken_copy(tiny_converted, tmp_path / "model", how)
    for load in (StableAudioPipeline.from_pretrained, StableAudioPipeline.from_converted):
        with pytest.raises(WeightsError) as exc:
            load(str(broken))
        msg = str(exc.value)
        assert msg.startswith(f"{broken / name} {problem}"), msg
        assert msg.endswith(f"; delete {broken} and convert the model again (`livegen convert` with the "
                            "original checkpoint).")
        assert "google-t5" not in msg and "\n" not in msg
    check = weights.preflight(str(broken), "stable-audio")
    assert check.state is weights.WeightsState.BROKEN and check.file == broken / name
    assert check.sentence == msg and not check.startable


@pytest.mark.parametrize("how, name, problem", BROKEN_CASES)
def test_generate_cli_names_broken_converted(tiny_converted, tmp_path, monkeypatch, capsys, how, name, problem):
    from livegen.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    broken = broken_copy(tiny_converted, tmp_path / "model", how)
    rc = main(["generate", "--model", str(broken), "--prompt", "x", "--seconds", "0.01", "--steps", "1",
               "--output", str(tmp_path / "o.wav")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"livegen generate: {broken / name} {problem}"), err  # before loading
    assert "\n" not in err and "Traceback" not in err and "Error" not in err.split(":")[1]


def test_broken_converted_musicgen_is_named(tmp_path, monkeypatch, transformers_ref):
    from livegen.models.musicgen import MusicGenPipeline
    from livegen.models.musicgen.convert import convert
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen

    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    make_tiny_musicgen(tmp_path / "src")
    out = convert(str(tmp_path / "src"), out_dir=tmp_path / "mg")
    assert weights.preflight(str(out), "musicgen").state is weights.WeightsState.CACHED
    text = (out / "config.json").read_text()
    (out / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(WeightsError, match=rf"^{out / 'config.json'} ends early at line \d+, column \d+ \(the "
                                           rf"file is truncated\); delete {out} and convert the model again"):
        MusicGenPipeline.from_pretrained(str(out))
    (out / "config.json").write_text(text)
    (out / "manifest.json").unlink()  # taken for a checkpoint before: a confusing key mismatch
    with pytest.raises(WeightsError, match=rf"^{out / 'manifest.json'} is missing; delete {out}"):
        MusicGenPipeline.from_pretrained(str(out))
    check = weights.preflight(str(out), "musicgen")
    assert check.state is weights.WeightsState.BROKEN and check.file == out / "manifest.json"


# ----------------------------------------------------------------------------- preflight


SA_REPO = "stabilityai/stable-audio-open-small"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from livegen import weights_check

    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(weights_check, "_probe_cache", {})
    monkeypatch.setattr(weights_check, "_has_token", lambda: bool(__import__("os").environ.get("HF_TOKEN")))
    return tmp_path / "hub"


def _sa_snapshot(hub: Path, tmp_path: Path) -> Path:
    from tests.reference.sa_checkpoint import DEFAULT_REVISION, hub_cache_layout, shrink_config

    src = tmp_path / "sa-src"
    src.mkdir()
    (src / "model_config.json").write_text(json.dumps(shrink_config("small")))
    mx.save_safetensors(str(src / "model.safetensors"), {"model.model.x": mx.zeros((4,))},
                        metadata={"format": "pt"})
    return hub_cache_layout(hub, SA_REPO, src, DEFAULT_REVISION)


def test_preflight_states_on_disk(hub, tmp_path, tiny_converted):
    import shutil

    from tests.reference.sa_checkpoint import DEFAULT_REVISION, hub_cache_layout

    W = weights.WeightsState
    c = weights.preflight(str(tiny_converted), "stable_audio")
    assert (c.state, c.ready, c.location) == (W.CACHED, True, tiny_converted)
    assert c.sentence == f"{tiny_converted} is a converted Stable Audio model, ready to load."

    snap = _sa_snapshot(hub, tmp_path)
    c = weights.preflight("stable-audio-small", "stable-audio")  # the snapshot, but no T5 anywhere
    assert c.state is W.NEEDS_DOWNLOAD and c.download == "google-t5/t5-base" and c.location == snap
    assert c.sentence.startswith("stable-audio-small needs the T5 text encoder google-t5/t5-base, which is not "
                                 "downloaded and HF_HUB_OFFLINE is set")
    hub_cache_layout(hub, "google-t5/t5-base", tiny_converted / "t5")
    c = weights.preflight("stable-audio-small", "stable-audio")
    assert (c.state, c.location, c.startable) == (W.CONVERTIBLE, snap, True)
    assert c.sentence == (f"stable-audio-small is on disk ({snap}) and is converted for MLX once on its first "
                          "load (or ahead of time with `livegen convert stable-audio-small`).")

    converted = weights.converted_dir("stable_audio", SA_REPO, DEFAULT_REVISION, "float32")
    shutil.copytree(tiny_converted, converted)
    c = weights.preflight(SA_REPO, "stable-audio")
    assert (c.state, c.location) == (W.CACHED, converted)
    assert c.sentence == f"{SA_REPO} is converted and ready in {converted}."

    w = snap / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-3])
    c = weights.preflight(SA_REPO, "stable-audio")
    assert c.state is W.BROKEN and c.file == w and "is not a valid safetensors file (truncated" in c.sentence
    assert c.sentence.endswith(f"; delete {snap.parent.parent} and download {SA_REPO} again.")


def test_preflight_missing_and_wrong_engine(hub, tmp_path, tiny_converted):
    W = weights.WeightsState
    c = weights.preflight(str(tmp_path / "gone"), "stable-audio")
    assert c.state is W.MISSING and c.sentence.startswith(f"the model folder {tmp_path / 'gone'} does not exist;")
    c = weights.preflight("stable-audio-smal", "stable-audio")
    assert c.state is W.MISSING and "is neither a model name (e.g. stable-audio-small)" in c.sentence
    c = weights.preflight(str(tiny_converted), "musicgen")
    assert c.state is W.BROKEN and "says this is a converted Stable Audio model, not MusicGen" in c.sentence
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model_config.json").write_text('{"model_type": "diffusion_cond"}')
    c = weights.preflight(str(ckpt), "stable-audio")
    assert c.state is W.BROKEN and c.sentence.startswith(f"{ckpt} has no weights (model.safetensors);")
    with pytest.raises(ValueError, match="unknown engine"):
        weights.preflight(str(ckpt), "diffusers")


def test_preflight_needs_download_sentences(hub, monkeypatch):
    import socket
    import time

    W = weights.WeightsState
    t0 = time.monotonic()
    c = weights.preflight("stable-audio-small", "stable-audio")
    assert (c.state, c.offline, c.hub_reachable, c.gated, c.startable) == (W.NEEDS_DOWNLOAD, True, None, True, False)
    assert c.sentence == (f"stable-audio-small is not downloaded and HF_HUB_OFFLINE is set, so livegen cannot "
                          f"fetch it: unset HF_HUB_OFFLINE and start again ({SA_REPO} is gated: accept its licence at "
                          f"https://huggingface.co/{SA_REPO} and run `hf auth login` or set HF_TOKEN first), or run "
                          f"`hf download {SA_REPO}` on a connected machine "
                          f"and copy its Hugging Face cache to {hub} (or point HF_HUB_CACHE at the copy).")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    c = weights.preflight("stable-audio-small", "stable-audio")  # no network in the tests
    assert (c.offline, c.hub_reachable, c.startable) == (False, False, False)
    assert c.sentence == (f"stable-audio-small is not downloaded yet and the Hugging Face hub cannot be reached: "
                          f"connect to the network and run `hf download {SA_REPO}` ({SA_REPO} is gated: accept "
                          f"its licence at https://huggingface.co/{SA_REPO} and run `hf auth login` or set "
                          f"HF_TOKEN first), or copy a Hugging Face cache that holds it to {hub} (or set "
                          "HF_HUB_CACHE).")
    assert time.monotonic() - t0 < 4

    with socket.socket() as server:  # a reachable "hub": a local TCP listener
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        c = weights.preflight("stable-audio-small", "stable-audio")
        assert (c.hub_reachable, c.token, c.startable) == (True, False, False)
        assert c.sentence == (f"stable-audio-small is not downloaded yet and {SA_REPO} is gated: accept its "
                              f"licence at https://huggingface.co/{SA_REPO}, then run `hf auth login` (or set "
                              "HF_TOKEN) so that it can be downloaded.")
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        c = weights.preflight("stable-audio-small", "stable-audio")
        assert (c.token, c.startable) == (True, True)
        assert c.sentence == (f"stable-audio-small is not downloaded yet; it will be downloaded on the first start "
                              f"(accept its licence at https://huggingface.co/{SA_REPO} for your token's account "
                              "if you have not), or run `livegen convert stable-audio-small` ahead of time.")
        monkeypatch.delenv("HF_TOKEN")
        c = weights.preflight("musicgen-small", "musicgen")  # not gated
        assert (c.state, c.gated, c.startable) == (W.NEEDS_DOWNLOAD, False, True)
