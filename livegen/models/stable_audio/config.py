"""Typed view of a Stable Audio Open ``model_config.json`` (stable-audio-tools format).

Only what the MLX port implements is accepted: ``model_type`` "diffusion_cond", a "dit"
diffusion model with the "continuous_transformer", "t5" and "number" conditioners. Anything else
raises ``ValueError`` naming the offending entry. Unknown keys that do not change the
architecture are ignored.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

OBJECTIVES = ("v", "rf_denoiser", "rectified_flow")


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    return {k: v for k, v in d.items() if k in params}


# DiT / ContinuousTransformer options that change the architecture away from what the port
# implements; each must keep the reference default.
_DIT_FIXED: dict[str, Any] = {
    "transformer_type": "continuous_transformer",
    "global_cond_type": "prepend",
    "timestep_cond_type": "global",
    "patch_size": 1,
    "input_concat_dim": 0,
    "prepend_cond_dim": 0,
    "causal": False,
    "conformer": False,
    "layer_scale": False,
    "remove_norms": False,
    "add_rope": False,
    "num_memory_tokens": 0,
    "use_sinusoidal_emb": False,
    "use_abs_pos_emb": False,
    "final_cross_attn_ix": -1,
    "sliding_window": None,
}
_ATTN_FIXED: dict[str, Any] = {"differential": False, "feat_scale": False}
_FF_FIXED: dict[str, Any] = {"glu": True, "use_conv": False, "no_bias": False}
_NORM_FIXED: dict[str, Any] = {"bias": False, "fix_scale": False}


@dataclass
class DiTConfig:
    """``model.diffusion.config`` of a "dit" diffusion model (DiTWrapper / DiffusionTransformer)."""

    io_channels: int = 64
    embed_dim: int = 1024
    depth: int = 16
    num_heads: int = 8
    cond_token_dim: int = 768
    global_cond_dim: int = 768
    project_cond_tokens: bool = True
    project_global_cond: bool = True
    qk_norm: str = "none"
    ff_mult: float = 4.0
    rotary_pos_emb: bool = True
    norm_eps: float = 1e-5
    # The reference DiT ignores the cross-attention mask ("temporarily disabled" upstream), so
    # zeroed padding tokens are attended to. False mirrors that; True applies the mask.
    use_cross_attn_mask: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        for key, default in _DIT_FIXED.items():
            if key in d and d[key] != default:
                raise ValueError(f"unsupported DiT option {key}={d[key]!r} (only {default!r} is implemented)")
        attn = dict(d.get("attn_kwargs") or {})
        for key, default in _ATTN_FIXED.items():
            if attn.get(key, default) != default:
                raise ValueError(f"unsupported DiT attn_kwargs {key}={attn[key]!r}")
        qk_norm = attn.get("qk_norm", "none")
        if qk_norm not in ("none", "ln"):
            raise ValueError(f"unsupported DiT attn_kwargs qk_norm={qk_norm!r} (supported: 'none', 'ln')")
        ff = dict(d.get("ff_kwargs") or {})
        for key, default in _FF_FIXED.items():
            if ff.get(key, default) != default:
                raise ValueError(f"unsupported DiT ff_kwargs {key}={ff[key]!r}")
        norm = dict(d.get("norm_kwargs") or {})
        for key, default in _NORM_FIXED.items():
            if norm.get(key, default) != default:
                raise ValueError(f"unsupported DiT norm_kwargs {key}={norm[key]!r}")
        kw = _known(cls, d)
        kw["qk_norm"] = qk_norm
        kw["ff_mult"] = float(ff.get("mult", 4))
        kw["norm_eps"] = float(norm.get("eps", 1e-5))
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    @property
    def dim_heads(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def cond_embed_dim(self) -> int:
        """Width of the cross-attention tokens after ``to_cond_embed``."""
        return self.embed_dim if self.project_cond_tokens else self.cond_token_dim

    @property
    def global_embed_dim(self) -> int:
        return self.embed_dim if self.project_global_cond else self.global_cond_dim

    @property
    def rotary_dim(self) -> int:
        return max(self.dim_heads // 2, 32)

    @property
    def kv_heads(self) -> int:
        return self.cond_embed_dim // self.dim_heads

    def validate(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.cond_token_dim > 0:
            kv = self.kv_heads
            if kv == 0 or self.cond_embed_dim % self.dim_heads or self.num_heads % kv:
                raise ValueError(
                    f"cross-attention context width {self.cond_embed_dim} splits into {kv} heads of "
                    f"{self.dim_heads}, which does not divide the {self.num_heads} query heads"
                )
        if self.rotary_pos_emb and self.rotary_dim > self.dim_heads:
            raise ValueError(f"rotary dim {self.rotary_dim} exceeds the head dim {self.dim_heads}")
        if self.global_cond_dim > 0 and self.global_embed_dim != self.embed_dim:
            raise ValueError("the prepended global token needs global_embed_dim == embed_dim")


@dataclass
class T5ConditionerConfig:
    id: str
    t5_model_name: str = "t5-base"
    max_length: int = 128
    type: str = "t5"

    @classmethod
    def from_dict(cls, id: str, d: dict[str, Any]) -> T5ConditionerConfig:
        if d.get("project_out", False):
            raise ValueError(f"conditioner {id!r}: project_out=True is not supported")
        return cls(id=id, **_known(cls, {k: v for k, v in d.items() if k not in ("id", "type")}))


@dataclass
class NumberConditionerConfig:
    id: str
    min_val: float = 0.0
    max_val: float = 1.0
    type: str = "number"

    @classmethod
    def from_dict(cls, id: str, d: dict[str, Any]) -> NumberConditionerConfig:
        cfg = cls(id=id, **_known(cls, {k: v for k, v in d.items() if k not in ("id", "type")}))
        if not cfg.max_val > cfg.min_val:
            raise ValueError(f"conditioner {id!r}: max_val must exceed min_val")
        return cfg


ConditionerConfig = T5ConditionerConfig | NumberConditionerConfig


@dataclass
class StableAudioConfig:
    dit: DiTConfig
    conditioning: list[ConditionerConfig]
    cond_dim: int = 768
    cross_attention_cond_ids: list[str] = field(default_factory=list)
    global_cond_ids: list[str] = field(default_factory=list)
    diffusion_objective: str = "v"
    sample_rate: int = 44100
    sample_size: int = 2097152
    audio_channels: int = 2
    io_channels: int = 64
    pretransform: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StableAudioConfig:
        model_type = d.get("model_type")
        if model_type != "diffusion_cond":
            raise ValueError(f"unsupported model_type {model_type!r} (only 'diffusion_cond')")
        model = d.get("model") or {}
        diffusion = model.get("diffusion") or {}
        if diffusion.get("type") != "dit":
            raise ValueError(f"unsupported diffusion type {diffusion.get('type')!r} (only 'dit')")
        for key in ("input_concat_ids", "prepend_cond_ids"):
            if diffusion.get(key):
                raise ValueError(f"unsupported diffusion {key}={diffusion[key]!r}")
        if diffusion.get("distribution_shift_options"):
            raise ValueError("unsupported diffusion distribution_shift_options")
        objective = diffusion.get("diffusion_objective", "v")
        if objective not in OBJECTIVES:
            raise ValueError(f"unsupported diffusion_objective {objective!r} (supported: {OBJECTIVES})")
        dit = DiTConfig.from_dict(diffusion.get("config") or {})

        conditioning = model.get("conditioning") or {}
        if conditioning.get("pre_encoded_keys") or conditioning.get("default_keys"):
            raise ValueError("unsupported conditioning pre_encoded_keys/default_keys")
        conds: list[ConditionerConfig] = []
        for info in conditioning.get("configs", []):
            ctype, cid = info.get("type"), info.get("id")
            if ctype == "t5":
                conds.append(T5ConditionerConfig.from_dict(cid, info.get("config") or {}))
            elif ctype == "number":
                conds.append(NumberConditionerConfig.from_dict(cid, info.get("config") or {}))
            else:
                raise ValueError(f"unsupported conditioner type {ctype!r} (id {cid!r}); supported: t5, number")
        if sum(isinstance(c, T5ConditionerConfig) for c in conds) > 1:
            raise ValueError("more than one t5 conditioner is not supported")

        pretransform = model.get("pretransform") or {}
        if pretransform.get("type") != "autoencoder":
            raise ValueError(f"unsupported pretransform type {pretransform.get('type')!r} (only 'autoencoder')")

        cfg = cls(
            dit=dit,
            conditioning=conds,
            cond_dim=int(conditioning.get("cond_dim", 768)),
            cross_attention_cond_ids=list(diffusion.get("cross_attention_cond_ids", [])),
            global_cond_ids=list(diffusion.get("global_cond_ids", [])),
            diffusion_objective=objective,
            sample_rate=int(d.get("sample_rate", 44100)),
            sample_size=int(d.get("sample_size", 2097152)),
            audio_channels=int(d.get("audio_channels", 2)),
            io_channels=int(model.get("io_channels", dit.io_channels)),
            pretransform=pretransform,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        ids = {c.id: c for c in self.conditioning}
        for cid in self.cross_attention_cond_ids + self.global_cond_ids:
            if cid not in ids:
                raise ValueError(f"conditioning id {cid!r} is used by the diffusion model but not configured")
        for cid in self.global_cond_ids:
            if not isinstance(ids[cid], NumberConditionerConfig):
                raise ValueError(f"global conditioning {cid!r} must be a number conditioner")
        if self.dit.cond_token_dim != (self.cond_dim if self.cross_attention_cond_ids else 0):
            raise ValueError(f"DiT cond_token_dim {self.dit.cond_token_dim} != cond_dim {self.cond_dim}")
        expected_global = self.cond_dim * len(self.global_cond_ids)
        if self.dit.global_cond_dim != expected_global:
            raise ValueError(
                f"DiT global_cond_dim {self.dit.global_cond_dim} != {len(self.global_cond_ids)} global "
                f"conditioner(s) x cond_dim {self.cond_dim}"
            )
        if self.io_channels != self.dit.io_channels:
            raise ValueError(f"model io_channels {self.io_channels} != DiT io_channels {self.dit.io_channels}")

    @property
    def t5(self) -> T5ConditionerConfig | None:
        return next((c for c in self.conditioning if isinstance(c, T5ConditionerConfig)), None)

    @property
    def number_conditioners(self) -> list[NumberConditionerConfig]:
        return [c for c in self.conditioning if isinstance(c, NumberConditionerConfig)]

    @property
    def t5_max_length(self) -> int | None:
        return self.t5.max_length if self.t5 else None

    @property
    def t5_model_name(self) -> str | None:
        return self.t5.t5_model_name if self.t5 else None

    @property
    def downsampling_ratio(self) -> int:
        return int((self.pretransform.get("config") or {}).get("downsampling_ratio", 2048))

    @property
    def latent_dim(self) -> int:
        return int((self.pretransform.get("config") or {}).get("latent_dim", self.io_channels))
