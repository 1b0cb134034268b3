"""`livegen generate`: argument checks (before any model is loaded) and real runs on a tiny model.

The tiny model is built with MLX alone (random weights saved as a converted livegen directory with
a tiny T5 and tokenizer), so these tests need no PyTorch reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import soundfile as sf

import livegen.cli.generate as gen
from livegen.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_converted(tmp_path_factory) -> Path:
    from tests.models.stable_audio.random_converted import write_random_converted

    out = tmp_path_factory.mktemp("tiny") / "converted"
    write_random_converted(out)
    return out


def _args(tmp_path: Path, *extra: str, model: str = "stable-audio-small") -> list[str]:
    return ["generate", "--model", model, "--prompt", "deep bass loop", "--output", str(tmp_path / "o.wav"),
            *extra]


@pytest.fixture
def no_loading(monkeypatch):
    def fail(*_a, **_k):
        raise AssertionError("the model was loaded before the arguments were checked")

    from livegen.models.stable_audio.pipeline import StableAudioPipeline

    monkeypatch.setattr(StableAudioPipeline, "from_pretrained", fail)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seconds", "-1"], "--seconds must be positive"),
        (["--seconds", "20"], "--seconds 20 is too long for stable-audio-small (at most 11.89)"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--init-audio", "/nonexistent/x.wav"], "--init-audio file /nonexistent/x.wav does not exist"),
        (["--init-strength", "0.5"], "--init-strength needs --init-audio"),
        (["--sampler", "dpmpp-3m-sde"], "--sampler 'dpmpp-3m-sde' does not suit stable-audio-small"),
        (["--melody", "m.wav"], "--melody only apply to MusicGen models"),
        (["--cfg-scale", "-2"], "--cfg-scale must not be negative"),
        (["--prompt", " "], "--prompt must not be empty"),
    ],
)
def test_bad_arguments_exit_2_before_loading(no_loading, tmp_path, capsys, extra, message):
    assert main(_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("livegen generate: ") and "\n" not in err


def test_bad_model_output_and_musicgen_flags(no_loading, tmp_path, capsys):
    assert main(_args(tmp_path, model="no-such-model")) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    # argparse keeps the last --output
    assert main(_args(tmp_path, "--output", str(tmp_path))) == 2
    assert "is a folder; give a file name such as" in capsys.readouterr().err
    assert main(_args(tmp_path, "--steps", "4", model="musicgen-small")) == 2
    assert "--steps only apply to Stable Audio models" in capsys.readouterr().err
    assert main(_args(tmp_path, "--top-p", "1.5", model="musicgen-small")) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    assert main(_args(tmp_path, model=str(tmp_path / "bert"))) == 2
    assert "is not a supported model" in capsys.readouterr().err


def test_musicgen_is_dispatched(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("livegen.cli.generate_musicgen")
    fake.run_musicgen = lambda args: calls.append(args) or 0
    monkeypatch.setitem(sys.modules, "livegen.cli.generate_musicgen", fake)
    assert main(_args(tmp_path, "--top-k", "50", "--seconds", "3", model="musicgen-stereo-small")) == 0
    assert calls and calls[0].top_k == 50 and calls[0].model == "musicgen-stereo-small"
    monkeypatch.setitem(sys.modules, "livegen.cli.generate_musicgen", None)
    assert main(_args(tmp_path, model="musicgen-small")) == 2


def test_model_info_reads_local_config(tiny_converted):
    info = gen.model_info(str(tiny_converted))
    assert info.engine == "stable_audio" and info.objective == "rf_denoiser"
    assert info.max_seconds == pytest.approx(256 * 4 / 44100)


def test_generate_in_process(tiny_converted, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "clip.wav"
    rc = main(["generate", "--model", str(tiny_converted), "--prompt", "warm bass", "--seconds", "0.02",
               "--steps", "3", "--seed", "7", "--output", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.strip() == str(out)
    # tqdm shows s/step when a step is slow and step/s when it is fast
    assert "3/3" in captured.err and ("s/step" in captured.err or "step/s" in captured.err)
    assert "seed 7" in captured.err
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (44100, 2, "FLOAT", 882)
    data, _ = sf.read(str(out), dtype="float32")
    assert abs(data).max() > 0
    # same seed, same audio
    out2 = tmp_path / "again.wav"
    assert main(["generate", "--model", str(tiny_converted), "--prompt", "warm bass", "--seconds", "0.02",
                 "--steps", "3", "--seed", "7", "--output", str(out2)]) == 0
    assert (sf.read(str(out2), dtype="float32")[0] == data).all()


def test_generate_subprocess(tiny_converted, tmp_path):
    out = tmp_path / "sub.wav"
    env = dict(os.environ, LIVEGEN_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "livegen", "generate", "--model", str(tiny_converted), "--prompt", "dub techno",
           "--seconds", "0.01", "--steps", "2", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (44100, 2, "FLOAT", 441)
    (tmp_path / "afile").write_text("x")
    bad = subprocess.run(cmd[:-2] + ["--output", str(tmp_path / "afile" / "x.wav")], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "cannot be created because" in bad.stderr and "Traceback" not in bad.stderr
    assert "loading" not in bad.stderr  # refused before the model was loaded


def test_audio_io_resample_channels_and_init_audio(tiny_converted, tmp_path, capsys, monkeypatch):
    import numpy as np

    from livegen.audio_io import match_channels, read_audio, resample

    sr = 48000
    t = np.arange(sr // 10) / sr
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = resample(tone[None], sr, 44100)
    assert out.shape == (1, 4410)
    expected = np.sin(2 * np.pi * 1000 * np.arange(4410) / 44100)
    assert np.abs(out[0, 200:-200] - expected[200:-200]).max() < 1e-3  # away from the edges
    assert match_channels(np.ones((1, 4), np.float32), 2).shape == (2, 4)
    assert np.allclose(match_channels(np.stack([np.ones(4), -np.ones(4)]).astype(np.float32), 1), 0)

    src = tmp_path / "init.wav"
    sf.write(str(src), tone, sr, subtype="PCM_16")
    audio, rate = read_audio(src, 44100, channels=2)
    assert rate == 44100 and audio.shape == (2, 4410) and audio.dtype == np.float32

    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    out_wav = tmp_path / "var.wav"
    rc = main(["generate", "--model", str(tiny_converted), "--prompt", "warm bass", "--seconds", "0.02",
               "--steps", "2", "--seed", "1", "--init-audio", str(src), "--init-strength", "0.6",
               "--output", str(out_wav)])
    assert rc == 0, capsys.readouterr().err
    assert sf.info(str(out_wav)).frames == 882


# ----------------------------------------------------------------------------- the output file


def _sys_writable() -> bool:
    from livegen.cli.output_file import _probe_folder

    return Path("/sys").is_dir() and _probe_folder(Path("/sys")) is None


@pytest.mark.skipif(_sys_writable(), reason="/sys is writable here")
def test_unwritable_output_refused_before_loading(no_loading, tmp_path, capsys):
    # the review's exact case: rendered the whole clip, then a traceback and exit code 1
    assert main(_args(tmp_path, "--output", "/sys/x.wav")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("livegen generate: the output folder /sys is not writable (") and "\n" not in err
    assert err.endswith("choose another --output.")
    assert main(_args(tmp_path, "--output", "/sys/new/deeper/x.wav")) == 2
    assert "the output folder /sys/new/deeper cannot be created and /sys is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["x.mp4", "x.txt", "noext", "x.opus"])
def test_unknown_extension_refused_before_loading(no_loading, tmp_path, capsys, name):
    assert main(_args(tmp_path, "--output", str(tmp_path / name))) == 2
    err = capsys.readouterr().err.strip()
    assert f"the output file {name} has " in err and "which livegen cannot write; use one of .wav, .flac" in err
    assert err.count("\n") == 0 and not (tmp_path / name).exists()


def test_writable_formats_are_really_writable(tmp_path):
    import numpy as np

    from livegen.cli.output_file import check_output, writable_formats, write_output

    formats = writable_formats()
    assert {".wav", ".flac", ".ogg"} <= set(formats)
    tone = 1.5 * np.sin(np.linspace(0, 200, 32000, dtype=np.float32))[None].repeat(2, 0)  # past full scale
    for ext, (fmt, subtype) in formats.items():
        out = write_output(check_output(tmp_path / f"t{ext}"), tone, 32000)
        info = sf.info(str(out))
        assert (info.format, info.subtype, info.samplerate, info.channels) == (fmt, subtype, 32000, 2), ext
    assert sf.read(str(tmp_path / "t.wav"))[0].max() > 1.4  # float keeps the level
    assert sf.read(str(tmp_path / "t.flac"))[0].max() <= 1.0  # integer formats are clipped, not wrapped
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_missing_output_folder_is_created(tmp_path):
    from livegen.cli.output_file import check_output, write_output

    target = tmp_path / "new" / "deeper" / "x.flac"
    out = check_output(target)
    assert out.create_dirs and not target.parent.exists()  # nothing is created by the check
    write_output(out, [[0.0, 0.5, -0.5]], 44100)
    assert sf.info(str(target)).format == "FLAC"


@pytest.mark.parametrize("ext, fmt", [(".flac", "FLAC"), (".ogg", "OGG"), (".mp3", "MP3"), (".wav", "WAV")])
def test_generate_writes_the_format_of_the_extension(tiny_converted, tmp_path, capsys, monkeypatch, ext, fmt):
    from livegen.cli.output_file import writable_formats

    if ext not in writable_formats():
        pytest.skip(f"this libsndfile cannot write {ext}")
    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sub" / f"clip{ext}"  # the folder is created
    rc = main(["generate", "--model", str(tiny_converted), "--prompt", "warm bass", "--seconds", "0.02",
               "--steps", "2", "--seed", "3", "--output", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.strip() == str(out)
    info = sf.info(str(out))
    assert info.format == fmt and info.samplerate == 44100 and info.channels == 2
