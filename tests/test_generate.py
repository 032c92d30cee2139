"""`sparsediff generate`: every built-in tiny family end to end, the --compare contract, errors."""

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sparsediff.cli import app
from sparsediff.config import SparseConfig
from sparsediff.generate import Request, compare, resolve_config, run
from sparsediff.metrics import psnr, ssim
from sparsediff.pipelines.registry import BUILTIN, Size, load_model

runner = CliRunner()
SMALL = {  # sizes the tiny models take quickly (frames, height, width)
    "tiny-wan": ("5", "64", "64"),
    "tiny-cogvideox": ("5", "64", "64"),
    "tiny-hunyuanvideo": ("5", "64", "64"),
    "tiny-ltx": ("9", "64", "64"),
    "tiny-flux": ("1", "64", "64"),
    "tiny-sd3": ("1", "64", "64"),
    "tiny-pixart": ("1", "64", "64"),
}
COMPARE_KEYS = {"dense_s", "sparse_s", "speedup", "psnr", "ssim", "density", "sparse_density", "outputs", "load_s",
                "warmup_s", "plan_s", "peak_mem_dense_mb", "peak_mem_sparse_mb", "peak_mem_source"}  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSEDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _generate(*args):
    result = runner.invoke(app, ["generate", "--steps", "2", *args])
    return result, result.output.strip().splitlines()


@pytest.mark.parametrize("model", sorted(SMALL))
def test_every_family_compares_through_the_cli(model, tmp_path):
    frames, height, width = SMALL[model]
    video = BUILTIN[model].video
    out = tmp_path / ("clip.mp4" if video else "image.png")
    config = tmp_path / "window.json"  # blocks small enough that a 0.3 window drops some at these sizes
    config.write_text(json.dumps({"method": "local", "density": 0.3, "block_size": 8}))
    result, lines = _generate(
        "--model", model, "--num-frames", frames, "--height", height, "--width", width,
        "--compare", "--json", "--config", str(config), "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(lines[-1])
    assert record.keys() >= COMPARE_KEYS and record["random_weights"] is True
    assert record["dense_s"] > 0 and record["sparse_s"] > 0
    assert math.isclose(record["speedup"], record["dense_s"] / record["sparse_s"])
    assert record["attention_calls"].get("sparse", 0) + record["attention_calls"].get("sparse: padded text", 0) > 0
    assert 0 < record["sparse_density"] <= record["density"] < 1  # sparse attention really ran
    assert record["psnr"] is not None and 10 < record["psnr"] < 100  # a different, still sane output
    assert 0 < record["ssim"] < 1
    assert set(record["outputs"]) == {"compare", "dense", "sparse"}
    dense = iio.imread(record["outputs"]["dense"])
    side = iio.imread(record["outputs"]["compare"])
    if video:
        assert dense.shape[0] == int(frames) and dense.shape[1:3] == (int(height), int(width))
        assert side.shape[0] == int(frames) and side.shape[2] >= 2 * int(width)
    else:
        assert dense.shape[:2] == (int(height), int(width)) and side.shape[1] >= 2 * int(width)


def test_window_is_really_sparse_at_a_size_with_many_blocks(tmp_path):
    loaded = load_model("tiny-wan")
    request = Request("a red circle moving right", Size(5, 128, 128), steps=2, guidance=5.0)
    config = resolve_config(loaded.entry, "local", None, 0.25)
    result = compare(loaded, request, config, tmp_path / "c.mp4")
    model_mb = sum(p.numel() * p.element_size() for p in loaded.pipe.transformer.parameters()) / 2**20
    assert result.peak_mem_dense_mb > model_mb and result.peak_mem_sparse_mb > model_mb
    assert "reset per run" in result.peak_mem_source  # this Linux lets the peak be reset between runs
    assert 0 < result.density < 0.5
    assert result.attention_calls["sparse"] == 2 * 2 * 2  # steps x CFG calls x self-attention layers
    assert result.psnr < 200 and result.ssim < 1  # the output really changed
    again = compare(loaded, request, resolve_config(loaded.entry, "dense", None, None), tmp_path / "d.mp4")
    assert again.psnr is None or again.psnr > 60  # dense preset: same output up to float error


def test_generate_without_compare_writes_gif_and_reports(tmp_path):
    out = tmp_path / "clip.gif"
    result, lines = _generate("--model", "tiny-wan", "--num-frames", "5", "--height", "32", "--width", "32",
                              "--out", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(lines[-1])
    assert record["outputs"] == {"sparse": str(out)} and record["sparse_s"] > 0
    assert iio.imread(out).shape == (5, 32, 32, 3)


def test_local_folder_loads_as_a_generic_pipeline(tmp_path):
    folder = load_model("tiny-pixart").pipe
    folder.save_pretrained(tmp_path / "my-pixart")
    result, lines = _generate("--model", str(tmp_path / "my-pixart"), "--height", "32", "--width", "32",
                              "--out", str(tmp_path / "x.png"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(lines[-1])["model"] == "my-pixart"


def test_a_model_without_an_adapter_runs_through_the_generic_one():
    """A transformer class sparsediff has no family entry for (here a user's own subclass): the
    generic adapter reads its (B, C, H, W) latent and patch size, and its self-attention (no text
    inside) runs sparse."""
    import diffusers

    import sparsediff
    from sparsediff.integrations.families import GENERIC, family_of

    class MyDiT(diffusers.HunyuanDiT2DModel):
        pass

    model = MyDiT(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=16, num_layers=2,
        cross_attention_dim=16, cross_attention_dim_t5=16, pooled_projection_dim=8, text_len=4, text_len_t5=4,
        hidden_size=16, use_style_cond_and_image_meta_size=False,
    ).eval()  # fmt: skip
    assert family_of(model) is GENERIC
    text = dict(encoder_hidden_states=torch.randn(1, 4, 16), text_embedding_mask=torch.ones(1, 4),
                encoder_hidden_states_t5=torch.randn(1, 4, 16), text_embedding_mask_t5=torch.ones(1, 4))  # fmt: skip
    inputs = dict(hidden_states=torch.randn(1, 4, 16, 16), timestep=torch.tensor([5.0]), **text, return_dict=False)
    with torch.no_grad():
        native = model(**inputs)[0]
        outputs = {}
        for backend in ("torch", "reference"):
            with sparsediff.sparse(model, "local", density=0.3, block_size=8, backend=backend) as state:
                outputs[backend] = model(**inputs)[0]
                # 2 self-attention layers over the 8 x 8 grid run sparse, their cross-attention dense
                assert state.calls["sparse"] == 2 and state.calls["dense: cross attention"] == 2
                assert 0 < state.density() < 1
    assert (outputs["torch"] - native).abs().max() > 1e-4
    assert (outputs["torch"] - outputs["reference"]).abs().max() <= 1e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "tiny-nothing"],
            "unknown model 'tiny-nothing'; give a built-in model (shapes-t2v, tiny-cogvideox",
        ),
        (["--model", "./no/such/folder"], "folder ./no/such/folder does not exist"),
        (["--model", "tiny-wan", "--height", "50"], "--height 50 is not a multiple of 8; nearest: 48"),
        (["--model", "tiny-ltx", "--num-frames", "10"], "--num-frames 10 is not 1 + a multiple of 4; nearest: 9"),
        (["--model", "tiny-wan", "--num-frames", "200"], "exceeds what the model's positions cover; at most 127"),
        (["--model", "tiny-flux", "--num-frames", "3"], "makes images: --num-frames must be 1"),
        (["--model", "tiny-flux", "--out", "x.mp4"], "makes images; use a .png file name"),
        (["--model", "tiny-wan", "--out", "x.txt"], "use a .mp4, .gif or .png file name"),
        (
            ["--model", "tiny-wan", "--method", "turbo"],
            "is neither a preset (dense, local, sparsed, pyramid, topk, hilbert, raster-window",
        ),
        (["--model", "tiny-wan", "--method", "local", "--config", "dense"], "give --method or --config, not both"),
        (["--model", "tiny-wan", "--steps", "0"], "--steps 0 must be in 1..1000"),
        (["--model", "tiny-wan", "--height", "0"], "--height 0 is not a multiple of 8; nearest: 8"),
        (["--model", "tiny-wan", "--num-frames", "0"], "--num-frames 0 is not 1 + a multiple of 2; nearest: 1"),
        (["--model", "tiny-wan", "--guidance", "-1"], "--guidance -1.0 must be a number >= 0"),
        (["--model", "tiny-wan", "--prompt", " "], "the prompt is empty"),
    ],
)
def test_errors_are_clear(args, message):
    if "--steps" in args:  # replaces _generate's own --steps 2
        result = runner.invoke(app, ["generate", *args, "--width", "32"])
    else:
        result, _ = _generate(*args, "--height" if "--height" not in args else "--width", "32")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output


def test_unwritable_out_is_refused_before_generating(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result, _ = _generate("--model", "tiny-wan", "--height", "32", "--width", "32", "--out", str(blocker / "x.mp4"))
    assert result.exit_code == 2 and "cannot write to" in result.output


def test_nan_output_is_an_error():
    loaded = load_model("tiny-wan")
    loaded.pipe.transformer.register_forward_hook(lambda module, args, out: (out[0] * float("nan"),))
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        run(loaded, Request("a cat", Size(1, 32, 32), steps=1, guidance=1.0), label="dense")


def test_peak_memory_of_a_run_is_not_hidden_by_an_earlier_larger_one():
    import torch

    from sparsediff.memory import PeakMemory

    with PeakMemory() as big:
        block = torch.ones(300 * 2**20 // 4)  # 300 MB, touched
        del block
    with PeakMemory() as small:
        block = torch.ones(20 * 2**20 // 4)
        del block
    assert big.mb - small.mb > 200  # the second run's peak is its own, not the first one's


def test_metrics():
    rng = np.random.default_rng(0)
    a = rng.random((2, 16, 16, 3))
    assert math.isinf(psnr(a, a)) and ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert 15 < psnr(a, noisy) < 25 and 0 < ssim(a, noisy) < 0.95
    assert psnr(np.zeros((1, 4, 4, 3)), np.full((1, 4, 4, 3), 0.1)) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="equal shape"):
        psnr(a, a[:1])


def test_plans_are_built_once_per_layout_and_a_second_run_builds_none():
    from sparsediff.generate import as_method, run_method
    from sparsediff.patterns import cached_plan

    loaded = load_model("tiny-wan")
    request = Request("a cat", Size(3, 64, 64), steps=2, guidance=1.0)
    config = SparseConfig(method="local", density=0.3, block_size=16)
    cached_plan.cache_clear()
    first = run_method(loaded, request, as_method(config))
    built = cached_plan.cache_info().misses
    second = run_method(loaded, request, as_method(config))  # a fresh `apply`, as every user run is
    assert built == 1 and cached_plan.cache_info().misses == built  # both layers run the same window: one plan
    assert first.plan_s > 0 and second.plan_s < first.plan_s and first.density is not None
