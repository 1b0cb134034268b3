"""The benchmark suite (bench/): its bookkeeping, its FLOP counts, and a --smoke run end to end.

No timing is asserted anywhere: only that every code path runs, that livegen and the reference
computed the same thing where the suite compares them, and that the JSON has its fields.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import Results, parse_args, table
from bench.timing import Pair, alternate


def test_alternate_interleaves_and_swaps_order():
    calls: list[str] = []
    pair, last = alternate(lambda: calls.append("lg") or "a", lambda: calls.append("ref") or "b", 3,
                           warmup_livegen=lambda: calls.append("lg-warm"),
                           warmup_reference=lambda: calls.append("ref-warm"))
    assert calls == ["lg-warm", "ref-warm", "lg", "ref", "ref", "lg", "lg", "ref"]
    assert len(pair.livegen) == len(pair.reference) == 3 and last == {"livegen": "a", "reference": "b"}


def test_pair_median_and_ratio():
    pair = Pair(livegen=[3.0, 1.0, 2.0], reference=[4.0, 8.0, 6.0])
    assert pair.median(pair.livegen) == 2.0 and pair.ratio() == pytest.approx(2.0 / 6.0)
    assert Pair(livegen=[1.0]).ratio() is None


def test_results_entry_and_table():
    args = parse_args(["--smoke", "--only", "sa-small,musicgen"])
    assert args.parts == ["sa-small", "musicgen"] and args.repeats == 1
    res = Results(args, {"cpu_model": "x"})
    res.data["ceiling"]["gemm_gflops"] = 100.0
    res.add("fwd", "sa-small", Pair([0.5], [1.0]), {"flops": 25e9})
    res.add("step", "musicgen", Pair([0.01], [0.02]), {"flops": 1e9}, rate_unit="steps_per_s")
    fwd, step = res.data["measurements"]
    assert fwd["ratio"] == 0.5 and fwd["speedup"] == 2.0
    assert fwd["livegen"]["gflops"] == pytest.approx(50.0)
    assert fwd["livegen"]["fraction_of_ceiling"] == pytest.approx(0.5)
    assert fwd["reference"]["fraction_of_ceiling"] == pytest.approx(0.25)
    assert step["livegen"]["steps_per_s"] == pytest.approx(100.0)
    text = table(res.data)
    assert "fwd" in text and "100.00 steps/s" in text and "50.0 (50%)" in text
    with pytest.raises(SystemExit):
        parse_args(["--only", "nope"])


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["small", "1.0"])
def test_dit_flops_match_torch_counter(kind, sat_ref, tmp_path):
    """The analytic DiT count equals torch's FLOP counter on the reference forward (which sees the
    weight products; it does not count fused attention on the CPU)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench import stable_audio as sa
    from bench.flops import dit_forward_flops

    b = sa.build(kind, sa.Sizes(smoke=True), tmp_path, pipeline=False, log=lambda _m: None)
    inputs = sa.reference_inputs(b)
    length = 5
    for cfg_scale, batch in ((1.0, 1), (7.0, 2)):
        x = torch.randn(1, 64, length)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            b.ref.model(x, torch.tensor([0.3]), **inputs, cfg_scale=cfg_scale, batch_cfg=True)
        ours = dit_forward_flops(b.dit.config, length, inputs["cross_attn_cond"].shape[1], batch)
        assert ours["linear"] == counter.get_total_flops(), (kind, cfg_scale)
        assert ours["attention"] > 0


@pytest.mark.parity
def test_musicgen_step_flops_match_weights(transformers_ref):
    """Per new token the decoder multiplies by every weight once, except the cross-attention
    keys/values (computed once per generation): check against the model's own linear layers."""
    import torch
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from bench.flops import musicgen_generation_flops
    from tests.models.musicgen.mg_fixtures import tiny_configs

    t5, audio, dec, _ = tiny_configs("mono")
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=audio.to_dict(),
                                                            decoder=dec.to_dict()))
    macs = 0
    for name, module in model.decoder.named_modules():
        if isinstance(module, torch.nn.Linear) and not (
            "encoder_attn." in name and name.endswith(("k_proj", "v_proj"))
        ):
            macs += module.weight.numel()
    s = 7
    one = musicgen_generation_flops(dec.hidden_size, dec.num_hidden_layers, dec.ffn_dim, dec.num_codebooks,
                                    dec.vocab_size, s, steps=1, batch=1, text_dim=t5.d_model)
    attn = dec.num_hidden_layers * (2 * 1 * dec.hidden_size + 2 * s * dec.hidden_size)
    assert one["steps"] == 2 * (macs + attn)
    two = musicgen_generation_flops(dec.hidden_size, dec.num_hidden_layers, dec.ffn_dim, dec.num_codebooks,
                                    dec.vocab_size, s, steps=2, batch=2, text_dim=t5.d_model)
    assert two["steps"] == 2 * 2 * (2 * (macs + attn) + dec.num_hidden_layers * 2 * dec.hidden_size)


@pytest.mark.parity
def test_smoke_run_writes_every_field(sat_ref, transformers_ref, tmp_path):
    from bench.run import main

    out = tmp_path / "last.json"
    assert main(["--smoke", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    data = json.loads(out.read_text())
    assert data["smoke"] is True and not data["errors"]
    machine = data["machine"]
    for key in ("cpu_model", "cpus", "blas", "versions", "date_utc", "mlx_backend", "torch_threads"):
        assert machine[key] not in (None, ""), key
    assert machine["versions"]["mlx"] and machine["versions"]["torch"]
    assert data["ceiling"]["gemm_gflops"] > 0 and data["ceiling"]["end"][0]["mlx_gemm_gflops"] > 0
    names = [m["name"] for m in data["measurements"] if "threads" not in m["name"]]
    assert names == ["SA small DiT forward b1", "SA small DiT forward b2 (cfg 7)", "SA small 8-step ping-pong loop",
                     "SA small VAE decode", "SA small generate (whole)", "MusicGen small decode step (cfg 3, b2)",
                     "SA 1.0 DiT forward b2 (cfg 7)"]
    for key in ("sa-small", "musicgen"):  # first audio vs whole clip of the streaming paths
        st = data["streaming"][key]
        assert len(st["runs"]) == 1 and st["runs"][0]["pieces"] >= 2, (key, st)
        assert 0 < st["median_first_audio_s"] < st["median_full_clip_s"], (key, st)
        assert 0 < st["first_over_full"] < 1
    assert data["streaming"]["sa-small"]["median_sampled_s"] < data["streaming"]["sa-small"]["median_first_audio_s"]
    settings = data["settings"]
    assert settings["livegen_blas_threads"] >= 1 and settings["reference_blas_threads"] >= 1
    extra = [m for m in data["measurements"] if "threads" in m["name"]]  # livegen with the daemon's threads
    from livegen import device

    realtime = device.default_blas_threads(realtime=True)
    if realtime < settings["livegen_blas_threads"] and settings["threads"] is None:
        assert [m["livegen_blas_threads"] for m in extra] == [realtime] * 2
    else:
        assert extra == []
    for m in data["measurements"]:
        for side in ("livegen", "reference"):
            stats = m[side]
            assert len(stats["samples"]) == 1 and stats["median"] > 0, (m["name"], side)
            assert stats["gflops"] > 0 and stats["fraction_of_ceiling"] > 0, (m["name"], side)
        assert m["ratio"] > 0 and math.isclose(m["ratio"] * m["speedup"], 1.0)
        if "max_rel_diff" in m:  # the two sides computed the same thing from the same inputs
            assert m["max_rel_diff"] < 1e-4, (m["name"], m["max_rel_diff"])
    by_name = {m["name"]: m for m in data["measurements"]}
    assert by_name["SA small generate (whole)"]["output_shapes_match"]
    assert by_name["MusicGen small decode step (cfg 3, b2)"]["livegen"]["steps_per_s"] > 0
    assert by_name["MusicGen small decode step (cfg 3, b2)"]["memory_bound"]["bound_steps_per_s"] > 0
    for part, batches in (("sa-small", ("b1", "b2")), ("sa-1.0", ("b2",))):
        for key in batches:
            parts = data["profile"][part][key]["parts"]
            assert {"block", "self_attention", "cross_attention", "feed_forward"} <= set(parts)
            assert all(v["seconds"] > 0 and v["gflops"] > 0 for v in parts.values())
    steps = by_name["MusicGen small decode step (cfg 3, b2)"]["steps_timed"]
    assert steps["livegen"] == steps["reference"] == 6 + 3
    if "daemon" in data["not_measured"]:  # no JACK server here; CI runs one and requires this part
        required = os.environ.get("LIVEGEN_REQUIRE_REALTIME", "").strip() not in ("", "0", "false", "no")
        assert not required, data["not_measured"]["daemon"]
    else:
        d = data["daemon"]
        assert d["jack"]["period"] > 0 and d["ready_seconds"] > 0 and len(d["ports"]) == 2
        assert len(d["uncached"]["samples"]) == 1 and d["uncached"]["median"] > 0
        assert d["cached"]["median"] is not None or d["cached"]["not_measured"]
        if d["cached"]["median"] is not None:  # a pre-rendered pad plays the cached clip
            assert d["cached"]["served_from_cache"] == [True]
        c = d["continuous"]
        assert c["clips_generated"] >= 1 and c["jack_xruns"] >= 0 and "underflows" in c


@pytest.mark.parity
def test_vae_precision_measures_against_float64(sat_ref, torch_ref, tmp_path):
    from bench.vae_precision import measure
    from tests.models.stable_audio.test_vae import SMALL_CONFIG

    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({"model": {"pretransform": {"type": "autoencoder", "config": SMALL_CONFIG}}}))
    result = measure(latents=5, seed=3, config=config)
    assert set(result) == {"max_abs_output", "reference_fp32_vs_fp64", "livegen_vs_fp64",
                           "livegen_native_conv_vs_fp64", "livegen_vs_reference_fp32"}
    assert result["max_abs_output"] > 0
    for key in ("reference_fp32_vs_fp64", "livegen_vs_fp64", "livegen_native_conv_vs_fp64"):
        assert 0 < result[key] < 1e-5, (key, result[key])  # tiny and well conditioned: fp32 rounding only
    assert result["livegen_vs_reference_fp32"] < 1e-5


@pytest.mark.realtime
def test_rt_soak_runs_and_reports(jack_server, sat_ref, transformers_ref, tmp_path):
    """bench/rt_soak.py for a few seconds: four loops playing, clips generated, the xruns counted
    and attributed (the 10-minute figures are in docs/benchmarks.md). It builds the tiny test
    checkpoints with the PyTorch reference stack, hence sat_ref/transformers_ref (they skip, or
    fail under LIVEGEN_REQUIRE_PARITY, without it)."""
    out = tmp_path / "soak.json"
    env = dict(os.environ, JACK_NO_START_SERVER="1", LIVEGEN_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "bench/rt_soak.py", "--minutes", "0.05", "--workdir", str(tmp_path / "w"),
                           "--json", str(out)], cwd=str(Path(__file__).resolve().parent.parent), env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["clips_generated"] >= 1 and sorted(r["slots_playing"]) == [0, 1, 2, 3], r
    assert r["cpu_hog"] is True and r["forced_gc_every_s"] == 1.0
    assert r["gc"]["collections"][2] >= 2  # the forced full collections ran in the daemon
    assert r["jack_log_known"] == bool(os.environ.get("LIVEGEN_JACK_LOG")) and isinstance(r["xruns_of_the_daemon"], int)
    assert r["exit"]["code"] == 0
