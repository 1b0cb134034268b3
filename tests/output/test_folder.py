import asyncio
import errno
import json
import os
import shutil
import subprocess
import time
import uuid

import numpy as np
import pytest
import soundfile as sf

import livegen
from livegen.output.folder import FolderError, FolderWriter, clip_stem, slugify
from livegen.request import Clip, Request


def _clip(prompt="warm pad", frames=4410, **req):
    req.setdefault("bars", 2)
    req.setdefault("bpm", 120)
    req.setdefault("slot", 3)
    rng = np.random.default_rng(1)
    audio = (0.5 * rng.standard_normal((2, frames))).clip(-1, 1).astype(np.float32)
    return Clip(Request(prompt, steps=8, cfg_scale=1.0, sampler="pingpong", **req), audio, 44100, seed=42,
                model="sao-small", job_id=5, created=1_700_000_000.0, render_seconds=1.25)


@pytest.mark.parametrize("subtype, tol", [("float", 0.0), ("pcm24", 1 / 2**23), ("pcm16", 1 / 2**15)])
def test_round_trip_and_sidecar(tmp_path, subtype, tol):
    clip = _clip()
    path = FolderWriter(tmp_path, subtype=subtype).write(clip)
    assert path.name == "3_warm-pad_120bpm_2bars_42.wav"
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == 44100 and data.shape == (4410, 2)
    assert np.abs(data.T - clip.audio).max() <= tol
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["prompt"] == "warm pad" and meta["model"] == "sao-small" and meta["seed"] == 42
    assert (meta["steps"], meta["cfg"], meta["sampler"]) == (8, 1.0, "pingpong")
    assert (meta["bpm"], meta["bars"], meta["frames"], meta["sample_rate"]) == (120, 2, 4410, 44100)
    assert meta["duration"] == pytest.approx(0.1)
    assert meta["created"].startswith("2023-11-14T22:13:20")
    assert meta["file"] == path.name and meta["subtype"] == subtype
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_sidecar_records_every_value_the_clip_was_made_with(tmp_path):
    req = Request("dusty breakbeat", model="sao-small", negative_prompt="vocals", seed=None, bars=3, bpm=97.5,
                  beats_per_bar=3, steps=37, cfg_scale=6.5, sampler="dpmpp-3m-sde", slot=11)
    audio = np.zeros((1, 2205), np.float32)
    clip = Clip(req, audio, 22050, seed=np.uint32(3_000_000_001), model="sao-small", job_id=77,
                created=1_700_000_000.25, render_seconds=0.123456)
    path = FolderWriter(tmp_path).write(clip)
    assert path.name == "11_dusty-breakbeat_97.5bpm_3bars_3000000001.wav"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta == {
        "file": path.name, "prompt": "dusty breakbeat", "negative_prompt": "vocals", "model": "sao-small",
        "seed": 3_000_000_001, "steps": 37, "cfg": 6.5, "sampler": "dpmpp-3m-sde", "seconds": None,
        "duration": 0.1, "frames": 2205, "sample_rate": 22050, "channels": 1, "subtype": "float",
        "bpm": 97.5, "bars": 3, "beats_per_bar": 3, "slot": 11, "job_id": 77, "render_seconds": 0.123,
        "levels": None,  # not normalised (levels.normalize false); tests/output/test_loudness.py has the values
        "created": "2023-11-14T22:13:20.250+00:00", "livegen_version": livegen.__version__,
    }


def test_sidecar_of_a_seconds_clip_and_extra_fields(tmp_path):
    clip = _clip(seconds=0.1, bars=None, slot=None)
    path = FolderWriter(tmp_path).write(clip, {"bank": "drums", "bad": float("nan"), "obj": object()})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert (meta["seconds"], meta["bars"], meta["slot"]) == (0.1, None, None)
    assert meta["bank"] == "drums" and "bad" not in meta and "obj" not in meta


def test_a_failing_sidecar_keeps_the_complete_wav_and_says_so(tmp_path):
    def opener(p):
        return _FullDisk(p, 10) if p.endswith(".json.part") else open(p, "xb")  # noqa: SIM115

    clip = _clip()
    with pytest.raises(FolderError) as info:
        FolderWriter(tmp_path, opener=opener).write(clip)
    wav = tmp_path / "3_warm-pad_120bpm_2bars_42.wav"
    assert info.value.wav_path == wav
    assert str(info.value) == (f"The clip was written to {wav}, but its sidecar 3_warm-pad_120bpm_2bars_42.json "
                               "could not be written: the disk is full.")
    assert [p.name for p in tmp_path.iterdir()] == [wav.name]  # no temporary file is left
    data, _ = sf.read(wav, dtype="float32", always_2d=True)
    assert np.array_equal(data.T, clip.audio)


def test_never_overwrites(tmp_path):
    w = FolderWriter(tmp_path)
    names = [w.write(_clip()).name for _ in range(3)]
    assert names == ["3_warm-pad_120bpm_2bars_42.wav", "3_warm-pad_120bpm_2bars_42-2.wav",
                     "3_warm-pad_120bpm_2bars_42-3.wav"]
    (tmp_path / "3_warm-pad_120bpm_2bars_42-4.json").write_text("{}")  # a stray sidecar blocks -4
    assert w.write(_clip()).name.endswith("-5.wav")


def test_seconds_based_names_and_overrides(tmp_path):
    clip = _clip(seconds=7.5, bars=None, bpm=None, slot=None)
    assert clip_stem(clip) == "x_warm-pad_120bpm_7.5s_42"
    assert clip_stem(clip, {"bpm": 97.5, "slot": 0}) == "0_warm-pad_97.5bpm_7.5s_42"
    path = FolderWriter(tmp_path, sidecar=False).write(clip, {"bpm": 90})
    assert path.name == "x_warm-pad_90bpm_7.5s_42.wav" and not path.with_suffix(".json").exists()


@pytest.mark.parametrize(
    "prompt, slug",
    [
        ("../../etc/passwd", "etc-passwd"),
        ("a/b\\c:d*e?f", "a-b-c-d-e-f"),
        ("Café Crème — déjà vu", "cafe-creme-deja-vu"),
        ("低音 鼓", "clip"),
        ("....", "clip"),
        ("word " * 40, "word-word-word-word-word-word-word-word"),
        ("x" * 100, "x" * 40),
    ],
)
def test_slug_is_sanitised(prompt, slug):
    s = slugify(prompt)
    assert s == slug
    assert "/" not in s and "\\" not in s and ".." not in s and len(s) <= 40


class _FullDisk:
    """A real file whose writes fail with ENOSPC after ``limit`` bytes (the injection point)."""

    def __init__(self, path, limit):
        self._f = open(path, "xb")  # noqa: SIM115
        self._left = limit

    def write(self, data):
        if len(data) > self._left:
            self._f.write(data[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_full_disk_via_injection_point(tmp_path):
    w = FolderWriter(tmp_path, opener=lambda p: _FullDisk(p, 5000), chunk_frames=256)
    with pytest.raises(FolderError) as info:
        w.write(_clip())
    msg = str(info.value)
    assert "the disk is full" in msg and msg.endswith(".") and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # the partial file is gone


def test_full_disk_on_a_tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (covered by the injection-point test)")
    try:
        w = FolderWriter(mnt)
        w.write(_clip(frames=1000))  # 8 KB fits
        with pytest.raises(FolderError) as info:
            w.write(_clip(frames=44100))  # 353 KB does not
        assert "disk is full" in str(info.value)
        assert sorted(p.name for p in mnt.iterdir()) == ["3_warm-pad_120bpm_2bars_42.json",
                                                         "3_warm-pad_120bpm_2bars_42.wav"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _refuse(path):
    raise OSError(errno.EROFS, "Read-only file system", path)


def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    opener = None
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
        mounted = r.returncode == 0
        if not mounted:
            opener = _refuse  # root ignores permissions and may not mount: simulate through the injection point
    else:
        ro.chmod(0o500)
    try:
        with pytest.raises(FolderError) as info:
            FolderWriter(ro, opener=opener).write(_clip())
        assert "read-only" in str(info.value) or "permission denied" in str(info.value)
        assert list(ro.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=False)
        else:
            ro.chmod(0o700)


def test_folder_is_created_and_write_async(tmp_path):
    target = tmp_path / "new" / str(uuid.uuid4())
    w = FolderWriter(target)
    path = asyncio.run(w.write_async(_clip()))
    assert path.parent == target and path.exists()


def test_bad_audio_shape(tmp_path):
    clip = _clip()
    clip.audio = np.zeros(10, np.float32)
    with pytest.raises(FolderError):
        FolderWriter(tmp_path).write(clip)


def test_a_folder_watcher_sees_one_complete_file(tmp_path):
    if shutil.which("inotifywait") is None:
        pytest.skip("inotify-tools is not installed")
    proc = subprocess.Popen(["inotifywait", "-m", "-e", "close_write,moved_to", "--format", "%e %f", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # wait until the watch is in place
            if "Watches established" in line:
                break
        path = FolderWriter(tmp_path).write(_clip())
    finally:
        time.sleep(0.2)  # let the last events arrive
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    events = [line.split(" ", 1) for line in out.splitlines()]
    wav_events = [e for e, name in events if name == path.name]
    assert wav_events == ["MOVED_TO"]  # never seen half-written under its final name
    assert ["MOVED_TO", path.with_suffix(".json").name] in [[e, n] for e, n in events]
