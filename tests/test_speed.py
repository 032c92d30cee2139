"""The never-slower check: verdicts from a speed profile measured once, so outputs do not depend on
timing races; the same seed, model, config and machine give the same frames in every process."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparsediff
from sparsediff import Diagonal, Full, Skip, SparseConfig, TokenLayout
from sparsediff.methods import speed
from sparsediff.methods.runner import AttentionCall, Runner, Step
from sparsediff.methods.speed import DENSE_REASON, SpeedCheck, SpeedProfile
from sparsediff.pipelines.tiny import tiny_pipeline

LAYER = "blocks.0.attn1"


def _call(n: int, step: int = 3, seed: int = 0, batch: int = 1) -> AttentionCall:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, 2, n, 16, generator=gen) for _ in range(3))
    layout = TokenLayout(height=n // 8, width=8)
    return AttentionCall(LAYER, q, k, v, lambda: F.scaled_dot_product_attention(q, k, v), Step(step), layout=layout)


def _short_loses(call, key) -> tuple[float, float]:
    """A synthetic cost model: sparse pays a fixed 5 ms and a quarter of dense's quadratic cost."""
    n = call.query.shape[-2]
    dense_ms = n * n / 1e4
    return 5.0 + 0.25 * dense_ms, dense_ms


def _check(**kwargs) -> SpeedCheck:
    return SpeedCheck(profile=SpeedProfile(None), **kwargs)  # this test's own, in memory


@pytest.mark.parametrize("method", ["local", "pyramid", "hilbert"])
def test_the_check_runs_dense_where_the_cost_model_says_sparse_loses(method):
    config = SparseConfig(method=method, density=0.25, block_size=16, never_slower=True)
    runner = Runner(config, [LAYER], {LAYER: 2}, speed=_check(predict=_short_loses))
    short, long = _call(64), _call(512)  # 64 tokens: 5.1 vs 0.4 ms; 512: 11.6 vs 26.2 ms
    out = runner.run(short)
    assert torch.equal(out, short.dense())  # exactly the model's own attention
    assert runner.stats.calls == {DENSE_REASON: 1}
    out = runner.run(long)
    assert runner.stats.calls["sparse"] == 1 and not torch.allclose(out, long.dense(), atol=1e-3)
    assert runner.stats.density() < 1  # the dense call counts at full work


def test_the_check_off_keeps_every_call_sparse():
    config = SparseConfig(method="local", density=0.25, block_size=16, never_slower=False)
    runner = Runner(config, [LAYER], {LAYER: 2}, speed=_check(predict=_short_loses))
    runner.run(_call(64))
    assert runner.stats.calls == {"sparse": 1}


def test_near_break_even_runs_dense_the_margin_keeps_noise_from_flipping_it():
    config = SparseConfig(method="local", density=0.25, block_size=16, never_slower=True)
    barely = _check(predict=lambda call, key: (0.98, 1.0))  # 2% faster: within the 5% margin
    assert Runner(config, [LAYER], {LAYER: 2}, speed=barely).run(_call(64)) is not None
    assert next(iter(barely.profile.entries.values()))["sparse"] is False
    clearly = _check(predict=lambda call, key: (0.5, 1.0))
    Runner(config, [LAYER], {LAYER: 2}, speed=clearly).run(_call(64))
    assert next(iter(clearly.profile.entries.values()))["sparse"] is True


def test_the_first_call_of_a_kind_returns_what_every_later_call_returns(tmp_path):
    """Measured, not predicted: the measuring call returns the verdict's output (a 64-token call
    loses to SDPA by orders of magnitude), the verdict is stored, and a new process reads it."""
    config = SparseConfig(method="local", density=0.25, block_size=16, never_slower=True)
    path = tmp_path / "profile.json"
    check = SpeedCheck(SpeedProfile(path))
    runner = Runner(config, [LAYER], {LAYER: 2}, speed=check)
    first = _call(64)
    assert torch.equal(runner.run(first), first.dense())
    assert runner.stats.calls == {DENSE_REASON: 1} and check.measured == 1
    stored = json.loads(path.read_text())["kinds"]
    (entry,) = stored.values()
    assert entry["sparse"] is False and entry["sparse_ms"] > entry["dense_ms"] > 0
    assert "local plan blocks.0.attn1 grid 1x8x8 q(1, 2, 64, 16)" in entry["call"]
    elsewhere = SpeedCheck(SpeedProfile(path))  # another process on this machine
    again = Runner(config, [LAYER], {LAYER: 2}, speed=elsewhere)
    second = _call(64, seed=1)
    assert torch.equal(again.run(second), second.dense()) and elsewhere.measured == 0


def test_the_key_holds_every_setting_batch_and_device_that_changes_the_answer():
    """A verdict made at keep 0.3 is not reused at 0.9, nor one made at batch 1 for batch 2."""
    check = _check(predict=_short_loses)
    for keep in (0.3, 0.9):
        config = SparseConfig(method="sparsed", keep_ratio=keep, block_size=16, never_slower=True)
        runner = Runner(config, [LAYER], {LAYER: 2}, speed=check)
        runner.run(_call(512, step=5))  # the pattern step (not checked), then a checked call
        runner.run(_call(512, step=6))
    assert len(check.profile.entries) == 2
    config = SparseConfig(method="local", block_size=16, never_slower=True)
    for batch in (1, 2):
        Runner(config, [LAYER], {LAYER: 2}, speed=check).run(_call(512, batch=batch))
    assert len(check.profile.entries) == 4
    assert speed.environment_key(torch.device("cpu")).startswith("cpu|")
    assert f"threads={torch.get_num_threads()}" in speed.environment_key(torch.device("cpu"))


def test_a_pinned_profile_decides_and_is_never_written(tmp_path):
    config_path = tmp_path / "shipped" / "config.json"
    measured = _check(predict=_short_loses)
    Runner(SparseConfig(method="local", block_size=16, never_slower=True), [LAYER], {LAYER: 2},
           speed=measured).run(_call(64))  # fmt: skip
    (key,) = measured.profile.entries
    config_path.parent.mkdir()
    pinned = {key: {**measured.profile.entries[key], "sparse": True}}  # pinned: sparse, whatever timing says
    (config_path.parent / "speed.json").write_text(json.dumps({"version": 1, "kinds": pinned}))
    config_path.write_text(json.dumps({"method": "local", "block_size": 16, "speed_profile": "speed.json",
                                       "never_slower": True}))  # fmt: skip
    config = SparseConfig.load(config_path)
    runner = Runner(config, [LAYER], {LAYER: 2})
    runner.run(_call(64, seed=4))
    assert runner.stats.calls == {"sparse": 1}
    runner.run(_call(80))  # a kind the pinned profile lacks: measured for this process only
    assert json.loads((config_path.parent / "speed.json").read_text())["kinds"] == pinned
    with pytest.raises(ValueError, match="does not exist; write one with `sparsediff profile"):
        Runner(SparseConfig(method="local", speed_profile=str(tmp_path / "nope.json"), never_slower=True), [LAYER])


def test_skipped_heads_keep_their_output_when_the_check_runs_the_layer_dense():
    config = SparseConfig(method="pattern", heads={LAYER: [Diagonal(radius=1), Skip(every=4)]}, block_size=16,
                          never_slower=True)  # fmt: skip
    runner = Runner(config, [LAYER], {LAYER: 2}, speed=_check(predict=_short_loses))
    call = _call(64)
    runner.run(call)
    assert runner.stats.calls == {DENSE_REASON: 1}
    assert torch.equal(runner.reuse[(LAYER, 0)].output, call.dense()[:, [1]])


def test_a_searched_layer_of_full_heads_runs_the_model_s_attention():
    runner = Runner(SparseConfig(method="pattern", pattern=Full()), [LAYER], {LAYER: 2})
    call = _call(64)
    assert torch.equal(runner.run(call), call.dense())


def _frames(pipe, config):
    with sparsediff.sparse(pipe, config):
        out = pipe("a red circle", num_frames=5, height=64, width=64, num_inference_steps=3,
                   generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
    return np.asarray(out.frames[0])


def test_same_seed_same_frames_in_the_first_generation_and_the_next(tmp_path, monkeypatch):
    """With timing decided inside the run, the first generation ran its first calls of each kind
    sparse and later ones dense once sparse lost: the next generation differed."""
    monkeypatch.setattr(speed.SPEED, "check", SpeedCheck(SpeedProfile(tmp_path / "profile.json")))
    pipe = tiny_pipeline("wan")
    config = SparseConfig(method="local", density=0.3, block_size=16, never_slower=True)
    first = _frames(pipe, config)
    assert speed.SPEED.check.measured > 0
    assert np.array_equal(first, _frames(pipe, config))


def test_same_frames_in_two_processes_sharing_the_machine_s_profile(tmp_path):
    env = {**os.environ, "SPARSEDIFF_NEVER_SLOWER": "1", "SPARSEDIFF_SPEED_PROFILE": str(tmp_path / "profile.json")}
    outputs = []
    for name in ("first", "second"):  # the first measures and stores, the second reads
        out = tmp_path / f"{name}.png"
        done = subprocess.run(
            [sys.executable, "-m", "sparsediff", "generate", "--model", "tiny-wan", "--num-frames", "5",
             "--height", "64", "--width", "64", "--steps", "3", "--config", "local", "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        outputs.append(iio.imread(out))
    kinds = json.loads((tmp_path / "profile.json").read_text())["kinds"]
    assert kinds and all("tiny" not in k for k in kinds)  # keys are hashes, labels say what was measured
    assert np.array_equal(outputs[0], outputs[1])


def test_profile_command_measures_and_shows(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sparsediff.cli import app

    monkeypatch.setattr(speed.SPEED, "check", None)  # the command replaces the process-wide check

    out = tmp_path / "speed.json"
    args = ["--num-frames", "5", "--height", "64", "--width", "64", "--steps", "2", "--config", "local"]
    result = CliRunner().invoke(app, ["profile", "--model", "tiny-wan", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    kinds = json.loads(out.read_text())["kinds"]
    assert kinds and "kind(s) of call measured on tiny-wan" in result.output
    shown = CliRunner().invoke(app, ["profile", "--show", "--out", str(out)])
    assert shown.exit_code == 0 and f"{len(kinds)} kind(s) of call" in " ".join(shown.output.split())
