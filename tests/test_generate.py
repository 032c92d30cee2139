"""`sparsediff generate`: every built-in tiny family end to end, the --compare contract, errors."""

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sparsediff.cli import app
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
COMPARE_KEYS = {"dense_s", "sparse_s", "speedup", "psnr", "ssim", "density", "outputs", "load_s", "warmup_s"}


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
    result, lines = _generate(
        "--model", model, "--num-frames", frames, "--height", height, "--width", width,
        "--compare", "--json", "--density", "0.3", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(lines[-1])
    assert record.keys() >= COMPARE_KEYS and record["random_weights"] is True
    assert record["dense_s"] > 0 and record["sparse_s"] > 0
    assert math.isclose(record["speedup"], record["dense_s"] / record["sparse_s"])
    assert record["psnr"] is None or record["psnr"] > 10
    assert 0 < record["ssim"] <= 1
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
    config = resolve_config(loaded.entry, "window", None, 0.25)
    result = compare(loaded, request, config, tmp_path / "c.mp4")
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
            "is neither a preset (dense, window, sparsed, pyramid, topk, hilbert, raster-window",
        ),
        (["--model", "tiny-wan", "--method", "window", "--config", "dense"], "give --method or --config, not both"),
    ],
)
def test_errors_are_clear(args, message):
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


def test_metrics():
    rng = np.random.default_rng(0)
    a = rng.random((2, 16, 16, 3))
    assert math.isinf(psnr(a, a)) and ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert 15 < psnr(a, noisy) < 25 and 0 < ssim(a, noisy) < 0.95
    assert psnr(np.zeros((1, 4, 4, 3)), np.full((1, 4, 4, 3), 0.1)) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="equal shape"):
        psnr(a, a[:1])


def test_timings_exclude_plan_building():
    torch.manual_seed(0)
    loaded = load_model("tiny-wan")
    request = Request("a cat", Size(3, 64, 64), steps=2, guidance=1.0)
    from sparsediff.generate import run_sparse

    first = run_sparse(loaded, request, resolve_config(loaded.entry, "window", None, 0.3))
    assert first.setup_s > 0 and first.density is not None
