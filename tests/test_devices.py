"""Every way in takes a device and a dtype: `auto` resolution, the dtype rules, refusals before
any work, and (marked gpu, skipped without CUDA) the pipeline really on the GPU."""

import pytest
import torch
from typer.testing import CliRunner

from sparsediff.cli import app
from sparsediff.devices import resolve_device, resolve_dtype

CUDA = torch.cuda.is_available()
runner = CliRunner()


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu(monkeypatch):
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("CPU")


def test_auto_dtype_is_bf16_on_cuda_and_fp32_on_the_cpu():
    assert resolve_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="--dtype 'int8': choose auto"):
        resolve_dtype("int8", torch.device("cpu"))


@pytest.mark.skipif(CUDA, reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--model", "tiny-wan", "--steps", "1"],
        ["batch", "prompts.txt", "--out", "out"],
        ["search", "--model", "tiny-wan", "--prompt", "a cat", "--budget", "0.5", "--out", "s.json"],
        ["structure", "--model", "tiny-wan"],
        ["eval", "--samples", "1"],
        ["bench", "methods", "--model", "tiny-wan"],
        ["ui"],
    ],
)
def test_cuda_without_a_gpu_is_a_clear_error_before_any_work(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    result = runner.invoke(app, [*command, "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "this machine has no CUDA GPU" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()


def test_unknown_devices_are_refused():
    for name, message in (("meta", "sparsediff runs on"), ("gpu0", "is not a device")):
        with pytest.raises(ValueError, match=message):
            resolve_device(name)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_generate_runs_on_the_gpu_in_bf16(tmp_path):
    from sparsediff.cli.common import load_on

    loaded = load_on("tiny-wan", "auto", "auto")
    assert loaded.pipe.transformer.device.type == "cuda" and loaded.pipe.transformer.dtype is torch.bfloat16
    result = runner.invoke(app, ["generate", "--model", "tiny-wan", "--num-frames", "5", "--height", "64",
                                 "--width", "64", "--steps", "2", "--compare", "--json",
                                 "--out", str(tmp_path / "gpu.mp4")])  # fmt: skip
    assert result.exit_code == 0, result.output
