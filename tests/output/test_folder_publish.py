"""Publishing files without ever overwriting one, WAV before sidecar, and clean-up of leftovers.

Real files, real processes, real inotify events; no mocks.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from livegen.output.folder import TEMP_NAME, FolderWriter, Publish, available_methods, publish
from tests.output.folder_worker import code, race_clip

REPO = Path(__file__).resolve().parents[2]
METHODS = list(available_methods())


def _worker(*args, stdin=True):
    return subprocess.Popen([sys.executable, "-m", "tests.output.folder_worker", *map(str, args)], cwd=REPO,
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _temp_name(kind="wav"):
    return f".livegen-{uuid.uuid4().hex}.{kind}.part"


def test_the_platform_offers_an_atomic_no_replace_rename():
    if sys.platform.startswith("linux") or sys.platform == "darwin":
        assert METHODS[0] is Publish.RENAME_NOREPLACE
    assert METHODS[-2:] == [Publish.LINK, Publish.RESERVE]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_publish_never_replaces_an_existing_file(tmp_path, method):
    tmp = tmp_path / _temp_name()
    tmp.write_bytes(b"ours")
    final = tmp_path / "clip.wav"
    final.write_bytes(b"somebody else's")
    with pytest.raises(FileExistsError):
        publish(method, tmp, final)
    assert final.read_bytes() == b"somebody else's" and tmp.read_bytes() == b"ours"
    publish(method, tmp, tmp_path / "clip-2.wav")
    assert (tmp_path / "clip-2.wav").read_bytes() == b"ours" and not tmp.exists()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_writer_skips_names_that_exist(tmp_path, method):
    user = tmp_path / "1_same-name_120bpm_1bars_7.wav"
    user.write_bytes(b"a user's file")
    w = FolderWriter(tmp_path, publish=[method])
    paths = [w.write(race_clip(0, i)) for i in range(3)]
    assert [p.name for p in paths] == [f"1_same-name_120bpm_1bars_7-{n}.wav" for n in (2, 3, 4)]
    assert user.read_bytes() == b"a user's file"
    for i, p in enumerate(paths):
        data, _ = sf.read(p, dtype="float32")
        assert np.all(data[:, 0] == np.float32(code(0, i)))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_two_processes_writing_the_same_name_never_overwrite_each_other(tmp_path, method):
    count = 40
    procs = [_worker("race", tmp_path, w, count, method.value) for w in (1, 2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:  # both start at once
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    printed = {w: [Path(line) for line in out.split()] for w, (out, _) in zip((1, 2), outs, strict=True)}
    assert all(len(v) == count for v in printed.values())

    wavs = sorted(tmp_path.glob("*.wav"))
    assert len(wavs) == 2 * count  # nothing was overwritten: every clip has its own file
    assert sorted(printed[1] + printed[2]) == wavs
    assert len(list(tmp_path.glob("*.json"))) == 2 * count
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith((".wav", ".json"))] == []
    by_code = {code(w, i): (w, i) for w in (1, 2) for i in range(count)}
    for w in (1, 2):
        for i, path in enumerate(printed[w]):
            data, _ = sf.read(path, dtype="float32", always_2d=True)
            assert np.all(data[:, 0] == np.float32(code(w, i))) and np.all(data[:, 1] == -np.float32(code(w, i)))
            assert by_code[float(data[0, 0])] == (w, i)
            meta = json.loads(path.with_suffix(".json").read_text())
            assert meta["file"] == path.name and meta["job_id"] == w * 1000 + i  # the sidecar of this WAV


def _watch(folder):
    proc = subprocess.Popen(["inotifywait", "-m", "-e", "moved_to,create,close_write", "--format", "%e %f",
                             str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "Watches established" in line:
            break
    return proc


def _events(proc):
    time.sleep(0.3)  # let the last events arrive
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return [tuple(line.split(" ", 1)) for line in out.splitlines()]


@pytest.mark.skipif(shutil.which("inotifywait") is None, reason="inotify-tools is not installed")
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_the_sidecar_appears_after_its_complete_wav(tmp_path, method):
    proc = _watch(tmp_path)
    try:
        path = FolderWriter(tmp_path, publish=[method]).write(race_clip(0, 0))
    finally:
        events = _events(proc)
    json_name = path.with_suffix(".json").name
    wav_at = [i for i, (_, name) in enumerate(events) if name == path.name]
    json_at = [i for i, (_, name) in enumerate(events) if name == json_name]
    assert wav_at and json_at, events
    assert max(wav_at) < min(json_at), events  # every event of the WAV comes before the sidecar's
    wav_events = [events[i][0] for i in wav_at]
    if method is Publish.RENAME_NOREPLACE:
        assert wav_events == ["MOVED_TO"]
        assert [events[i][0] for i in json_at] == ["MOVED_TO"]
    elif method is Publish.LINK:
        assert wav_events == ["CREATE"]  # the complete file gets a second name
    else:  # the empty reservation, then the complete file over it
        assert wav_events == ["CREATE", "CLOSE_WRITE,CLOSE", "MOVED_TO"]
    temps = {name for _, name in events if name.endswith(".part")}
    assert temps and all(TEMP_NAME.fullmatch(n) for n in temps)
    assert json.loads((tmp_path / json_name).read_text())["file"] == path.name


def test_leftovers_are_removed_at_start_and_nothing_else(tmp_path, caplog):
    ours = [tmp_path / _temp_name("wav"), tmp_path / _temp_name("json")]
    for p in ours:
        p.write_bytes(b"half a file")
    others = {
        "foo.part": b"a user's download",
        ".livegen-notes.part": b"not our pattern",
        f".livegen-{'a' * 31}.wav.part": b"one digit short",
        f".livegen-{'A' * 32}.wav.part": b"upper case",
        f".livegen-{'b' * 32}.flac.part": b"another kind",
        f"x.livegen-{'c' * 32}.wav.part": b"a prefix",
        "3_warm-pad_120bpm_2bars_42.json": b"{}",  # a sidecar without its WAV stays too
        "song.wav": b"RIFF",
    }
    for name, data in others.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / _temp_name()).mkdir()  # a folder with our name is not our file
    link = tmp_path / _temp_name()
    link.symlink_to(tmp_path / "song.wav")

    with caplog.at_level(logging.INFO, logger="livegen.output.folder"):
        w = FolderWriter(tmp_path)
    assert w.leftovers_removed == 2
    assert not any(p.exists() for p in ours)
    for name, data in others.items():
        assert (tmp_path / name).read_bytes() == data
    assert link.is_symlink() and (tmp_path / "song.wav").read_bytes() == b"RIFF"
    assert "Removed 2 unfinished temporary files" in caplog.text
    assert FolderWriter(tmp_path).leftovers_removed == 0


def test_a_missing_folder_is_not_an_error_at_start(tmp_path):
    w = FolderWriter(tmp_path / "not" / "yet")
    assert w.leftovers_removed == 0 and not (tmp_path / "not").exists()


def test_a_temp_file_another_live_writer_holds_is_kept(tmp_path):
    name = _temp_name()
    holder = _worker("hold", tmp_path, name)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        assert FolderWriter(tmp_path).leftovers_removed == 0
        assert (tmp_path / name).exists()
    finally:
        holder.communicate("\n", timeout=10)
    assert FolderWriter(tmp_path).leftovers_removed == 1  # its process is gone: now a leftover
    assert not (tmp_path / name).exists()


def test_sigkill_during_a_write_leaves_a_temp_file_that_the_next_start_removes(tmp_path):
    proc = _worker("slow", tmp_path, stdin=False)
    try:
        assert proc.stdout.readline().strip() == "started", proc.stderr.read()
        deadline = time.monotonic() + 10
        while not [p for p in tmp_path.iterdir() if p.stat().st_size > 0]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and TEMP_NAME.fullmatch(left[0]), left
    assert FolderWriter(tmp_path).leftovers_removed == 1
    assert list(tmp_path.iterdir()) == []
