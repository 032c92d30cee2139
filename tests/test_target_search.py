"""Quality-target search: the budget search on known curves, then end to end on a tiny pipeline
(target met on calibration, validation recorded, resumed from its work folder, a cache stacked)."""

import json

import numpy as np
import pytest
import torch
from test_search import FIXED_COSTS
from typer.testing import CliRunner

from sparsediff import SparseConfig
from sparsediff.cli import app
from sparsediff.media import frames_of
from sparsediff.pipelines.tiny import tiny_pipeline
from sparsediff.search import Quality, QualityTarget, TargetMissed, search, search_sizes
from sparsediff.search import offline as offline_search
from sparsediff.search.quality import generated_quality, stack_of
from sparsediff.search.target import RESOLUTION, Point, find_budget

TARGET = QualityTarget(min_psnr=30.0)


def _curve(psnr_at):
    """An evaluate over budgets whose PSNR follows `psnr_at`, recording what it was asked."""
    asked = []

    def evaluate(budget: float) -> Point:
        asked.append(budget)
        quality = Quality(psnr=psnr_at(budget), ssim=0.9, seconds=budget)
        return Point(budget, quality, TARGET.met(quality))

    return evaluate, asked


@pytest.mark.parametrize("threshold", [0.07, 0.2, 0.35, 0.5, 0.9])
@pytest.mark.parametrize("start", [0.1, 0.35, 0.8])
def test_the_budget_search_brackets_then_bisects_to_the_threshold(threshold, start):
    """PSNR rises with the budget and crosses 30 dB at `threshold`: the answer meets the target,
    lies within RESOLUTION of it, and no budget is generated twice."""
    evaluate, asked = _curve(lambda b: 30.0 + 40.0 * (b - threshold))
    found = find_budget(evaluate, start=start, floor=0.05, evaluations=12)
    assert found.passing.met and threshold <= found.passing.budget <= threshold * RESOLUTION * 1.001
    assert found.failing.budget < threshold
    assert len(asked) == len(set(asked)) <= 12


def test_the_budget_search_stays_within_its_evaluations_and_bounds():
    evaluate, asked = _curve(lambda b: 30.0 + 40.0 * (b - 0.31))
    found = find_budget(evaluate, start=0.35, floor=0.05, evaluations=3)
    assert len(asked) == 3 and found.passing is not None
    unreachable, asked = _curve(lambda b: 20.0 + b)
    found = find_budget(unreachable, start=0.35, floor=0.05, evaluations=10)
    assert found.passing is None and max(asked) == 1.0 and found.best().budget == 1.0
    easy, asked = _curve(lambda b: 50.0)
    found = find_budget(easy, start=0.35, floor=0.05, evaluations=10)
    assert found.passing.budget == 0.05 and min(asked) == 0.05  # down to the kernel's fixed cost, no lower
    with pytest.raises(ValueError, match="at least 2 evaluations"):
        find_budget(easy, start=0.35, floor=0.05, evaluations=1)


def test_a_non_monotone_curve_still_returns_a_budget_that_met_the_target():
    bumpy = {0.35: 31.0, 0.2333: 29.0, 0.2858: 30.5, 0.2582: 28.0, 0.2716: 31.5}
    evaluate, asked = _curve(lambda b: bumpy.get(b, 29.0))
    found = find_budget(evaluate, start=0.35, floor=0.05, evaluations=8)
    assert asked[:5] == [0.35, 0.2333, 0.2858, 0.2582, 0.2716]  # 0.2582 < 0.2716: bisection between a miss and a pass
    assert asked[5:] == [0.1555, 0.1037, 0.0691]  # then the evaluations left probe below, all missing
    assert found.passing.budget == 0.2716 and found.failing.budget == 0.2582


def test_a_probe_below_the_edge_that_meets_the_target_becomes_the_answer():
    """Whole-layer reuse at a low budget can keep more than a higher budget's patterns."""
    bumpy = {0.35: 31.0, 0.2333: 29.0, 0.2858: 29.5, 0.3163: 30.5, 0.1555: 30.2, 0.1037: 29.0, 0.127: 30.1}
    evaluate, asked = _curve(lambda b: bumpy.get(b, 29.0))
    found = find_budget(evaluate, start=0.35, floor=0.05, evaluations=10)
    assert asked[:5] == [0.35, 0.2333, 0.2858, 0.3163, 0.3007]  # the edge: 0.3163 meets, 0.3007 misses
    assert asked[5:] == [0.1555, 0.1037, 0.127, 0.1148, 0.1207]  # a probe met: its own edge, bisected
    assert found.passing.budget == 0.127 and found.failing.budget == 0.1207


def test_quality_targets_are_checked_and_margins_are_in_db():
    with pytest.raises(ValueError, match=r"min_psnr \(dB\) or min_ssim"):
        QualityTarget()
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        QualityTarget(min_ssim=1.5)
    both = QualityTarget(min_psnr=30, min_ssim=0.95)
    assert both.margin(Quality(psnr=32, ssim=0.94, seconds=1)) == pytest.approx(-1.0)  # 0.01 SSIM short = 1 dB
    assert both.met(Quality(psnr=30, ssim=0.95, seconds=1)) and str(both) == "PSNR >= 30 dB and SSIM >= 0.95"


CALL = dict(num_frames=5, height=128, width=128, guidance_scale=3.0, num_inference_steps=4)
PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One work folder for the searches that do not test resuming: they calibrate once."""
    return tmp_path_factory.mktemp("search-work")


@pytest.fixture(scope="module")
def wan():
    pipe = tiny_pipeline("wan")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _target_search(pipe, work, **kwargs):
    settings = dict(target=QualityTarget(min_psnr=70.0), evaluations=4, refine=2, calibration_steps=2,
                    cost_model=FIXED_COSTS, progress=False, work=work) | kwargs  # fmt: skip
    return search(pipe, PROMPTS, **settings, **CALL)


def _dense(pipe, prompts):
    return [frames_of(pipe(prompt=p, generator=torch.Generator().manual_seed(i), output_type="np", **CALL))
            for i, p in enumerate(prompts)]  # fmt: skip


def test_a_target_search_meets_its_target_and_records_what_it_measured(wan, shared):
    result = _target_search(wan, shared, validate=["a green cat"])
    found = result.config.search["target"]
    assert found["min_psnr"] == 70.0 and found["calibration"]["psnr"] >= 70.0
    assert result.config.search["settings"]["budget"] == found["budget"]
    assert any(not p["met"] and p["budget"] < found["budget"] for p in found["trail"])  # it found the edge
    again = generated_quality(wan, stack_of(result.config, None), PROMPTS, _dense(wan, PROMPTS), 0, output_type="np",
                              **CALL)  # fmt: skip
    assert again.psnr == pytest.approx(found["calibration"]["psnr"], abs=1e-3)
    checked = found["validation"]
    unseen = generated_quality(wan, stack_of(result.config, None), ["a green cat"], _dense(wan, ["a green cat"]), 0,
                               output_type="np", **CALL)  # fmt: skip
    assert checked["psnr"] == pytest.approx(unseen.psnr, abs=1e-3) and checked["met"] == (unseen.psnr >= 70)
    assert checked["speedup"] > 0 and checked["dense_seconds"] > 0
    front = found["front"]
    assert [p["seconds"] for p in front] == sorted(p["seconds"] for p in front)
    assert all(np.diff([p["psnr"] for p in front]) > 0)  # slower points on the front are better ones
    assert all("speedup" in p for p in front)


def test_a_stopped_target_search_resumes_from_its_work_folder(wan, tmp_path, monkeypatch):
    generated = []
    real = offline_search.generated_quality

    def counted(*args, **kwargs):
        generated.append(1)
        if len(generated) == 2:
            raise KeyboardInterrupt  # stopped during the second generation
        return real(*args, **kwargs)

    monkeypatch.setattr(offline_search, "generated_quality", counted)
    with pytest.raises(KeyboardInterrupt):
        _target_search(wan, tmp_path)
    calibrations = []
    monkeypatch.setattr(offline_search, "watched_dense_runs", lambda *a, **k: calibrations.append(1))
    generated.clear()
    monkeypatch.setattr(offline_search, "generated_quality", lambda *a, **k: generated.append(1) or real(*a, **k))
    first = _target_search(wan, tmp_path)
    assert first.config.search["target"]["calibration"]["psnr"] >= 70.0
    assert not calibrations  # the dense runs and their calibration were kept
    (log,) = tmp_path.glob("*/evaluations.jsonl")

    def generated_once() -> bool:  # every distinct config generated once, over both runs
        keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
        return len(keys) == len(set(keys))

    assert generated_once() and len(log.read_text().splitlines()) == 1 + len(generated)
    second = _target_search(wan, tmp_path, target=QualityTarget(min_psnr=69.0))  # another target reuses it all
    assert generated_once() and second.config.search["target"]["min_psnr"] == 69.0


def test_an_unreachable_target_is_an_error_that_says_what_was_reached(wan, shared):
    with pytest.raises(TargetMissed, match=r"no budget up to 1 meets PSNR >= 98 dB .*\(best: budget 1: [\d.]+ dB"):
        _target_search(wan, shared, target=QualityTarget(min_psnr=98.0), evaluations=8)


def test_a_target_search_with_a_cache_meets_the_target_as_a_stack(wan, shared):
    result = _target_search(wan, shared, target=QualityTarget(min_psnr=40.0), cache="magcache", refine=0)
    found = result.config.search["target"]
    assert found["cache"] == "magcache" and found["calibration"]["psnr"] >= 40.0
    stacked = generated_quality(wan, stack_of(result.config, "magcache"), PROMPTS, _dense(wan, PROMPTS), 0,
                                output_type="np", **CALL)  # fmt: skip
    assert stacked.psnr == pytest.approx(found["calibration"]["psnr"], abs=1e-3)
    alone = generated_quality(wan, stack_of(result.config, None), PROMPTS, _dense(wan, PROMPTS), 0,
                              output_type="np", **CALL)  # fmt: skip
    assert alone.psnr != pytest.approx(stacked.psnr, abs=1e-3)  # the cache was really under every generation


def test_a_search_at_several_sizes_meets_the_target_at_each(wan, shared):
    sizes = [{"num_frames": 5, "height": 128, "width": 128}, {"num_frames": 5, "height": 96, "width": 128}]
    settings = dict(target=QualityTarget(min_psnr=70.0), evaluations=3, refine=0, calibration_steps=2,
                    cost_model=FIXED_COSTS, progress=False, work=shared)  # fmt: skip
    call = {k: v for k, v in CALL.items() if k not in sizes[0]}
    config, _ = search_sizes(wan, PROMPTS, sizes, **settings, **call)
    assert sorted(b.grid for b in config.sizes) == [(3, 12, 16), (3, 16, 16)]
    for bucket in config.sizes:
        assert bucket.search["target"]["calibration"]["psnr"] >= 70.0


def test_bad_target_settings_are_refused_before_any_run(wan):
    with pytest.raises(ValueError, match=r"start_budget is a fraction of dense attention time in \(0, 1\], got 1.5"):
        search(wan, PROMPTS, target=TARGET, start_budget=1.5, **CALL)
    with pytest.raises(ValueError, match="exactly one of"):
        search(wan, PROMPTS, budget=0.3, target=TARGET, **CALL)
    with pytest.raises(ValueError, match="go with a quality target"):
        search(wan, PROMPTS, budget=0.3, validate=["a cat"], **CALL)
    with pytest.raises(ValueError, match="not one of diffusers' caches"):
        search(wan, PROMPTS, target=TARGET, cache="nocache", **CALL)


def test_the_cli_target_search_refuses_validation_on_calibration_prompts(tmp_path):
    runner = CliRunner()
    prompts = tmp_path / "validate.txt"
    prompts.write_text("a red circle\n")
    common = ["search", "--model", "tiny-wan", "--prompt", "a red circle", "--out", str(tmp_path / "c.json")]
    done = runner.invoke(app, [*common, "--budget", "0.3", "--validate", "2"])
    assert done.exit_code == 2 and "go with a target" in done.output
    done = runner.invoke(app, [*common, "--min-psnr", "30", "--validate-prompts", str(prompts)])
    assert done.exit_code == 2 and "must be new to the search" in done.output
    done = runner.invoke(app, [*common, "--min-psnr", "30", "--validate", "2"])
    assert done.exit_code == 2 and "no held-out prompts" in done.output
    preset = SparseConfig(method="local").save(tmp_path / "local.json")
    done = runner.invoke(app, [*common, "--min-psnr", "30", "--start-from", str(preset)])
    assert done.exit_code == 2 and "give a config searched at one size" in " ".join(done.output.split())


def test_the_cli_target_search_writes_the_config_and_prints_the_front(tmp_path):
    costs = tmp_path / "costs.json"
    costs.write_text(FIXED_COSTS.model_dump_json())
    validate = tmp_path / "validate.txt"
    validate.write_text("a green cat\n")
    out = tmp_path / "target.json"
    done_args = ["search", "--model", "tiny-wan", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--min-psnr", "60",
                 "--validate-prompts", str(validate), "--steps", "4", "--num-frames", "5", "--height", "128",
                 "--width", "128", "--calibration-steps", "2", "--evaluations", "3", "--refine", "0",
                 "--cost-model", str(costs), "--work", str(tmp_path / "work")]  # fmt: skip
    done = CliRunner().invoke(app, [*done_args, "--out", str(out)])
    assert done.exit_code == 0, done.output
    found = json.loads(out.read_text())["search"]["target"]
    assert found["min_psnr"] == 60 and found["validation"]["prompts"] == ["a green cat"]
    assert "target PSNR >= 60" in done.output and "prompts it never saw" in done.output and "front" in done.output
    again = tmp_path / "again.json"  # from the answer: its budget is the first one tried, its cost model reused
    args = [a for a in done_args if a not in ("--cost-model", str(costs))]
    done = CliRunner().invoke(app, [*args, "--start-from", str(out), "--out", str(again)])
    assert done.exit_code == 0, done.output
    assert json.loads(again.read_text())["search"]["target"]["trail"][0]["budget"] == found["budget"]
