"""Daemon settings: a YAML file -> validated dataclasses.

Every mistake in the file is reported at once, each as ``file:line: sentence`` (unknown keys
come with a did-you-mean). The line-numbered YAML loader here is shared with
:mod:`livegen.mapping`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from livegen.yaml_safe import YamlLimitError, check_text_size, limited

REPO_MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"
PACKAGE_MAPPINGS = Path(__file__).resolve().parent / "mappings"  # where a wheel puts livegen.mappings


def shipped_mappings_dir() -> Path:
    """The folder of the mappings that ship with livegen: the copy a wheel installs as the package
    data ``livegen.mappings``, else (a source checkout or an editable install) the repository's
    ``mappings/``."""
    installed = PACKAGE_MAPPINGS
    return installed if installed.is_dir() else REPO_MAPPINGS


def shipped_mapping_names() -> list[str]:
    return sorted(p.stem for p in shipped_mappings_dir().glob("*.yaml"))


def shipped_mapping(name: str) -> Path | None:
    """The shipped mapping called ``name`` (``akai-mpd218`` or ``akai-mpd218.yaml``), or None. A
    value with a folder in it is a path, never a shipped name."""
    if not name or "/" in name or os.sep in name:
        return None
    file = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    path = shipped_mappings_dir() / file
    return path if path.is_file() else None


DEFAULT_MAPPING = shipped_mappings_dir() / "default.yaml"


# ---------------------------------------------------------------------------------------------
# Line-numbered YAML
# ---------------------------------------------------------------------------------------------
class LineDict(dict):
    """A YAML mapping that remembers its line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return getattr(self, "key_lines", {}).get(key, self.line)


class LineList(list):
    """A YAML sequence that remembers its line and the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        lines = getattr(self, "item_lines", [])
        return lines[index] if 0 <= index < len(lines) else self.line


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    d = LineDict()
    d.line = node.start_mark.line + 1
    d.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            loader.problems.append((line, "a mapping key must be a plain value, not a list or mapping."))
            continue
        if key in d:
            first = d.key_lines[key]
            loader.problems.append((line, f"the key {key!r} appears twice (first on line {first})."))
            continue
        d[key] = loader.construct_object(value_node, deep=True)
        d.key_lines[key] = line
    return d


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    seq = LineList(loader.construct_object(child, deep=True) for child in node.value)
    seq.line = node.start_mark.line + 1
    seq.item_lines = [child.start_mark.line + 1 for child in node.value]
    return seq


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    """Parse YAML keeping line numbers; returns ``(data, errors)`` (errors as ``source:line: ...``).

    The size, alias and depth limits of :mod:`livegen.yaml_safe` apply (a bomb is refused).
    """
    try:
        check_text_size(text)
    except YamlLimitError as exc:
        return None, [exc.located(source)]
    loader = limited(_LineLoader)(text)
    loader.problems = []
    try:
        data = loader.get_single_data()
    except YamlLimitError as exc:
        return None, [exc.located(source)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "invalid YAML"
        return None, [f"{source}:{line}: this is not valid YAML ({what})."]
    except yaml.YAMLError as exc:
        return None, [f"{source}:1: this is not valid YAML ({exc})."]
    finally:
        loader.dispose()
    return data, [f"{source}:{line}: {msg[0].upper()}{msg[1:]}" for line, msg in loader.problems]


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------------------------
# Settings dataclasses (metadata: doc, min, max, choices, check)
# ---------------------------------------------------------------------------------------------
def _f(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, doc: str = "",
       **meta: Any) -> Any:
    md = {"doc": doc, **meta}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def _check_host(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must be a host name or address"


def _check_allow(v: Any) -> str | None:
    try:
        ipaddress.ip_network(str(v), strict=False)
    except ValueError:
        return f"must hold IP addresses or networks (like 127.0.0.1 or 192.168.1.0/24), not {v!r}"
    return None


RAY_CLIENT_REFUSED = (
    "cannot be a Ray Client address (ray://): Ray Serve's streaming handle calls do not work over Ray "
    "Client (ray-project/ray#43357; Ray raises 'Streaming DeploymentHandles are not currently supported "
    "when connected to a remote Ray cluster using Ray Client'); make this machine a node of the cluster "
    "(`ray start --address=HOST:6379 --num-cpus=0 --num-gpus=0`) and use auto, or the head's HOST:6379")


def check_ray_address(v: Any) -> str | None:
    """None for a usable pool address (auto, local where the caller allows it, HOST:PORT), else why not."""
    if not isinstance(v, str) or not v.strip():
        return "must be auto or the cluster's GCS address HOST:PORT"
    if v.strip().lower().startswith("ray://"):
        return RAY_CLIENT_REFUSED
    return None


def _check_latency(v: Any) -> str | None:
    if isinstance(v, str):
        return None if v in ("low", "high") else f"must be 'low', 'high' or seconds, not {v!r}"
    return None if 0 < v < 2 else "must be between 0 and 2 seconds"


@dataclass
class ModelSettings:
    engine: str = _f("stable-audio", choices=("stable-audio", "musicgen"),
                     doc="Which pipeline runs this model.")
    path: str = _f("stabilityai/stable-audio-open-small",
                   doc="Local checkpoint folder or Hugging Face repo id.")
    t5: str | None = _f(None, doc="T5 text-encoder folder or repo (Stable Audio); null: next to the model.")
    seconds: float = _f(4.0, min=0.1, max=600.0, doc="Default duration when a request gives none.")
    steps: int | None = _f(None, min=1, max=1000, doc="Default diffusion steps; null: the model's default.")
    cfg_scale: float | None = _f(None, min=0.0, max=50.0, doc="Default CFG scale; null: the model's default.")
    sampler: str | None = _f(None, doc="Default sampler name; null: the model's default.")
    negative_prompt: str | None = _f(None, doc="Default negative prompt.")
    top_k: int = _f(250, min=0, max=100000, doc="MusicGen: top-k sampling (0 disables).")
    top_p: float = _f(0.0, min=0.0, max=1.0, doc="MusicGen: nucleus sampling (0 disables).")
    temperature: float = _f(1.0, min=0.01, max=10.0, doc="MusicGen: sampling temperature.")


@dataclass
class OscSettings:
    enabled: bool = _f(True, doc="Listen for OSC.")
    host: str = _f("127.0.0.1", check=_check_host, doc="Address to listen on (0.0.0.0 for the network).")
    port: int = _f(9000, min=1, max=65535, doc="UDP port to listen on.")
    reply: bool = _f(True, doc="Send replies (done, error, progress) back to the sender.")
    status_host: str = _f("127.0.0.1", check=_check_host, doc="Where pushed status messages go.")
    status_port: int | None = _f(None, min=1, max=65535, doc="UDP port for pushed status; null: none.")
    allow: list[str] = _f(factory=lambda: ["127.0.0.1", "::1"], check=_check_allow,
                          doc="Sender addresses/networks accepted; others are ignored.")


@dataclass
class MidiSettings:
    enabled: bool = _f(True, doc="Listen for MIDI.")
    virtual: bool = _f(True, doc="Create a virtual input port others can connect to.")
    port_name: str = _f("livegen", doc="Name of the virtual port (and the client).")
    connect: list[str] = _f(factory=list, doc="Existing MIDI outputs to connect (substring match).")
    api: str | None = _f(None, choices=(None, "alsa", "jack", "coremidi", "winmm"),
                         doc="rtmidi API; null: CoreMIDI on macOS, ALSA on Linux, JACK if ALSA is absent.")
    feedback_connect: list[str] = _f(factory=list, doc="MIDI inputs (controllers) the feedback output connects "
                                     "to (substring match), besides the mapping's feedback.connect.")


@dataclass
class AudioSettings:
    enabled: bool = _f(True, doc="Play clips through the audio device.")
    device: str | int | None = _f(None, doc="Output device name or index; null: the default device.")
    sample_rate: int = _f(44100, min=8000, max=192000, doc="Stream rate in Hz; clips at other rates are resampled to it.")
    channels: int = _f(2, min=1, max=8, doc="Output channels.")
    blocksize: int = _f(256, min=0, max=8192, doc="Frames per callback (0: let the host choose).")
    latency: str | float = _f("low", check=_check_latency, doc="'low', 'high' or seconds.")
    voices: int = _f(16, min=1, max=256, doc="Clips sounding at once (one per slot); past it the oldest other slot's fades out.")
    ring_seconds: float = _f(4.0, min=0.1, max=120.0, doc="Capacity of a streaming voice's ring buffer.")
    stream: bool = _f(True, doc="Uncached play requests sound while they are generated (Stable Audio VAE tiles, "
                                "MusicGen bursts); false: a clip plays once it is complete. Cached pads always play "
                                "from their buffer.")
    stream_tile_latents: int = _f(16, min=1, max=1024,
                                  doc="Streaming Stable Audio: latents per VAE tile (2048 frames each at 44.1 kHz); "
                                      "smaller tiles sound sooner and decode a little slower.")
    stream_burst_seconds: float = _f(0.5, min=0.02, max=10.0, doc="Streaming MusicGen: seconds of audio per burst.")
    fade_ms: float = _f(5.0, min=0.0, max=500.0, doc="Fade for stops, chokes and loop seams.")
    backend: str = _f("rtmixer", choices=("rtmixer", "rtmixer-inprocess", "python"),
                      doc="The audio callback: rtmixer (C, no Python in the audio thread; the stream in a child process "
                          "that is restarted when the audio server comes back), rtmixer-inprocess, or python (the reference mixer).")
    client_name: str = _f("livegen", doc="JACK client name of the audio output (ports NAME:out_L, NAME:out_R).")


@dataclass
class FolderSettings:
    path: Path | None = _f(None, doc="Folder that receives WAV + JSON files (a DAW-watched folder).")
    subtype: str = _f("float", choices=("float", "pcm24", "pcm16"), doc="WAV sample format.")
    sidecar: bool = _f(True, doc="Write a JSON sidecar next to every WAV.")


@dataclass
class TempoSettings:
    bpm: float = _f(120.0, min=20.0, max=400.0, doc="Tempo for bars and launch quantisation.")
    beats_per_bar: int = _f(4, min=1, max=32, doc="Beats in a bar.")
    source: str = _f("internal", choices=("internal", "midi_clock", "link"),
                     doc="Where the tempo comes from: internal (settings, OSC, mappings), midi_clock (follow "
                         "the MIDI clock, its Start/Continue/Stop and Song Position) or link (join the Ableton "
                         "Link session: its tempo and bar lines; needs the link extra).")
    clock_timeout: float = _f(0.5, min=0.05, max=10.0,
                              doc="MIDI clock: seconds without a tick (while the host plays) before it counts as lost.")


@dataclass
class LinkSettings:
    start_stop_sync: bool = _f(False, doc="Share start/stop with the Link session: a stop there stops every slot.")
    quantum: int | None = _f(None, min=1, max=32,
                             doc="Beats of Link's phase cycle the bar grid is anchored on; null: tempo.beats_per_bar.")


@dataclass
class LevelsSettings:
    normalize: bool = _f(True, doc="Normalise every clip's loudness (ITU-R BS.1770) before it is cut and faded.")
    target_lufs: float = _f(-14.0, min=-70.0, max=0.0, doc="Integrated loudness each clip is brought to (LUFS).")
    true_peak_dbtp: float = _f(-1.0, min=-30.0, max=0.0, doc="True-peak ceiling of a clip (dBTP, 4x oversampled).")
    max_gain_db: float = _f(30.0, min=0.0, max=80.0, doc="The most a quiet clip is boosted (a noise floor stays down).")
    max_limit_db: float = _f(6.0, min=0.0, max=40.0,
                             doc="Deepest peak reduction of the clip limiter; 0: a plain gain under the ceiling.")


@dataclass
class EngineSettings:
    queue_size: int = _f(8, min=1, max=1000, doc="Pending requests kept; the oldest lowest-priority drops.")
    warmup_seconds: list[float] = _f(factory=lambda: [4.0], min=0.1, max=600.0,
                                     doc="Durations compiled and run once at start.")
    max_steps: int = _f(250, min=1, max=10000, doc="Requests with more steps are refused.")
    max_seconds: float = _f(47.0, min=0.1, max=3600.0, doc="Requests longer than this are refused.")
    max_prompt_chars: int = _f(500, min=1, max=100000, doc="Longer prompts are refused.")
    finish_running_on_shutdown: bool = _f(False, doc="On shutdown, finish the clip being rendered.")
    kind: str = _f("local", choices=("local", "ray"),
                   doc="Where clips render: local (this machine's generation thread) or ray (a Ray Serve pool, "
                       "`livegen serve-pool`; the local models still load and render when the pool cannot).")
    address: str = _f("auto", check=check_ray_address,
                      doc="kind ray: the cluster: auto (RAY_ADDRESS, or the cluster this machine is a node of) or "
                          "the head's GCS address HOST:6379 (this machine a node of it); not ray:// (Ray Client "
                          "cannot carry Serve's streaming calls).")
    deployment: str = _f("livegen", doc="kind ray: the pool's name (`livegen serve-pool --name`); one Serve "
                                        "application per model, named <deployment>-<model>.")
    remote_deadline: float = _f(20.0, min=0.1, max=3600.0,
                                doc="kind ray: seconds a remote clip may take before it is rendered here instead, extended to the "
                                    "launch point it is meant for (the request's next beat or bar after them).")
    remote_start: float = _f(2.0, min=0.05, max=600.0,
                             doc="kind ray: seconds for the pool to start a clip (else it counts as overloaded and "
                                 "the clip renders here).")


@dataclass
class PrerenderSettings:
    enabled: bool = _f(False, doc="Render variations of fixed-prompt pads in idle time.")
    memory_mb: float = _f(256.0, min=0.0, max=65536.0, doc="RAM budget for pre-rendered clips.")
    disk_mb: float = _f(0.0, min=0.0, max=1048576.0, doc="Disk budget for clips spilled from RAM (0: none).")
    directory: Path | None = _f(None, doc="Where spilled clips go; null: a folder under the user cache.")
    variations: int = _f(2, min=1, max=64, doc="Variations kept ready per pad.")


@dataclass
class WebSettings:
    enabled: bool = _f(True, doc="Serve the control surface in the browser (`livegen serve --no-web` turns it off).")
    host: str = _f("127.0.0.1", check=_check_host,
                   doc="Address to listen on; any other than loopback needs the token and osc.allow.")
    port: int = _f(8765, min=1, max=65535, doc="TCP port of the control surface.")
    token: str | None = _f(None, doc="Token a wider bind asks for; null: a new random one at every start.")


@dataclass
class Settings:
    models: dict[str, ModelSettings] = _f(factory=lambda: {"default": ModelSettings()},
                                          doc="Named models; requests pick one by name.")
    default_model: str = _f("default", doc="Model used by requests naming 'default' or none.")
    osc: OscSettings = _f(factory=OscSettings, doc="OSC input and replies.")
    midi: MidiSettings = _f(factory=MidiSettings, doc="MIDI input.")
    audio: AudioSettings = _f(factory=AudioSettings, doc="Audio output.")
    folder: FolderSettings = _f(factory=FolderSettings, doc="Writing clips into a folder.")
    tempo: TempoSettings = _f(factory=TempoSettings, doc="Tempo.")
    link: LinkSettings = _f(factory=LinkSettings, doc="Ableton Link (with tempo.source: link).")
    levels: LevelsSettings = _f(factory=LevelsSettings, doc="Clip loudness and peaks.")
    engine: EngineSettings = _f(factory=EngineSettings, doc="Generation thread.")
    prerender: PrerenderSettings = _f(factory=PrerenderSettings, doc="Pre-rendering.")
    web: WebSettings = _f(factory=WebSettings, doc="The control surface in the browser.")
    mappings: list[Path] = _f(factory=lambda: [DEFAULT_MAPPING], doc="Mapping files, applied in order; a bare name (launchpad) is a shipped mapping.")
    log_level: str = _f("info", choices=("debug", "info", "warning", "error"), doc="Log verbosity.")

    def model(self, name: str | None = None) -> ModelSettings:
        """The settings of model ``name`` ('default' or None: ``default_model``); KeyError if absent."""
        key = self.default_model if name in (None, "", "default") else name
        if key not in self.models:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(self.models))}")
        return self.models[key]


class SettingsError(ValueError):
    """Every mistake in a settings file, one ``file:line: sentence`` per line."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------------------------------------
# Generic builder
# ---------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp in (str, Path):
        return "a text value"
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping (key: value lines)"
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp):
            names.append("null")
        return " or ".join(names)
    return str(tp)


class _Ctx:
    def __init__(self, source: str, base_dir: Path | None):
        self.source = source
        self.base_dir = base_dir
        self.errors: list[str] = []

    def err(self, line: int, msg: str) -> None:
        self.errors.append(f"{self.source}:{line}: {msg}")


def _convert(value: Any, tp: Any, meta: dict, name: str, line: int, ctx: _Ctx) -> tuple[bool, Any]:
    """Return (ok, converted). Errors are reported in ``ctx``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for a in args:
            if a is type(None):
                continue
            if _matches(value, a):
                return _convert(value, a, meta, name, line, ctx)
        ctx.err(line, f"'{name}' must be {_type_name(tp)}, not {_describe(value)}.")
        return False, None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            ctx.err(line, f"'{name}' must be {_type_name(tp)}, not {_describe(value)}.")
            return False, None
        return True, _build(tp, value, name, ctx)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            ctx.err(line, f"'{name}' must be a list, not {_describe(value)}.")
            return False, None
        out = []
        ok_all = True
        for i, item in enumerate(value):
            item_line = value.line_of(i) if isinstance(value, LineList) else line
            ok, conv = _convert(item, item_tp, meta, f"{name}[{i}]", item_line, ctx)
            ok_all &= ok
            out.append(conv)
        return ok_all, out
    if origin is dict:
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            ctx.err(line, f"'{name}' must be a mapping, not {_describe(value)}.")
            return False, None
        out_d = {}
        for k, v in value.items():
            kl = value.line_of(k) if isinstance(value, LineDict) else line
            if not isinstance(k, str):
                ctx.err(kl, f"the names under '{name}' must be text, not {_describe(k)}.")
                continue
            ok, conv = _convert(v, val_tp, meta, f"{name}.{k}", kl, ctx)
            if ok:
                out_d[k] = conv
        return True, out_d
    if not _matches(value, tp):
        ctx.err(line, f"'{name}' must be {_type_name(tp)}, not {_describe(value)}.")
        return False, None
    if tp is float:
        value = float(value)
    if tp is Path:
        p = Path(value).expanduser()
        if not p.is_absolute() and ctx.base_dir is not None:
            p = Path(os.path.normpath(ctx.base_dir / p))
        value = p
    lo, hi = meta.get("min"), meta.get("max")
    if tp in (int, float) and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        ctx.err(line, f"'{name}' must be between {lo:g} and {hi:g}, not {value:g}.")
        return False, None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join("null" if c is None else repr(c) for c in choices)
        hint = did_you_mean(value, [c for c in choices if c])
        ctx.err(line, f"'{name}' must be one of {shown}, not {value!r}.{hint}")
        return False, None
    check = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            ctx.err(line, f"'{name}' {problem}.")
            return False, None
    return True, value


def _matches(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (str, Path):
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin is list:
        return isinstance(value, list)
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return False


def _describe(value: Any) -> str:
    if value is None:
        return "null (empty)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _build(cls: type, node: dict, prefix: str, ctx: _Ctx) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in node.items():
        line = node.line_of(key) if isinstance(node, LineDict) else 1
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            where = f" in '{prefix}'" if prefix else ""
            ctx.err(line, f"unknown setting '{full}'{where}.{did_you_mean(key, fields)}"
                    f" Known: {', '.join(fields)}.")
            continue
        ok, conv = _convert(value, hints[key], dict(fields[key].metadata), full, line, ctx)
        if ok:
            kwargs[key] = conv
    return cls(**kwargs)


def settings_from_dict(data: Any, source: str = "<settings>", base_dir: Path | None = None) -> Settings:
    ctx = _Ctx(source, base_dir)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError([f"{source}:1: the settings file must be a mapping of 'key: value' lines."])
    settings = _build(Settings, data, "", ctx)
    raw = data.get("mappings")
    if isinstance(raw, list) and len(raw) == len(settings.mappings):  # names of shipped mappings
        named = [shipped_mapping(str(r)) if not p.exists() else None for r, p in zip(raw, settings.mappings, strict=True)]
        settings = dataclasses.replace(settings, mappings=[n or p for n, p in zip(named, settings.mappings, strict=True)])
    if settings.default_model not in settings.models:
        line = data.line_of("default_model") if isinstance(data, LineDict) else 1
        known = ", ".join(sorted(settings.models)) or "none"
        hint = did_you_mean(settings.default_model, settings.models)
        ctx.err(line, f"default_model {settings.default_model!r} is not one of the models ({known}).{hint}")
    if ctx.errors:
        raise SettingsError(ctx.errors)
    return settings


def load_settings(path: str | Path | None = None) -> Settings:
    """Read a settings YAML file (defaults when ``path`` is None).

    Relative paths in the file are resolved against the file's folder. Raises
    :class:`SettingsError` listing every mistake as ``file:line: sentence``.
    """
    if path is None:
        return Settings()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([f"{p}:0: cannot read the settings file ({exc.strerror or exc})."]) from exc
    data, errors = load_yaml(text, str(p))
    if data is None and errors:
        raise SettingsError(errors)
    try:
        settings = settings_from_dict(data, str(p), p.resolve().parent)
    except SettingsError as exc:
        raise SettingsError(errors + exc.errors) from None
    if errors:
        raise SettingsError(errors)
    return settings


def documented_keys(cls: type = Settings, prefix: str = "") -> list[tuple[str, str]]:
    """Every settings key (dotted) with its one-line doc, in declaration order."""
    out: list[tuple[str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        out.append((name, f.metadata.get("doc", "")))
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(documented_keys(tp, name + "."))
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            out.extend(documented_keys(typing.get_args(tp)[1], name + ".<name>."))
    return out
