import numpy as np
import pytest

from livegen.output.prerender import PrerenderCache, cache_key, variation_key
from livegen.request import Clip, Request

BASE = Request("kick drum", model="sao", negative_prompt="noise", seed=1, bars=2, bpm=120, steps=8,
               cfg_scale=1.0, sampler="pingpong", slot=0)


def _clip(req, frames=1000, seed=None, value=0.0):
    seed = req.seed if seed is None else seed
    return Clip(req, np.full((2, frames), value, np.float32), 44100, seed=seed, model=req.model, job_id=1)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"}, {"prompt": "snare"}, {"negative_prompt": "hiss"}, {"negative_prompt": None},
        {"seed": 2}, {"bars": 4}, {"bpm": 121}, {"beats_per_bar": 3}, {"bars": None, "seconds": 4.0},
        {"steps": 9}, {"cfg_scale": 1.5}, {"sampler": "euler"},
    ],
)
def test_every_audio_parameter_changes_the_key(change):
    assert cache_key(BASE.replace(**change)) != cache_key(BASE)


@pytest.mark.parametrize("change", [{"slot": 5}, {"gain": 0.5}, {"loop": True}, {"launch": "now"},
                                    {"outputs": ("folder",)}, {"priority": 3}, {"origin": "osc"}])
def test_playback_only_parameters_do_not(change):
    assert cache_key(BASE.replace(**change)) == cache_key(BASE)


def test_missing_bpm_uses_the_default_tempo():
    r = BASE.replace(bpm=None)
    assert cache_key(r, default_bpm=120) == cache_key(BASE)
    assert cache_key(r, default_bpm=90) != cache_key(BASE)
    assert variation_key(BASE) == variation_key(BASE.replace(seed=99))


def test_exact_get_and_put():
    c = PrerenderCache(memory_mb=1)
    assert c.get(BASE) is None
    c.put(BASE, _clip(BASE, value=0.5))
    got = c.get(BASE.replace(slot=9))
    assert got is not None and got.audio[0, 0] == 0.5 and got.request.slot == 9
    assert c.get(BASE) is not None  # exact lookups do not consume
    assert c.stats()["hits"] == 2 and c.stats()["misses"] == 1


def test_any_variation_is_taken_once():
    c = PrerenderCache(memory_mb=1, variations=2)
    target = BASE.replace(seed=None)
    c.set_targets([target])
    wanted = c.wanted()
    assert len(wanted) == 2 and wanted[0].seed != wanted[1].seed
    assert c.wanted() == wanted  # stable until something is put
    for i, w in enumerate(wanted):
        c.put(w, _clip(w, value=float(i)))
    assert c.wanted() == []
    a = c.get(target)
    b = c.get(target)
    assert {a.seed, b.seed} == {wanted[0].seed, wanted[1].seed}
    assert a.request.seed == a.seed
    assert c.get(target) is None
    again = c.wanted()
    assert len(again) == 2 and not ({r.seed for r in again} & {wanted[0].seed, wanted[1].seed})


def test_wanted_round_robin_over_targets():
    c = PrerenderCache(memory_mb=1, variations=2)
    t = [BASE.replace(seed=None, prompt=p) for p in ("a", "b", "c")]
    c.set_targets(t + [t[0].replace(slot=7)])  # same sound on another pad: one target
    assert [r.prompt for r in c.wanted()] == ["a", "b", "c", "a", "b", "c"]


def test_memory_budget_evicts_least_recently_used():
    one = 2 * 1000 * 4  # bytes per clip
    c = PrerenderCache(memory_mb=2.5 * one / 2**20)
    reqs = [BASE.replace(seed=s) for s in range(3)]
    c.put(reqs[0], _clip(reqs[0]))
    c.put(reqs[1], _clip(reqs[1]))
    assert c.get(reqs[0]) is not None  # touch 0: 1 is now the oldest
    c.put(reqs[2], _clip(reqs[2]))
    assert reqs[1] not in c and reqs[0] in c and reqs[2] in c
    assert c.stats()["memory_bytes"] <= 2.5 * one and c.evicted == 1


def test_disk_budget_spills_and_evicts(tmp_path):
    one = 2 * 1000 * 4
    c = PrerenderCache(memory_mb=1.5 * one / 2**20, disk_mb=2.5 * one / 2**20, directory=tmp_path)
    reqs = [BASE.replace(seed=s) for s in range(5)]
    for i, r in enumerate(reqs):
        c.put(r, _clip(r, value=float(i)))
    st = c.stats()
    assert st["memory_clips"] == 1 and st["disk_clips"] == 2 and c.evicted == 2
    assert st["disk_bytes"] <= 2.5 * one
    assert len(list(tmp_path.glob("*.npy"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2
    got = c.get(reqs[2])  # from disk
    assert got is not None and got.audio[0, 0] == 2.0 and got.seed == 2
    assert reqs[0] not in c and reqs[1] not in c
    c.clear()
    assert list(tmp_path.iterdir()) == [] and len(c) == 0


def test_a_clip_bigger_than_every_budget_is_dropped(tmp_path):
    c = PrerenderCache(memory_mb=0.001, disk_mb=0.001, directory=tmp_path)
    c.put(BASE, _clip(BASE, frames=100000))
    assert BASE not in c and c.evicted == 1
