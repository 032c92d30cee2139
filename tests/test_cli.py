"""The `sparsediff` command line: bench output contract and error messages."""

import json

import pytest
from typer.testing import CliRunner

from sparsediff.cli import app

runner = CliRunner()


def test_bench_attention_json_contract():
    result = runner.invoke(
        app, ["bench", "attention", "--seq", "300", "--heads", "2", "--head-dim", "16", "--density", "0.3", "--json"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("dense_ms", "sparse_ms", "speedup", "density", "max_abs_err", "backend"):
        assert key in record
    assert record["backend"] == "torch"  # what auto picks on the CPU
    assert 0 < record["density"] < 1 and record["max_abs_err"] <= 1e-4


def test_bench_attention_table():
    result = runner.invoke(
        app, ["bench", "attention", "--seq", "200", "--heads", "2", "--head-dim", "8", "--repeat", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "speedup" in result.output and "max abs err" in result.output


def test_bench_attention_rejects_bad_options():
    result = runner.invoke(app, ["bench", "attention", "--backend", "turbo"])
    assert result.exit_code != 0 and "unknown backend 'turbo'" in result.output
    result = runner.invoke(app, ["bench", "attention", "--density", "1.5"])
    assert result.exit_code != 0 and "--density must be in (0, 1]" in result.output


def test_bench_transformer_reports_overhead_speedup_and_error():
    from sparsediff.bench import bench_transformer

    result = bench_transformer("sd3", density=0.3, grid=(1, 32, 32), repeat=1, block=16)
    assert result.tokens == 16 * 16 + 8  # visual tokens after 2x2 patchify plus text
    assert 0 < result.density < 0.9 and 0 < result.rel_err < 1
    assert result.native_ms > 0 and result.speedup > 0


def test_bench_transformer_rejects_unknown_family():
    result = runner.invoke(app, ["bench", "transformer", "--family", "sora"])
    assert result.exit_code != 0 and "unknown family 'sora'" in result.output


def test_bench_permutation_reports_both_costs():
    result = runner.invoke(
        app, ["bench", "permutation", "--frames", "3", "--height", "5", "--width", "7", "--heads", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["tokens"] == 3 * 5 * 7 + 8 and 0 < r["per_call_share"] < 1 and r["per_forward_permute_ms"] > 0
    result = runner.invoke(app, ["bench", "permutation", "--order", "zigzag"])
    assert result.exit_code != 0 and "unknown order 'zigzag'" in result.output


def test_bench_methods_compares_presets_and_config_files(tmp_path, monkeypatch):
    from sparsediff import Diagonal, SparseConfig

    monkeypatch.setenv("SPARSEDIFF_CACHE", str(tmp_path / "cache"))
    config = SparseConfig(method="pattern", pattern=Diagonal(radius=1), schedule={"dense_steps": 1}, block_size=16)
    path = config.save(tmp_path / "banded.json")
    size = ["--num-frames", "5", "--height", "64", "--width", "64", "--steps", "2"]
    result = runner.invoke(app, ["bench", "methods", "--model", "tiny-wan", *size, "--method", "local",
                                 "--method", str(path), "--prompt", "a cat", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    *rows, summary = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["method"] for r in rows] == ["dense", "local", str(path)]
    assert [m["method"] for m in summary["methods"]] == ["dense", "local", str(path)]  # the summary comes last
    assert all(r["speedup"] > 0 and r["ssim"] <= 1 for r in rows)
    # The config's own schedule holds (step 0 dense, step 1 sparse): its output differs from dense.
    assert rows[0]["psnr"] is None and rows[2]["psnr"] is not None
    assert len(rows[2]["densities"]) == 1 and rows[2]["sparse_density"] < rows[2]["density"] < 1  # step 0 counts
    result = runner.invoke(app, ["bench", "methods", "--model", "tiny-wan", *size, "--method", "nope.json"])
    assert result.exit_code == 2 and "neither a preset" in " ".join(result.output.split())


def test_bench_methods_held_out_prompts_and_their_errors():
    from sparsediff.pipelines.registry import BUILTIN
    from sparsediff.pipelines.shapes.data import HELD_OUT, TRAIN

    entry = BUILTIN["shapes-t2v"]
    six = entry.held_out_prompts(6)
    assert len(set(six)) == 6 and set(six) <= {str(c) for c in HELD_OUT}
    assert {p.split()[1] for p in six} >= {"red", "blue", "cyan"}  # spread, not the first six (five red)
    assert entry.held_out_prompts(27) == [str(c) for c in HELD_OUT]
    assert not {str(c) for c in TRAIN} & set(entry.held_out)
    assert entry.validation_prompts(6, ["a red circle moving right"]) == six  # a training prompt changes nothing
    unseen = entry.validation_prompts(26, six[:1])  # a held-out prompt calibrated on is never validated on
    assert six[0] not in unseen and len(set(unseen)) == 26
    with pytest.raises(ValueError, match="26 held-out prompts the calibration does not use"):
        entry.validation_prompts(27, six[:1])
    for count in (0, 28):
        result = runner.invoke(app, ["bench", "methods", "--model", "shapes-t2v", "--held-out", str(count)])
        assert result.exit_code == 2 and "--held-out must be in 1..27" in " ".join(result.output.split())
    result = runner.invoke(app, ["bench", "methods", "--model", "tiny-wan", "--held-out", "2"])
    assert result.exit_code == 2 and "no held-out prompts" in result.output
    result = runner.invoke(app, ["bench", "methods", "--model", "shapes-t2v", "--held-out", "2", "--prompt", "x"])
    assert result.exit_code == 2 and "not both" in result.output


def test_bench_dllm_through_the_cli():
    result = runner.invoke(app, ["bench", "dllm", "--context", "256", "--steps", "8", "--gen-length", "16",
                                 "--hidden", "32", "--heads", "2", "--keep-ratio", "0.5", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["context_tokens"] == 256 and r["pattern_computations"] == 1  # one layer, one switch
    assert 0 < r["density"] < 1 and 0 <= r["token_agreement"] <= 1 and r["speedup"] > 0
    assert r["dense_peak_mb"] > 0 and r["sparse_peak_mb"] > 0
    result = runner.invoke(app, ["bench", "dllm", "--context", "16", "--gen-length", "16"])
    assert result.exit_code != 0 and "must exceed the answer length" in result.output


def test_structure_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEDIFF_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "structure.png"
    size = ["--num-frames", "5", "--height", "64", "--width", "64", "--steps", "3", "--rows", "32"]
    result = runner.invoke(app, ["structure", "--model", "tiny-wan", *size, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["layer"] for r in records] == ["blocks.0.attn1", "blocks.1.attn1"]  # cross-attention is not measured
    for r in records:
        assert r["key_share"]["text"] == 0 and 0 < r["key_share"]["local 3-D"] < 1
        assert len(r["local 3-D"]) == 2 and all(0 <= x <= 1 + 1e-6 for x in r["local 3-D"])  # per head
    assert out.stat().st_size > 0


def test_shipped_config_compares_at_a_small_size_with_the_judge(tmp_path, monkeypatch):
    """The default model with its shipped searched config, as `make demo` runs it, at a size that
    takes seconds; density counts the config's dense first step."""
    monkeypatch.setenv("SPARSEDIFF_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["generate", "--model", "shapes-t2v", "--num-frames", "8", "--height", "32",
                                 "--width", "32", "--steps", "4", "--compare", "--json",
                                 "--out", str(tmp_path / "demo.mp4")])  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["method"] == "pattern" and r["attention_calls"]["dense: schedule"] > 0
    assert r["sparse_density"] < r["density"] < 1  # the dense step counts in the run's density
    for verdict in (r["judge_dense"], r["judge_sparse"]):
        assert set(verdict) >= {"seen", "colour_and_direction"}
    result = runner.invoke(app, ["generate", "--model", "shapes-t2v", "--density", "0.2", "--steps", "1",
                                 "--out", str(tmp_path / "x.mp4")])  # fmt: skip
    assert result.exit_code == 2 and "--density does not apply" in " ".join(result.output.split())


def test_the_default_as_users_get_it_with_the_speed_check_on(tmp_path, monkeypatch):
    """`make demo` with the check on (the suite turns it off elsewhere, where tiny models would run
    dense): this machine's verdicts are measured once and stored, and the same run twice gives the
    same figures of quality and the same calls."""
    from sparsediff.methods import speed

    monkeypatch.setenv("SPARSEDIFF_NEVER_SLOWER", "1")
    monkeypatch.setenv("SPARSEDIFF_SPEED_PROFILE", str(tmp_path / "speed.json"))
    monkeypatch.setattr(speed.SPEED, "check", None)  # a fresh process-wide check on that profile
    runs = []
    for i in range(2):
        result = runner.invoke(app, ["generate", "--model", "shapes-t2v", "--num-frames", "8", "--height", "32",
                                     "--width", "32", "--steps", "4", "--compare", "--json",
                                     "--out", str(tmp_path / f"demo{i}.mp4")])  # fmt: skip
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    kinds = json.loads((tmp_path / "speed.json").read_text())["kinds"]
    assert kinds and all(k["call"].startswith("pattern ") for k in kinds.values())
    assert runs[0]["attention_calls"] == runs[1]["attention_calls"]
    assert runs[0]["psnr"] == runs[1]["psnr"] and runs[0]["density"] == runs[1]["density"]


def test_bench_memory_on_paper_matches_a_measured_run_at_a_tiny_shape():
    import torch

    import sparsediff
    from sparsediff import Diagonal, Skip, SparseConfig
    from sparsediff.bench import ModelShape, bench_memory
    from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

    config = SparseConfig(method="pattern", block_size=16, heads={
        "blocks.0.attn1": [Skip(every=2), Diagonal(radius=1)], "blocks.1.attn1": [Diagonal(radius=1)] * 2,
    })  # fmt: skip
    spec = TINY_TRANSFORMERS["wan"]
    model = spec.build()
    inputs = spec.make_inputs(2, 3, 16, 16, 8, 900, torch.Generator().manual_seed(0))  # 3 x 8 x 8 tokens
    with sparsediff.sparse(model, config) as state, torch.no_grad():
        model(**inputs)
        measured = state.runner.kept_bytes()
    tiny = ModelShape("tiny-wan", "tiny Wan", attention_layers=2, heads=2, head_dim=16, tokens=3 * 8 * 8, params=1e5,
                      branches=1, batch=2, itemsize=4)  # fmt: skip
    on_paper = bench_memory(tiny, config)
    assert on_paper.skipped_heads == 1 and on_paper.extra_kept_bytes == measured > 0
    result = runner.invoke(app, ["bench", "memory", "--shape", "wan2.1-14b-720p", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert 0 < r["skipped_head_share"] <= 1 and r["one_head_mb"] == round(75_600 * 128 * 2 / 2**20, 2)
    assert r["extra_kept_mb"] == round(r["skipped_heads"] * 2 * 75_600 * 128 * 2 / 2**20, 1)  # 2 CFG calls
    result = runner.invoke(app, ["bench", "memory", "--shape", "sora-1080p"])
    assert result.exit_code == 2 and "unknown shape 'sora-1080p'" in result.output


def test_published_shapes_are_defined_right_and_run_scaled_down():
    """Full-size shapes are checked without memory on the meta device (parameter counts of the
    published models, token counts at their sizes); one runs scaled down on the CPU."""
    from sparsediff.bench import FULL_SHAPES, full_shape_model, full_shape_tokens

    expected = {
        "wan2.1-480p": (32_760, 1.4),
        "wan2.1-720p": (75_600, 14.3),
        "hunyuan-720p": (118_800, 12.8),
        "cogvideox-5b": (17_550, 5.6),
    }
    assert set(FULL_SHAPES) == set(expected)
    for name, (tokens, billions) in expected.items():
        model, inputs = full_shape_model(FULL_SHAPES[name], device="meta")
        assert full_shape_tokens(FULL_SHAPES[name]) == tokens
        assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == billions
        frames, height, width = FULL_SHAPES[name].latent
        assert inputs["hidden_states"].shape[-2:] == (height, width) and frames in inputs["hidden_states"].shape[1:3]
    result = runner.invoke(app, ["bench", "transformer", "--shape", "wan2.1-480p", "--scale", "4", "--repeat", "1",
                                 "--method", "local", "--method", "dense", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["tokens"] == 5 * 7 * 13 and r["native_ms"] > 0
    window, dense = r["methods"]
    assert 0 < window["density"] < 1 and window["attention_flop_ratio"] == pytest.approx(
        1 / window["density"], rel=1e-3
    )
    assert dense["density"] == 1.0 and dense["measured_ratio"] > 0
    result = runner.invoke(app, ["bench", "transformer", "--shape", "sora-1080p"])
    assert result.exit_code == 2 and "unknown shape 'sora-1080p'" in result.output
