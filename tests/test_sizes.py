"""Configs that hold at every size: size buckets, the warning outside them, version-1 files, the
multi-size search, and the speed check that runs a call dense where sparse does not pay."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparsediff
from sparsediff import Diagonal, Full, Skip, SparseConfig, TokenLayout
from sparsediff.config import SizeBucket
from sparsediff.methods.runner import AttentionCall, Runner, Step
from sparsediff.pipelines.tiny import tiny_pipeline
from sparsediff.search import offline

LAYER = "blocks.0.attn1"


def _bucketed(**extra) -> SparseConfig:
    """Two buckets that differ per head, so which one ran is visible in the plan."""
    return SparseConfig(
        method="pattern",
        pattern=Full(),
        block_size=16,
        sizes=[
            SizeBucket(grid=(2, 4, 4), heads={LAYER: [Diagonal(radius=1), Skip(every=2)]}),
            SizeBucket(grid=(4, 8, 8), heads={LAYER: [Diagonal(radius=3), Diagonal(radius=2)]}),
        ],
        **extra,
    )


@pytest.mark.parametrize(
    ("grid", "nearest", "inside"),
    [
        ((2, 4, 4), (2, 4, 4), True),
        ((4, 8, 8), (4, 8, 8), True),
        ((3, 5, 5), (2, 4, 4), True),  # between the two, nearer the small one in log ratios
        ((3, 7, 7), (4, 8, 8), True),
        ((1, 4, 4), (2, 4, 4), False),  # fewer frames than any searched
        ((4, 6, 12), (4, 8, 8), False),  # an aspect ratio not searched: wider than any
    ],
)
def test_size_bucket_is_the_nearest_grid_and_knows_when_it_lies_outside(grid, nearest, inside):
    bucket, within = _bucketed().size_bucket(grid)
    assert bucket.grid == nearest and within == inside


def test_runner_takes_each_call_s_heads_from_its_bucket_and_warns_once_outside():
    runner = Runner(_bucketed(), [LAYER], {LAYER: 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning inside the searched sizes
        assert runner.head_patterns(LAYER, TokenLayout(frames=2, height=4, width=4), 2) == [
            Diagonal(radius=1),
            Skip(every=2),
        ]
        assert runner.head_patterns(LAYER, TokenLayout(frames=4, height=8, width=8), 2)[0] == Diagonal(radius=3)
    outside = TokenLayout(frames=4, height=6, width=12)
    with pytest.warns(
        UserWarning, match=r"latent grid 4x6x12 .* outside the sizes .*\(2x4x4, 4x8x8\).* nearest, 4x8x8"
    ):
        runner.head_patterns(LAYER, outside, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.head_patterns(LAYER, outside, 2)  # said once


def test_bucketed_config_round_trips_and_version_1_files_load(tmp_path):
    config = _bucketed()
    path = config.save(tmp_path / "sizes.json")
    assert json.loads(path.read_text())["version"] == 2
    assert SparseConfig.load(path) == config
    v1 = tmp_path / "v1.json"
    v1.write_text(
        json.dumps({"version": 1, "method": "pattern", "heads": {LAYER: [{"kind": "diagonal", "radius": 1}]}})
    )
    old = SparseConfig.load(v1)
    assert old.version == 1 and old.heads[LAYER] == [Diagonal(radius=1)] and not old.sizes
    future = tmp_path / "v3.json"
    future.write_text(json.dumps({"version": 3, "method": "local"}))
    with pytest.raises(ValueError, match="has version 3; this sparsediff reads versions 1 to 2"):
        SparseConfig.load(future)
    with pytest.raises(ValueError, match="no top-level `heads`"):
        SparseConfig(method="pattern", heads={LAYER: [Full()]}, sizes=config.sizes)
    with pytest.raises(ValueError, match="needs config version 2"):
        SparseConfig(version=1, method="pattern", sizes=config.sizes)
    with pytest.raises(ValueError, match="grid more than once"):
        SparseConfig(method="pattern", sizes=[config.sizes[0], config.sizes[0]])


def _call(n: int, step: int = 3, seed: int = 0) -> AttentionCall:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for _ in range(3))
    layout = TokenLayout(height=n // 8, width=8)
    return AttentionCall(LAYER, q, k, v, lambda: F.scaled_dot_product_attention(q, k, v), Step(step), layout=layout)


def test_search_sizes_raises_a_refused_budget_and_merges_one_bucket_per_size(monkeypatch):
    tried = []
    layouts = {64: TokenLayout(frames=2, height=4, width=4), 128: TokenLayout(frames=2, height=8, width=8)}

    def fake_search(pipe, prompts, *, budget, progress, height, **settings):
        tried.append((height, budget))
        if height == 64 and budget < 0.5:
            raise offline.BudgetUnreachable("below the cheapest plan", lowest=0.5)
        config = SparseConfig(method="pattern", pattern=Full(), heads={LAYER: [Diagonal(radius=height // 64)] * 2},
                              search={"settings": {"budget": budget, "grid": list(layouts[height].grid)}})  # fmt: skip
        return offline.SearchResult(config, *[None] * 9, layout=layouts[height])

    monkeypatch.setattr(offline, "search", fake_search)
    config, _ = offline.search_sizes(None, ["p"], [{"height": 64}, {"height": 128}], budget=0.3, progress=False)
    assert tried == [(64, 0.3), (64, 0.6), (128, 0.3)]  # 0.45 is below the lowest budget with a plan
    assert [b.grid for b in config.sizes] == [(2, 4, 4), (2, 8, 8)] and not config.heads
    assert config.sizes[0].search["settings"]["budget"] == 0.6 and config.sizes[1].heads[LAYER][0] == Diagonal(radius=2)
    settings = {"layout": repr(TokenLayout(frames=2, height=8, width=8))}  # as configs without a recorded grid
    only_large = SparseConfig(method="pattern", pattern=Full(), heads={LAYER: [Diagonal(radius=5)] * 2},
                              search={"settings": settings})  # fmt: skip
    replaced = offline.merge_sizes([config, only_large])  # a later bucket replaces an earlier one
    assert [b.grid for b in replaced.sizes] == [(2, 4, 4), (2, 8, 8)] and replaced.sizes[1].heads == only_large.heads
    with pytest.raises(ValueError, match="must agree on block_size"):
        offline.merge_sizes([config, only_large.model_copy(update={"block_size": 32})])
    with pytest.raises(ValueError, match="does not record the size"):
        offline.merge_sizes([only_large.model_copy(update={"search": None})])
    monkeypatch.setattr(offline, "BUDGET_STEPS", (1.2,))
    with pytest.raises(ValueError, match=r"at size \{'height': 64\} no budget up to 0.36 pays"):
        offline.search_sizes(None, ["p"], [{"height": 64}], budget=0.3, progress=False)


def test_search_cli_at_several_sizes_writes_one_config_that_serves_each(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sparsediff.cli import app

    monkeypatch.setenv("SPARSEDIFF_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sizes.json"
    common = ["search", "--model", "tiny-wan", "--prompt", "a cat", "--steps", "3", "--calibration-steps", "1",
              "--max-error", "0.5", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, [*common, "--size", "5x64x64", "--size", "5x128x96"])
    assert result.exit_code == 0, result.output
    config = SparseConfig.load(out)
    assert [b.grid for b in config.sizes] == [(3, 8, 8), (3, 16, 12)]  # tiny Wan: 2x temporal, 8x spatial
    pipe = tiny_pipeline("wan")
    for (height, width), bucket in zip(((64, 64), (128, 96)), config.sizes, strict=True):
        frames = []  # the searched config at this size computes exactly what its bucket alone does
        for served in (config, SparseConfig.load(config, sizes=[], heads=bucket.heads)):
            with sparsediff.sparse(pipe, served) as state:
                frames.append(pipe("a cat", num_frames=5, height=height, width=width, num_inference_steps=2,
                                   output_type="np", generator=torch.Generator().manual_seed(0)).frames)  # fmt: skip
            assert sum(n for reason, n in state.calls.items() if reason.startswith(("sparse", "dense"))) > 0
        assert np.array_equal(frames[0], frames[1])
    single = tmp_path / "single.json"
    result = CliRunner().invoke(
        app, [*common[:-1], str(single), "--num-frames", "9", "--height", "64", "--width", "64"]
    )
    assert result.exit_code == 0, result.output
    merged = tmp_path / "merged.json"
    result = CliRunner().invoke(app, ["merge", str(out), str(single), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert [b.grid for b in SparseConfig.load(merged).sizes] == [(3, 8, 8), (3, 16, 12), (5, 8, 8)]
    bad = CliRunner().invoke(app, [*common, "--size", "5x64"])
    assert bad.exit_code == 2 and "is not FRAMESxHEIGHTxWIDTH" in bad.output
    bad = CliRunner().invoke(app, [*common, "--size", "5x64x64", "--height", "64"])
    assert bad.exit_code == 2 and "either as --size" in bad.output
