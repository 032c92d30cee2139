"""Diffusers' caches as peers: names and settings, removal, stacking with ours, the bench's output."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sparsediff import Full, Skip, SparseConfig
from sparsediff.cli import app
from sparsediff.generate import Method, Request, calibrate, parse_method, run, run_method
from sparsediff.peers import Peer, PeerError, parse_peer
from sparsediff.pipelines.registry import Size, load_model

runner = CliRunner()


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSEDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def wan():
    loaded = load_model("tiny-wan")
    loaded.pipe.set_progress_bar_config(disable=True)
    return loaded


REQUEST = Request("a red circle moving right", Size(5, 64, 64), steps=6, guidance=3.0)


def test_names_and_settings():
    assert parse_peer("fbcache") == Peer("fbcache")
    assert parse_peer("fbcache:threshold=0.1") == Peer("fbcache", (("threshold", 0.1),))
    assert str(parse_peer("taylorseer:cache_interval=3,max_order=2")) == "taylorseer:cache_interval=3,max_order=2"
    assert parse_peer("local") is None
    with pytest.raises(ValueError, match=r"'speed=2' is not a setting of fbcache; it takes threshold"):
        parse_peer("fbcache:speed=2")
    with pytest.raises(ValueError, match="must be a number"):
        parse_peer("fbcache:threshold=fast")
    stacked = parse_method("local+fbcache:threshold=0.2")
    assert stacked.config.method == "local" and stacked.peer == Peer("fbcache", (("threshold", 0.2),))
    assert parse_method("taylorseer").config is None
    for bad, message in (("fbcache+taylorseer", "two peers"), ("local+dense", "two of ours"),
                         ("local+fbcache+dense", "at most"), ("turbo", "or a peer: pab, fastercache")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_method(bad)


def test_a_peer_is_removed_after_its_run(wan):
    native = run(wan, REQUEST).frames
    cached = run_method(wan, REQUEST, parse_method("fbcache:threshold=0.5")).frames
    assert np.abs(cached - native).max() > 1e-4  # the cache really skipped work
    assert np.array_equal(run(wan, REQUEST).frames, native)  # and the pipeline is as before
    with pytest.raises(PeerError, match="fastercache failed on WanTransformer3DModel"):
        run_method(wan, REQUEST, parse_method("fastercache"))
    assert np.array_equal(run(wan, REQUEST).frames, native)  # also after a peer that failed


def test_stacks_equal_each_alone_where_the_other_does_nothing(wan):
    ours = run_method(wan, REQUEST, parse_method("local")).frames
    never_skips = run_method(wan, REQUEST, parse_method("local+fbcache:threshold=0")).frames
    assert np.abs(never_skips - ours).max() <= 1e-6  # a cache that never skips leaves our output
    peer = parse_method("fbcache:threshold=0.5")
    alone = run_method(wan, REQUEST, peer).frames
    with_dense = run_method(wan, REQUEST, Method("dense+fbcache", parse_method("dense").config, peer.peer)).frames
    assert np.abs(with_dense - alone).max() <= 1e-4  # our dense preset leaves the cache's output
    stacked = run_method(wan, REQUEST, parse_method("local+fbcache:threshold=0.5"))
    assert stacked.calls["sparse"] > 0 and 0 < stacked.density < 1  # both ran: ours counted its calls


def test_magcache_in_a_stack_calibrates_the_model_as_it_will_run(wan):
    """MagCache's ratios in a stack come from a run under our half; ours is removed after it."""
    native = run(wan, REQUEST).frames
    alone = calibrate(wan, REQUEST, parse_method("magcache"))
    under_dense = calibrate(wan, REQUEST, Method("dense+magcache", parse_method("dense").config, Peer("magcache")))
    under_window = calibrate(wan, REQUEST, parse_method("local+magcache"))
    assert len(alone) == len(under_window) == REQUEST.steps
    assert np.allclose(under_dense, alone, atol=1e-4)  # our dense preset computes what the model does
    assert not np.allclose(under_window, alone, atol=1e-4)  # sparse attention changes the magnitudes
    assert np.array_equal(run(wan, REQUEST).frames, native)


def test_cache_dit_runs_as_a_peer_alone_and_under_ours(wan):
    """cache-dit's DBCache on the transformer: threshold 0 never caches (our output, bit for bit
    where ours is dense), a large threshold caches steps, and removal restores the pipeline."""
    native = run(wan, REQUEST).frames
    children = list(wan.pipe.transformer._modules)
    never = run_method(wan, REQUEST, parse_method("cachedit:residual_diff_threshold=0.0,max_warmup_steps=1")).frames
    assert list(wan.pipe.transformer._modules) == children  # module order, which other caches read, as before
    assert np.abs(never - native).max() <= 1e-6
    caching = parse_method("cachedit:residual_diff_threshold=10.0,max_warmup_steps=1")
    cached = run_method(wan, REQUEST, caching).frames
    assert np.abs(cached - native).max() > 1e-4
    assert np.array_equal(run(wan, REQUEST).frames, native)
    ours = run_method(wan, REQUEST, parse_method("local")).frames
    stacked = run_method(wan, REQUEST, parse_method("local+cachedit:residual_diff_threshold=0.0"))
    assert np.abs(stacked.frames - ours).max() <= 1e-6 and stacked.calls["sparse"] > 0
    with pytest.raises(ValueError, match="is not a setting of cachedit"):
        parse_peer("cachedit:speed=2")


def test_no_head_reuses_its_output_where_a_cache_probes(wan):
    """FirstBlockCache and DBCache decide from their first block's output: stacked under ours, no
    head there reuses a past output (a layer reused whole would look unchanged and make the cache
    skip every later step); elsewhere skips and whole-layer reuse go on. TaylorSeer probes nothing."""
    from sparsediff.peers import probe_layers

    layers = ["blocks.0.attn1", "blocks.0.attn2", "blocks.1.attn1", "blocks.1.attn2"]
    transformer = wan.pipe.transformer
    assert probe_layers(transformer, parse_peer("fbcache"), layers) == ["blocks.0.attn1", "blocks.0.attn2"]
    assert probe_layers(transformer, parse_peer("cachedit:Fn_compute_blocks=2"), layers) == layers
    assert probe_layers(transformer, parse_peer("taylorseer"), layers) == []
    skipping = SparseConfig(
        method="pattern",
        pattern=Full(),
        block_size=16,
        heads={name: [Skip(every=2)] * 2 for name in ("blocks.0.attn1", "blocks.1.attn1")},
    )
    alone = run_method(wan, REQUEST, Method("skips", skipping, None))
    stacked = run_method(wan, REQUEST, Method("skips+fbcache", skipping, parse_peer("fbcache:threshold=0")))
    assert alone.calls["sparse: layer reused"] == 2 * stacked.calls["sparse: layer reused"] > 0  # one layer of two


def test_bench_methods_summary_and_pareto_plot(tmp_path):
    plot = tmp_path / "pareto.png"
    result = runner.invoke(app, ["bench", "methods", "--model", "tiny-wan", "--num-frames", "5", "--height", "64",
                                 "--width", "64", "--steps", "4", "--prompt", "a cat", "--method", "local",
                                 "--method", "fbcache:threshold=0.2", "--method", "fastercache",
                                 "--method", "local+fbcache", "--json", "--plot", str(plot)])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    assert set(summary) == {"model", "size", "prompts", "dense_s", "methods"} and summary["prompts"] == ["a cat"]
    by_name = {m["method"]: m for m in summary["methods"]}
    assert list(by_name) == ["dense", "local", "fbcache:threshold=0.2", "fastercache", "local+fbcache"]
    assert by_name["fbcache:threshold=0.2"]["density"] is None and by_name["local"]["density"] < 1
    assert by_name["fastercache"]["error"] and by_name["fastercache"]["speedup"] is None  # reported, bench went on
    assert all(m["speedup"] > 0 for m in summary["methods"] if m["error"] is None)
    assert plot.stat().st_size > 1000


def test_bench_methods_record_resumes_after_the_last_finished_prompt(tmp_path):
    record = tmp_path / "figures.jsonl"
    args = ["bench", "methods", "--model", "tiny-wan", "--num-frames", "5", "--height", "32", "--width", "32",
            "--steps", "2", "--prompt", "a cat", "--prompt", "a dog", "--method", "local", "--json",
            "--record", str(record)]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    header, cat, _ = record.read_text().splitlines()
    record.write_text(f"{header}\n{cat}\n")  # as if stopped while the second prompt ran
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert record.read_text().splitlines()[:2] == [header, cat] and len(record.read_text().splitlines()) == 3
    summary = json.loads(again.stdout.splitlines()[-1])
    assert [m["method"] for m in summary["methods"]] == ["dense", "local"] and summary["methods"][1]["speedup"] > 0
    other = runner.invoke(app, [*args[:-5], "--method", "topk", "--record", str(record)])
    assert other.exit_code == 2 and "other settings" in other.output


def test_generate_compares_a_peer_and_a_stack(tmp_path):
    for method, ours in (("fbcache:threshold=0.5", False), ("local+fbcache:threshold=0.5", True)):
        result = runner.invoke(app, ["generate", "--model", "tiny-wan", "--num-frames", "5", "--height", "64",
                                     "--width", "64", "--steps", "4", "--method", method, "--compare", "--json",
                                     "--out", str(tmp_path / "x.mp4")])  # fmt: skip
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout.strip().splitlines()[-1])
        assert record["method"] == method and record["speedup"] > 0 and record["psnr"] is not None
        assert (record["density"] is not None) == ours  # a peer alone computes no sparse attention


def test_pareto_labels_stay_clear_of_each_other_and_of_every_dot(tmp_path):
    """Points a few pixels apart (two configs of one speed and PSNR) still get readable labels."""
    from sparsediff.figures import Chart, boxes_overlap

    chart = Chart((1.0, 2.4), (29.9, 32.8))
    for label, x, y in [("refine-a.json", 2.10, 31.76), ("refine-b.json", 2.26, 31.73), ("taylorseer", 2.08, 30.86),
                        ("near", 2.11, 31.74)]:  # fmt: skip
        chart.point(x, y, (0, 0, 0), f"{label} ({x:.2f}x, {y:.1f} dB)")
    chart.save(tmp_path / "labels.png")
    boxes = [box for _, box in chart.labels]
    assert len(boxes) == 4
    for i, box in enumerate(boxes):
        assert box[0] >= 0 and box[2] <= chart.width and box[1] >= 0 and box[3] <= chart.height
        assert not any(boxes_overlap(box, dot) for dot in chart.markers)
        assert not any(boxes_overlap(box, other) for other in boxes[i + 1 :])


def test_fastercache_skips_the_unconditional_half_of_a_cfg_batch():
    """On a transformer that takes pooled_projections (HunyuanVideo, as shapes-t2v) with CFG in one
    batch, unconditional half first as diffusers' pipelines batch it, FasterCache runs and
    approximates that half: its output differs from the pipeline's, which is back after."""
    import torch

    from sparsediff.peers import enabled
    from sparsediff.pipelines.shapes.pipeline import build_pipeline

    pipe = build_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    args = dict(num_frames=3, height=16, width=16, num_inference_steps=8, guidance_scale=4.0)
    native = pipe("a red circle moving right", generator=torch.Generator().manual_seed(0), **args).frames
    with enabled(pipe, Peer("fastercache"), steps=8):
        cached = pipe("a red circle moving right", generator=torch.Generator().manual_seed(0), **args).frames
    assert np.isfinite(cached).all() and np.abs(cached - native).max() > 1e-4
    again = pipe("a red circle moving right", generator=torch.Generator().manual_seed(0), **args).frames
    assert np.array_equal(again, native)
