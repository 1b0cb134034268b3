"""Kept clips (written by `livegen render`): atomic files, indexed by scan, taken but never deleted."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from livegen import render_bank as rb
from livegen.output import prerender as pc
from livegen.request import Clip, Request


def _clip(req: Request, seed: int, value: float = 0.25) -> Clip:
    return Clip(request=req, audio=np.full((2, 100), value, np.float32), sample_rate=1000, seed=seed,
                model=req.model, job_id=1)


def test_written_kept_clips_are_scanned_served_and_never_deleted(tmp_path):
    base = Request(prompt="warm pad", seconds=0.1, steps=4)
    seeds = [pc.variation_seed(base, i) for i in range(2)]
    for i, seed in enumerate(seeds):
        pc.write_kept(tmp_path, base.replace(seed=seed), _clip(base, seed, 0.1 * (i + 1)))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    cache = pc.PrerenderCache(memory_mb=1, directory=tmp_path, variations=2)
    assert cache.scan() == 2
    assert cache.ready(base) == 2 and cache.stats()["kept_clips"] == 2
    cache.set_targets([base])
    assert cache.wanted() == []  # both variations are there
    exact = cache.get(base.replace(seed=seeds[1]))
    assert exact is not None and np.allclose(exact.audio, 0.2)
    taken = cache.get(base)  # any variation: taken from this run's index
    assert taken is not None and cache.ready(base) == 1
    want = cache.wanted()
    assert len(want) == 1 and want[0].seed not in seeds  # a replacement gets a new seed
    assert len(list(tmp_path.glob("*.npy"))) == 2  # the files stay for the next start
    again = pc.PrerenderCache(memory_mb=1, directory=tmp_path, variations=2)
    assert again.scan() == 2


def test_scan_skips_incomplete_foreign_and_renamed_entries(tmp_path):
    base = Request(prompt="kick", seconds=0.1)
    path = pc.write_kept(tmp_path, base.replace(seed=5), _clip(base, 5))
    (tmp_path / "lonely.npy").write_bytes(path.read_bytes())  # audio without metadata: incomplete
    (tmp_path / "garbage.json").write_text("{not json")
    meta = json.loads(path.with_suffix(".json").read_text())
    (tmp_path / "0123456789abcdef01234567.json").write_text(json.dumps(meta))  # not its key's name
    spilled = dict(meta, kept=False)
    (tmp_path / "spilled.json").write_text(json.dumps(spilled))
    cache = pc.PrerenderCache(directory=tmp_path)
    assert cache.scan() == 1
    cache.clear()
    assert path.exists() and path.with_suffix(".json").exists()  # clear never deletes kept files


def test_killed_writer_leftovers_are_removed_only_when_their_writer_is_gone(tmp_path):
    dead = tmp_path / f".{'a' * 24}.npy.{2**22 + 12345}.part"
    dead.write_bytes(b"x")
    alive = tmp_path / f".{'b' * 24}.json.{os.getpid()}.part"
    alive.write_bytes(b"x")
    other = tmp_path / "notes.part"
    other.write_bytes(b"x")
    assert rb.remove_dead_parts(tmp_path) == 1
    assert not dead.exists() and alive.exists() and other.exists()


def test_bank_csv_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bank.csv"
    bad.write_text("prompt,steps\nkick,four\n")
    with pytest.raises(rb.BankError, match=r"bank.csv:2: steps must be int"):
        rb.read_csv(bad)
    bad.write_text("text,steps\nkick,4\n")
    with pytest.raises(rb.BankError, match="no 'prompt' column"):
        rb.read_csv(bad)
    bad.write_text("prompt,colour\nkick,red\n")
    with pytest.raises(rb.BankError, match="unknown column"):
        rb.read_csv(bad)
    good = tmp_path / "good.csv"
    good.write_text("prompt,seconds,loop,cfg\nkick,0.5,yes,\n,1,no,\nsnare,,,3\n")
    assert rb.read_csv(good) == [{"prompt": "kick", "seconds": 0.5, "loop": True}, {"prompt": "snare", "cfg": 3.0}]
