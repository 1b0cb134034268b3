"""Every limit livegen enforces, in one place.

Two kinds:

- **Fixed ranges** (this module's constants): what any request, setting or mapping may hold,
  whatever the model (seed range, tempo, gain, slots, the absolute ceiling on steps...). The
  settings file (``engine.max_steps``, ``engine.max_seconds``, ``engine.max_prompt_chars``) can
  only narrow them.
- **Model capabilities** (:class:`ModelCaps`): what the loaded model can render: its window (the
  longest clip), the shortest clip (one frame), its samplers, whether it takes steps, its
  defaults. They come from the loaded engine (:meth:`ModelCaps.from_engine`) or, before the
  models are loaded (``--dry-run``, start-up checks), from the checkpoint's configuration file
  when it is on disk (:func:`caps_from_settings`).

:class:`Limits` combines both for one daemon: :mod:`livegen.request` validates against it, the
session refuses at intake what it would refuse, and the mapping schema checks literals against
the fixed ranges.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---- fixed ranges --------------------------------------------------------------------------
SEED_RANGE = (0, 2**32 - 1)
BPM_RANGE = (20.0, 400.0)
BEATS_PER_BAR_RANGE = (1, 32)
CFG_RANGE = (0.0, 50.0)
GAIN_RANGE = (0.0, 4.0)
SLOT_COUNT = 1024  # slots 0 .. 1023
STEPS_CEILING = 1000  # no published sampler configuration uses more; engine.max_steps narrows it
SECONDS_CEILING = 3600.0  # engine.max_seconds narrows it; the model's window narrows it further
BARS_RANGE = (1.0 / 64.0, 1024.0)
PROMPT_CHARS_CEILING = 100_000
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
SUBSCRIBERS_MAX = 32  # /livegen/subscribe targets kept at once
SUBSCRIPTION_SECONDS = 600.0  # a subscription expires unless renewed within this time
JOB_HISTORY = 256  # finished jobs remembered (for reroll and status)

# Defaults of the settings file's narrowing keys (settings.EngineSettings).
DEFAULT_MAX_STEPS = 250
DEFAULT_MAX_SECONDS = 47.0
DEFAULT_MAX_PROMPT_CHARS = 500


class EngineKind(str, enum.Enum):
    STABLE_AUDIO = "stable-audio"
    MUSICGEN = "musicgen"


# Samplers each Stable Audio objective accepts (livegen.models.stable_audio.sampling).
RF_SAMPLERS = ("pingpong", "euler", "rk4", "dpmpp")
V_SAMPLERS = ("dpmpp-3m-sde", "dpmpp-2m-sde", "dpmpp-2m")
SA_DEFAULTS = {  # objective -> (sampler, steps, cfg): as livegen.models.stable_audio.pipeline.DEFAULTS
    "rf_denoiser": ("pingpong", 8, 1.0),
    "rectified_flow": ("euler", 50, 7.0),
    "v": ("dpmpp-3m-sde", 100, 7.0),
}
MUSICGEN_CFG = 3.0


def samplers_for_objective(objective: str) -> tuple[str, ...]:
    return V_SAMPLERS if objective == "v" else RF_SAMPLERS


@dataclass(frozen=True)
class ModelCaps:
    """What one model can render. ``max_seconds`` None: unknown (not checked yet)."""

    name: str
    engine: EngineKind
    sample_rate: int
    max_seconds: float | None
    samplers: tuple[str, ...] = ()  # empty: the model has no sampler choice (MusicGen)
    default_sampler: str | None = None
    default_steps: int | None = None  # None: the model takes no steps (MusicGen)
    default_cfg: float = 1.0
    default_seconds: float = 4.0
    default_negative_prompt: str | None = None
    loaded: bool = False  # True when read from the loaded engine, False when from configuration

    @property
    def min_seconds(self) -> float:
        """The shortest clip: one frame."""
        return 1.0 / self.sample_rate

    @property
    def takes_steps(self) -> bool:
        return self.default_steps is not None

    def window_text(self) -> str:
        return f"model {self.name!r} renders at most {self.max_seconds:.2f} s" if self.max_seconds else ""

    @classmethod
    def from_engine(cls, name: str, engine: Any, model: Any | None = None) -> ModelCaps:
        """Capabilities of a loaded pipeline (Stable Audio or MusicGen), with the settings'
        defaults (``model``: a ``settings.ModelSettings``) taking precedence over the model's."""
        sr = int(engine.sample_rate)
        defaults = getattr(engine, "defaults", None)
        if defaults is not None and hasattr(engine, "objective"):  # Stable Audio: the window is hard
            window = float(engine.max_seconds) if getattr(engine, "max_seconds", None) else None
            kind = EngineKind.STABLE_AUDIO
            samplers = samplers_for_objective(str(engine.objective))
            sampler, steps, cfg = defaults.get("sampler"), defaults.get("steps"), defaults.get("cfg_scale")
        else:  # MusicGen: its sinusoidal positions extend past the trained window: engine.max_seconds
            # is the limit (the trained window is reported by the engine as ``max_seconds``)
            window = None
            kind = EngineKind.MUSICGEN
            samplers, sampler, steps, cfg = (), None, None, MUSICGEN_CFG
        return cls._with_settings(name, kind, sr, window, samplers, sampler, steps, cfg, model, loaded=True)

    @classmethod
    def _with_settings(cls, name: str, kind: EngineKind, sr: int, window: float | None,
                       samplers: tuple[str, ...], sampler: str | None, steps: int | None, cfg: float | None,
                       model: Any | None, loaded: bool) -> ModelCaps:
        seconds = 4.0
        negative = None
        if model is not None:
            sampler = model.sampler or sampler
            steps = model.steps if (model.steps is not None and steps is not None) else steps
            cfg = model.cfg_scale if model.cfg_scale is not None else cfg
            seconds = float(model.seconds)
            negative = model.negative_prompt
        return cls(name=name, engine=kind, sample_rate=sr, max_seconds=window, samplers=tuple(samplers),
                   default_sampler=sampler if samplers else None, default_steps=steps,
                   default_cfg=float(cfg if cfg is not None else 1.0), default_seconds=seconds,
                   default_negative_prompt=negative, loaded=loaded)


def caps_from_config(name: str, engine: str, config: Mapping[str, Any] | None, model: Any | None = None
                     ) -> ModelCaps:
    """Capabilities from a checkpoint's configuration (``model_config.json`` of Stable Audio,
    ``config.json`` of MusicGen); ``config`` None: the engine's generic capabilities (window
    unknown)."""
    if EngineKind(engine) is EngineKind.STABLE_AUDIO:
        sr, window, objective = 44100, None, None
        if config:
            sr = int(config.get("sample_rate", 44100))
            size = config.get("sample_size")
            window = float(size) / sr if size else None
            objective = (config.get("model") or {}).get("diffusion", {}).get("diffusion_objective")
        if objective in SA_DEFAULTS:
            samplers = samplers_for_objective(objective)
            sampler, steps, cfg = SA_DEFAULTS[objective]
        else:  # unknown objective: any sampler a Stable Audio model may have
            samplers, sampler, steps, cfg = RF_SAMPLERS + V_SAMPLERS, None, 8, 1.0
        return ModelCaps._with_settings(name, EngineKind.STABLE_AUDIO, sr, window, samplers, sampler, steps, cfg,
                                        model, loaded=False)
    sr, window = 32000, None
    if config:
        try:
            from livegen.models.musicgen.config import MusicGenConfig

            cfg = MusicGenConfig.from_dict(dict(config))
            sr = int(cfg.sampling_rate)
            window = None  # the window depends on the codebooks; the loaded engine reports it
        except Exception:  # noqa: BLE001 - a config we cannot read: generic capabilities
            pass
    return ModelCaps._with_settings(name, EngineKind.MUSICGEN, sr, window, (), None, None, MUSICGEN_CFG, model,
                                    loaded=False)


def read_checkpoint_config(path: str, engine: str) -> dict[str, Any] | None:
    """The configuration JSON of a local checkpoint or converted folder, if there is one (no
    download, no hub lookup); None when it is not on disk or cannot be read."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    names = ("model_config.json", "config.json") if EngineKind(engine) is EngineKind.STABLE_AUDIO else (
        "config.json",)
    for n in names:
        f = folder / n
        if f.is_file() and f.stat().st_size < 4_000_000:
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
    return None


def caps_from_settings(settings: Any) -> dict[str, ModelCaps]:
    """Capabilities of every configured model, before loading (from configuration on disk)."""
    out: dict[str, ModelCaps] = {}
    for name, m in settings.models.items():
        out[name] = caps_from_config(name, m.engine, read_checkpoint_config(m.path, m.engine), m)
    return out


@dataclass(frozen=True)
class Limits:
    """The limits in force for one daemon: the settings' narrowing keys and the models' caps."""

    max_steps: int = DEFAULT_MAX_STEPS
    max_seconds: float = DEFAULT_MAX_SECONDS
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    models: dict[str, ModelCaps] = field(default_factory=dict)
    default_model: str = "default"

    @classmethod
    def from_settings(cls, settings: Any, models: dict[str, ModelCaps] | None = None) -> Limits:
        e = settings.engine
        return cls(max_steps=int(e.max_steps), max_seconds=float(e.max_seconds),
                   max_prompt_chars=int(e.max_prompt_chars), models=dict(models or {}),
                   default_model=settings.default_model)

    def resolve(self, model: str | None) -> str:
        return self.default_model if model in (None, "", "default") else str(model)

    def caps(self, model: str | None) -> ModelCaps | None:
        return self.models.get(self.resolve(model))

    def seconds_ceiling(self, model: str | None) -> tuple[float, str]:
        """The longest clip for ``model`` and a phrase saying why."""
        caps = self.caps(model)
        if caps is not None and caps.max_seconds is not None and caps.max_seconds < self.max_seconds:
            return caps.max_seconds, f"model {caps.name!r} renders at most {caps.max_seconds:.2f} s"
        return self.max_seconds, f"this daemon allows at most {self.max_seconds:g} s (engine.max_seconds)"

    def min_seconds(self, model: str | None) -> float:
        caps = self.caps(model)
        return caps.min_seconds if caps is not None else 1.0 / 48000.0


def finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
