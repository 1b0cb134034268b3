"""StableAudioConfig: the real Stable Audio Open configs, the tiny ones, and unsupported entries."""

from __future__ import annotations

import copy

import pytest

from livegen.models.stable_audio.config import (
    DiTConfig,
    NumberConditionerConfig,
    StableAudioConfig,
    T5ConditionerConfig,
)
from tests.reference.sa_checkpoint import real_config, shrink_config


def test_small_config():
    cfg = StableAudioConfig.from_dict(real_config("small"))
    d = cfg.dit
    assert (d.embed_dim, d.depth, d.num_heads, d.io_channels) == (1024, 16, 8, 64)
    assert (d.cond_token_dim, d.global_cond_dim, d.project_cond_tokens, d.qk_norm) == (768, 768, True, "ln")
    assert (d.dim_heads, d.rotary_dim, d.cond_embed_dim, d.kv_heads) == (128, 64, 1024, 8)
    assert cfg.diffusion_objective == "rf_denoiser"
    assert (cfg.sample_rate, cfg.sample_size, cfg.audio_channels, cfg.io_channels) == (44100, 524288, 2, 64)
    assert cfg.cross_attention_cond_ids == ["prompt", "seconds_total"]
    assert cfg.global_cond_ids == ["seconds_total"]
    assert (cfg.t5_max_length, cfg.t5_model_name, cfg.cond_dim) == (64, "t5-base", 768)
    assert cfg.number_conditioners == [NumberConditionerConfig("seconds_total", 0, 256)]
    assert isinstance(cfg.t5, T5ConditionerConfig) and cfg.t5.id == "prompt"
    assert (cfg.downsampling_ratio, cfg.latent_dim) == (2048, 64)
    assert cfg.pretransform["config"]["encoder"]["config"]["latent_dim"] == 128  # kept as a dict


def test_one_point_oh_config():
    cfg = StableAudioConfig.from_dict(real_config("1.0"))
    d = cfg.dit
    assert (d.embed_dim, d.depth, d.num_heads, d.global_cond_dim, d.project_cond_tokens) == (1536, 24, 24, 1536, False)
    assert (d.qk_norm, d.dim_heads, d.rotary_dim, d.cond_embed_dim, d.kv_heads) == ("none", 64, 32, 768, 12)
    assert cfg.diffusion_objective == "v"
    assert cfg.t5_max_length == 128
    assert [c.id for c in cfg.number_conditioners] == ["seconds_start", "seconds_total"]
    assert all((c.min_val, c.max_val) == (0, 512) for c in cfg.number_conditioners)
    assert cfg.global_cond_ids == ["seconds_start", "seconds_total"]


@pytest.mark.parametrize("kind", ["small", "1.0"])
def test_tiny_configs_are_consistent(kind):
    cfg = StableAudioConfig.from_dict(shrink_config(kind))
    assert cfg.dit.depth == 2 and cfg.downsampling_ratio == 4
    assert cfg.t5_max_length == StableAudioConfig.from_dict(real_config(kind)).t5_max_length
    assert cfg.dit.global_cond_dim == cfg.cond_dim * len(cfg.global_cond_ids)


def test_context_heads_must_divide_query_heads():
    # 1.0 keeps a 768-wide context (project_cond_tokens false): with head dim 32 that would be 24
    # K/V heads for 2 query heads, which the reference cannot run either.
    with pytest.raises(ValueError, match="query heads"):
        StableAudioConfig.from_dict(shrink_config("1.0", dit={"embed_dim": 64, "num_heads": 2}))


def test_unknown_keys_are_ignored():
    raw = real_config("small")
    raw["model"]["diffusion"]["config"]["some_future_option"] = 3
    raw["model"]["conditioning"]["configs"][1]["config"]["extra"] = True
    raw["unrelated"] = {"a": 1}
    cfg = StableAudioConfig.from_dict(raw)
    assert cfg.dit == StableAudioConfig.from_dict(real_config("small")).dit
    assert DiTConfig.from_dict({"embed_dim": 64, "num_heads": 2, "nonsense": 1}).embed_dim == 64


def _mutate(path: list, value, kind: str = "small") -> dict:
    raw = copy.deepcopy(real_config(kind))
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


DIT = ["model", "diffusion", "config"]


@pytest.mark.parametrize(
    "path,value,match",
    [
        (["model_type"], "diffusion_uncond", "model_type"),
        (["model", "diffusion", "type"], "adp_cfg_1d", "diffusion type"),
        (DIT + ["transformer_type"], "x-transformers", "transformer_type"),
        (DIT + ["global_cond_type"], "adaLN", "global_cond_type"),
        (DIT + ["patch_size"], 2, "patch_size"),
        (DIT + ["attn_kwargs"], {"qk_norm": "l2"}, "qk_norm"),
        (DIT + ["ff_kwargs"], {"glu": False}, "glu"),
        (DIT + ["global_cond_dim"], 1536, "global_cond_dim"),
        (["model", "diffusion", "diffusion_objective"], "edm", "diffusion_objective"),
        (["model", "diffusion", "global_cond_ids"], ["prompt"], "number conditioner"),
        (["model", "diffusion", "cross_attention_cond_ids"], ["prompt", "bpm"], "bpm"),
        (["model", "conditioning", "configs", 1, "type"], "clap_text", "clap_text"),
        (["model", "conditioning", "configs", 1, "config"], {"min_val": 5, "max_val": 5}, "max_val"),
        (["model", "pretransform", "type"], "wavelet", "pretransform"),
    ],
)
def test_unsupported_entries_raise(path, value, match):
    with pytest.raises(ValueError, match=match):
        StableAudioConfig.from_dict(_mutate(path, value))
