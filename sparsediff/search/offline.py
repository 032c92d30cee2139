"""`search(pipe, prompts, ...)`: calibrate on dense runs, price candidates, solve, write a config."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from sparsediff.config import Schedule, SizeBucket, SparseConfig
from sparsediff.integrations.diffusers import model_signature, transformers_of
from sparsediff.integrations.families import can_reuse_whole
from sparsediff.layout import TokenLayout
from sparsediff.memory import PeakMemory
from sparsediff.methods.runner import kept_bytes_of
from sparsediff.patterns import PER_CALL, Full, HilbertWindow, Pattern, Pyramid, Skip, aligned_plan
from sparsediff.search.calibrate import Calibration, CalibrationState, seeded_frames, watched_dense_runs
from sparsediff.search.candidates import BandAndHeavyColumns, Candidate
from sparsediff.search.cost import CostModel, measure
from sparsediff.search.quality import Quality, QualityTarget, generated_quality, stack_of
from sparsediff.search.refine import Refinement, refine_weights, weight_keys, weighted_errors
from sparsediff.search.report import heatmap, short_name
from sparsediff.search.solver import (
    Choices,
    LayerReuse,
    cheapest_cost,
    limit_kept_memory,
    reused_share,
    solve_budget,
    solve_max_error,
)
from sparsediff.search.target import Point, describe, find_budget
from sparsediff.search.work import SearchWork, choices_key

Blocks = tuple[int, int]  # (query, KV) block sizes of static plans


@dataclasses.dataclass
class SearchResult:
    config: SparseConfig
    candidates: list[Candidate]
    errors: dict[str, torch.Tensor]  # layer -> [heads, candidates] relative L2 error
    costs: dict[str, torch.Tensor]  # layer -> [candidates] predicted ms per head, as the solver saw them
    reuse: LayerReuse  # what the solver counted for layers reused whole
    choices: Choices
    chosen: dict[str, list[Pattern]]  # layer -> per head, the pattern its choice stands for
    densities: dict[str, list[float]]  # per head, of the chosen pattern
    cost_model: CostModel
    seconds: float
    peak_mem_mb: float | None = None  # of the calibration runs, where the search peaks (`memory.PeakMemory`)
    layout: TokenLayout | None = None  # of the calibration calls (the first layer's)

    def table(self) -> Table:
        table = Table(title="sparsediff search: chosen pattern per head (relative L2 error, density)")
        table.add_column("layer")
        heads = max(len(c) for c in self.choices.values())
        for h in range(heads):
            table.add_column(f"head {h}")
        for layer, picks in self.choices.items():
            errs, dens, patterns = self.errors[layer], self.densities[layer], self.chosen[layer]
            cells = [f"{short_name(patterns[h])} ({float(errs[h, c]):.3f}, {dens[h]:.2f})" for h, c in enumerate(picks)]
            table.add_row(layer, *cells)
        return table

    def write_report(self, folder: str | Path) -> dict[str, Path]:
        folder = Path(folder)
        layers = list(self.choices)
        png = heatmap(layers, [self.chosen[n] for n in layers], [self.densities[n] for n in layers],
                      folder / "heads.png")  # fmt: skip
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(self.table())
        console.print(f"predicted: {self.config.search['predicted']}")
        text = folder / "heads.txt"
        text.write_text(console.export_text())
        return {"heatmap": png, "table": text}


def sample_steps(total: int, dense_steps: int, count: int) -> frozenset[int]:
    """`count` steps spread evenly over the sparse part of the schedule (never step 0: skip needs a previous step)."""
    first = max(dense_steps, 1)
    if first >= total:
        raise ValueError(f"no sparse steps to calibrate: {total} steps, {dense_steps} dense")
    span = total - first
    count = min(count, span)
    return frozenset(first + round(i * (span - 1) / max(count - 1, 1)) for i in range(count))


def search(
    pipe,
    prompts: Sequence[str],
    *,
    max_error: float | None = None,
    budget: float | None = None,
    num_inference_steps: int = 20,
    calibration_steps: int = 4,
    rows: int = 128,
    block_size: int = 64,
    kv_block_size: int | None = None,
    backend: str = "auto",
    dense_fraction: float = 0.0,
    dense_steps: int = 0,
    candidates: Sequence[Candidate] | None = None,
    cost_model: CostModel | None = None,
    seed: int = 0,
    progress: bool = True,
    max_extra_memory_mb: float | None = None,
    refine: int = 0,
    target: QualityTarget | None = None,
    evaluations: int = 6,
    validate: Sequence[str] = (),
    cache: str | None = None,
    work: str | Path | None = None,
    weights: dict[str, float] | None = None,
    start_budget: float | None = None,
    **call_kwargs,
) -> SearchResult:
    """Find the cheapest pattern per layer and head for `pipe` (a diffusers pipeline).

    Exactly one of `max_error` (relative L2 error per head, on sampled query rows), `budget`
    (predicted attention time as a fraction of dense) or `target` (a `QualityTarget`: the mean
    PSNR/SSIM against dense that the prompts generated end to end must keep) is given. A target
    search refines the error weights at the start budget with at most `refine` generations, then
    tries at most `evaluations` budgets with them (`search.target`); `cache` (a peer name, e.g.
    "magcache") stacks that cache under every generation, so the stack meets the target;
    `validate` prompts are then generated dense and under the config, and their quality and
    speedup recorded. `work` is a folder that keeps what the search computed: a rerun resumes
    from it. `weights` are error weights to start from (an earlier refinement's,
    `search.refinement.weights`); `start_budget` is the budget a target search tries (and refines
    at) first, default `TARGET_START` (give an earlier search's budget to go on from it).
    `call_kwargs` go to every pipeline call (sizes, guidance); each prompt runs with seed
    `seed + i`. Static plans use query blocks of `block_size` and KV blocks of `kv_block_size`
    (default: the same).
    `max_extra_memory_mb` bounds what skipped heads keep between steps at the calibration's
    size (the config's `search.predicted.extra_memory_mb`); skips over it are replaced.
    `refine` > 0 (budget or target) tunes the solver's error weights end to end on the prompts,
    with at most that many generations of them (`search.refine`).
    """
    if sum(x is not None for x in (max_error, budget, target)) != 1:
        raise ValueError(
            "give exactly one of max_error (per-head error bound), budget (fraction of dense time) or a quality "
            "target (min_psnr / min_ssim)"
        )
    if target is None and (validate or cache):
        raise ValueError("validate and cache go with a quality target (min_psnr / min_ssim)")
    if cache:
        stack_of(SparseConfig(method="dense"), cache)  # an unknown cache is refused before any run
    for name, fraction in (("budget", budget), ("start_budget", start_budget)):
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"{name} is a fraction of dense attention time in (0, 1], got {fraction}")
    if not prompts:
        raise ValueError("search needs at least one calibration prompt")
    if max_extra_memory_mb is not None and max_extra_memory_mb < 0:
        raise ValueError(f"max_extra_memory_mb must be >= 0, got {max_extra_memory_mb}")
    if refine < 0:
        raise ValueError(f"refine is a number of end-to-end evaluations (0: none), got {refine}")
    if refine and max_error is not None:
        raise ValueError("refine trades error between heads within a budget; give budget, not max_error")
    if target is not None and evaluations < 2:
        raise ValueError(f"a target search needs at least 2 evaluations to bracket the budget, got {evaluations}")
    blocks = (block_size, kv_block_size or block_size)
    if cost_model is not None and cost_model.plan_blocks != blocks:
        raise ValueError(
            f"the cost model was fitted on {cost_model.plan_blocks} (query, KV) blocks, the search plans "
            f"{blocks}; measure a new one or search with its block sizes"
        )
    end_to_end = bool(refine or target)
    if end_to_end:
        call_kwargs.setdefault("output_type", "np")  # frames in [0, 1], whatever the pipeline's default
    weights = dict(weights or {})
    start = time.perf_counter()
    schedule = Schedule(dense_steps=dense_steps, dense_fraction=dense_fraction)
    cal = Calibration(
        candidates=list(candidates) if candidates else [],
        sample_steps=sample_steps(
            num_inference_steps, schedule.dense_step_count(num_inference_steps), calibration_steps
        ),
        rows=rows,
        seed=seed,
        dense_steps=schedule.dense_step_count(num_inference_steps),
    )
    transformer = transformers_of(pipe)[0]
    store = SearchWork(work, {
        "model": model_signature(transformer), "prompts": list(prompts), "steps": num_inference_steps,
        "calibration_steps": sorted(cal.sample_steps), "rows": rows, "seed": seed, "blocks": blocks,
        "backend": backend, "dense_steps": cal.dense_steps, "candidates": [str(c) for c in cal.candidates],
        "call_kwargs": call_kwargs, "dtype": str(transformer.dtype), "frames": end_to_end,
    })  # fmt: skip
    done = store.get("calibration") or {"runs": 0, "calibration": cal, "frames": []}
    cal, references = done["calibration"], list(done["frames"])

    def after_each(i: int, frames) -> None:
        references.extend([frames] if frames is not None else [])
        store.put("calibration", {"runs": i + 1, "calibration": cal, "frames": references})

    device = getattr(pipe, "device", "cpu")
    with PeakMemory(device) as peak:  # the calibration runs: where the search peaks
        if done["runs"] < len(prompts):
            watched_dense_runs(pipe, _state_class(cal), prompts, block_size, seed, num_inference_steps, progress,
                               kv_block_size=kv_block_size, backend=backend, keep_frames=end_to_end,
                               first=done["runs"], after_each=after_each, **call_kwargs)  # fmt: skip
    if not cal.errors:
        raise ValueError("no self/joint attention call had a known layout: nothing to search (see the log's warnings)")
    layout = next(iter(cal.layouts.values()))
    heads = next(iter(cal.errors.values())).err.shape[0]
    per_call = tuple(p for p in cal.candidates if isinstance(p, PER_CALL))
    saved_costs = store.get("cost_model") if cost_model is None else None
    if saved_costs is not None:
        cost_model = CostModel.model_validate(saved_costs)
    if cost_model is None:
        head_dim = next(iter(cal.head_dims.values()))
        cost_model = measure(layout.num_tokens, heads, head_dim, block_size, backend, per_call=per_call,
                             kv_block_size=kv_block_size, batch=cal.batch, layout=layout)  # fmt: skip
        store.put("cost_model", cost_model.model_dump())
    cost_model = cost_model.with_per_call(per_call, layout)  # a reused model may lack newer candidates
    cost_model = cost_model.with_outside_ratios(cal.outside)
    costs = {layer: _candidate_costs(cal, layer, blocks, cost_model) for layer in cal.errors}
    errors = {layer: stats.relative().float() for layer, stats in cal.errors.items()}
    savings = _whole_layer_savings(cal, transformer, cost_model)
    reuse = LayerReuse({c: p.every for c, p in enumerate(cal.candidates) if isinstance(p, Skip)}, savings)
    skips = set(reuse.periods)
    branches = max(1, len(cal.branches))
    kept_per_head = {layer: kept_bytes_of(1, cal.batch, cal.layouts[layer].num_tokens, cal.head_dims[layer],
                                          cal.itemsize, branches) for layer in errors}  # fmt: skip
    dense_total = sum(cost_model.dense_ms * t.shape[0] / cost_model.heads for t in errors.values())
    overhead = len(errors) * (cost_model.fixed_ms + cost_model.per_group_ms)  # per-call fixed costs
    # the fixed costs and the cheapest plan (below 0 where reusing whole layers saves more than it costs)
    lowest_ms = overhead + max(cheapest_cost(errors, costs, reuse), 0.0)
    if budget is not None and budget * dense_total < lowest_ms:
        raise BudgetUnreachable(
            f"budget {budget} of dense ({budget * dense_total:.3g} ms) is below the cheapest plan at "
            f"{layout.num_tokens} tokens ({lowest_ms:.3g} ms: the sparse kernel's fixed cost over {len(errors)} "
            f"layers and each head's cheapest pattern), so the lowest budget here is "
            f"{math.ceil(lowest_ms / dense_total * 100) / 100:g}; raise the budget or search at a longer layout, "
            "where sparse attention pays",
            lowest=lowest_ms / dense_total,
        )

    def solve(weights: dict[str, float], at_budget: float | None = budget) -> Choices:
        weighted = weighted_errors(errors, cal.candidates, weights) if weights else errors
        if at_budget is None:
            choices = solve_max_error(weighted, costs, max_error, reuse=reuse)
        else:  # predicted sparse time <= budget x dense SDPA time, the fixed costs off the top
            choices = solve_budget(weighted, costs, at_budget * dense_total - overhead, reuse=reuse)
        choices = _dense_where_faster(choices, cal, blocks, cost_model, savings)
        if max_extra_memory_mb is not None:
            choices = limit_kept_memory(choices, errors, costs, skips, kept_per_head, int(max_extra_memory_mb * 2**20))
        return choices

    def patterns_of(choices: Choices) -> dict[str, list[Pattern]]:
        return {layer: [cal.resolve(layer, h, c) for h, c in enumerate(picks)] for layer, picks in choices.items()}

    def config_of(
        choices: Choices,
        refinement: Refinement | None = None,
        at_budget: float | None = budget,
        met: dict | None = None,
    ) -> SparseConfig:
        kept = sum(kept_per_head[layer] * sum(c in skips for c in picks) for layer, picks in choices.items())
        patterns = patterns_of(choices)
        predicted = _predict(patterns, cal.layouts, blocks, cost_model, savings)
        return SparseConfig(
            method="pattern",
            pattern=Full(),  # layers the calibration never saw stay dense
            heads=patterns,
            block_size=block_size,
            kv_block_size=kv_block_size,
            backend=backend,
            schedule=schedule,
            model=model_signature(transformer),
            search={
                "settings": {
                    "prompts": list(prompts), "num_inference_steps": num_inference_steps,
                    "calibration_steps": sorted(cal.sample_steps), "rows": rows, "seed": seed,
                    "max_error": max_error, "budget": at_budget, "layout": repr(layout), "grid": list(layout.grid),
                    "max_extra_memory_mb": max_extra_memory_mb, "refine": refine, "start_weights": weights or None,
                    "call_kwargs": {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, bool))},
                },
                "predicted": predicted | {"extra_memory_mb": round(kept / 2**20, 6)},
                "cost_model": cost_model.model_dump(),
                "whole_layer_saving_ms": {n: round(ms, 3) for n, ms in savings.items()},
                "head_error": {n: [float(errors[n][h, c]) for h, c in enumerate(p)] for n, p in choices.items()},
            }
            | ({"refinement": refinement.as_json()} if refinement else {})
            | ({"target": met} if met else {}),
        )  # fmt: skip

    planned = len(prompts) * ((evaluations if target else 0) + refine) + 2 * len(validate)
    bar = tqdm(total=planned, desc="search (end to end)", unit="generation", disable=not (progress and target))

    def evaluate(choices: Choices) -> Quality:
        """The calibration prompts generated under `choices` (once per distinct choice, kept in `work`)."""
        key = choices_key(choices, cache)
        known = store.evaluation(key)
        if known is None:
            quality = generated_quality(pipe, stack_of(config_of(choices), cache), prompts, references, seed,
                                        num_inference_steps, **call_kwargs)  # fmt: skip
            known = quality.as_json()
            store.add_evaluation(key, known)
            bar.update(len(prompts))
        return Quality(**known)

    keys = weight_keys(cal.candidates, list(errors))
    refinement, met = None, None
    if target is not None:
        floor = round(lowest_ms / dense_total * FLOOR_MARGIN, 4) or 0.0001
        if floor >= 1:
            raise BudgetUnreachable(
                f"at {layout.num_tokens} tokens the cheapest sparse plan and the kernel's fixed cost ({lowest_ms:.3g} "
                f"ms over {len(errors)} layers) are not below dense attention time ({dense_total:.3g} ms): no budget "
                "pays; search at a longer layout, where sparse attention pays",
                lowest=lowest_ms / dense_total,
            )
        start_budget = max(start_budget or TARGET_START, floor)
        if refine:  # the weights correct how the solver ranks errors: found at one budget, used at all
            _, refinement = refine_weights(lambda w: solve(w, start_budget), lambda c: evaluate(c).psnr, keys, refine,
                                           progress=False, start=weights)  # fmt: skip
            weights = refinement.weights
            if progress:
                bar.write(f"refined at budget {start_budget:g}: {refinement.psnr_before:.2f} -> "
                          f"{refinement.psnr_after:.2f} dB, weights {weights}")  # fmt: skip

        def point(at_budget: float) -> Point:
            choices = solve(weights, at_budget)
            quality = evaluate(choices)
            predicted = _predict(patterns_of(choices), cal.layouts, blocks, cost_model, savings)
            found = Point(at_budget, quality, target.met(quality), predicted["attention_speedup"], weights)
            if progress:
                bar.write(describe(found, target))
            return found

        found = find_budget(point, start_budget, floor, evaluations)
        trail, chosen = found.trail, found.passing
        if chosen is None:
            bar.close()
            raise TargetMissed(
                f"no budget up to {max(p.budget for p in trail):g} meets {target} on the calibration prompts (best: "
                f"{describe(found.best(), target)}); lower the target, keep more steps dense (dense_fraction) or "
                "calibrate on more prompts"
            )
        choices = solve(weights, chosen.budget)
        met = {"min_psnr": target.min_psnr, "min_ssim": target.min_ssim, "cache": cache, "budget": chosen.budget,
               "calibration": chosen.quality.as_json(), "trail": [p.as_json() for p in trail]}  # fmt: skip
        if validate:
            met["validation"] = _validated(pipe, store, config_of(choices), cache, list(validate), seed,
                                           num_inference_steps, target, bar, **call_kwargs)  # fmt: skip
        met["front"] = _front(met["trail"], (met.get("validation") or {}).get("dense_seconds"))
        budget_used = chosen.budget
    elif refine:
        choices, refinement = refine_weights(solve, lambda c: evaluate(c).psnr, keys, refine, progress, weights)
        budget_used = budget
    else:
        choices, budget_used = solve(weights), budget
    bar.close()
    config = config_of(choices, refinement, budget_used, met)
    per_head = patterns_of(choices)
    densities = {layer: [_amortized_density(cal.layouts[layer], p, blocks) for p in pats]
                 for layer, pats in per_head.items()}  # fmt: skip
    seconds = time.perf_counter() - start
    return SearchResult(config, cal.candidates, errors, costs, reuse, choices, per_head, densities, cost_model, seconds,
                        peak.mb, layout)  # fmt: skip


TARGET_START = 0.35  # the budget a target search tries first (where the refined budget search of shapes-t2v ended)
FLOOR_MARGIN = 1.05  # the lowest budget tried: this much above the cheapest plan and the kernel's fixed costs


class TargetMissed(ValueError):
    """No budget up to dense time keeps the quality target on the calibration prompts."""


def _validated(pipe, store: SearchWork, config: SparseConfig, cache: str | None, prompts: list[str], seed: int,
               steps: int, target: QualityTarget, bar, **call_kwargs) -> dict:  # fmt: skip
    """Quality and speedup on prompts the search never saw: each generated dense (timed; kept in
    `store`, so a rerun or another target reuses them) and under the config (and cache)."""
    name = "validation-" + hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:12]
    dense = store.get(name) or {"frames": [], "seconds": []}
    for i in range(len(dense["frames"]), len(prompts)):
        begin = time.perf_counter()
        frames = seeded_frames(pipe, prompts[i], seed + i, steps, **call_kwargs)
        dense["seconds"].append(time.perf_counter() - begin)
        dense["frames"].append(frames)
        store.put(name, dense)
        bar.update(1)
    quality = generated_quality(pipe, stack_of(config, cache), prompts, dense["frames"], seed, steps, **call_kwargs)
    bar.update(len(prompts))
    dense_s = float(np.mean(dense["seconds"]))
    found = {"prompts": prompts, **quality.as_json(), "dense_seconds": round(dense_s, 4),
             "speedup": round(dense_s / quality.seconds, 3), "met": target.met(quality)}  # fmt: skip
    if not found["met"]:
        warnings.warn(
            f"on the {len(prompts)} validation prompts the config reaches {quality.psnr:.2f} dB, SSIM "
            f"{quality.ssim:.4f}: it misses {target} there; calibrate on more prompts or aim higher",
            stacklevel=3,
        )
    return found


def _front(trail: list[dict], dense_seconds: float | None) -> list[dict]:
    """The evaluated points no other beats on both speed (seconds per generation) and PSNR, fastest
    first; with the dense time (validation), each with its measured speedup."""

    def beaten(p: dict, o: dict) -> bool:
        return (
            o["seconds"] <= p["seconds"]
            and o["psnr"] >= p["psnr"]
            and (o["seconds"], o["psnr"]) != (p["seconds"], p["psnr"])
        )

    front = [p for p in trail if not any(beaten(p, o) for o in trail)]
    front = sorted({(p["seconds"], p["psnr"]): p for p in front}.values(), key=lambda p: p["seconds"])
    return [p | ({"speedup": round(dense_seconds / p["seconds"], 3)} if dense_seconds else {}) for p in front]


class BudgetUnreachable(ValueError):
    """No plan fits the budget: the sparse kernel's fixed costs and each head's cheapest pattern
    cost more (a short layout, a fast CPU). `lowest` is the least budget that has a plan."""

    def __init__(self, message: str, lowest: float = 1.0) -> None:
        super().__init__(message)
        self.lowest = lowest


BUDGET_STEPS = (1.5, 2.0, 3.0)  # a refused budget is retried at these multiples (capped at 1)


def search_sizes(
    pipe, prompts: Sequence[str], sizes: Sequence[dict], *, budget: float | None = None, progress: bool = True,
    **settings,
) -> tuple[SparseConfig, list[SearchResult]]:  # fmt: skip
    """`search` at each of `sizes` (call arguments: `num_frames`, `height`, `width`), merged into
    one config with a size bucket per searched grid (`merge_sizes`).

    At a size so short (or a CPU so fast) that no plan fits `budget`, the budget is raised
    (x1.5, x2, x3, at most 1: dense time; steps below the lowest budget with a plan are passed
    over) and the one used recorded in the bucket; the retries reuse the size's calibration (a
    temporary work folder when none is given). A size where none pays is an error naming it
    (leave it out: the speed check runs such calls dense at run time anyway).
    """
    results = []
    with tempfile.TemporaryDirectory(prefix="sparsediff-search-") as scratch:
        settings["work"] = settings.get("work") or scratch
        for i, size in enumerate(sizes):
            if progress:
                print(f"search at size {i + 1}/{len(sizes)}: {size}", flush=True)
            results.append(_search_raising_budget(pipe, prompts, size, budget, progress, settings))
    return merge_sizes([r.config for r in results]), results


def _search_raising_budget(pipe, prompts, size: dict, budget: float | None, progress: bool, settings: dict):
    steps = list(dict.fromkeys(round(min(1.0, budget * m), 4) for m in (1.0, *BUDGET_STEPS))) if budget else [None]
    lowest, begin, last = 0.0, time.perf_counter(), None
    for attempt in steps:
        if attempt is not None and attempt < lowest:
            continue
        if last is not None and progress:
            print(f"no plan fits a lower budget at {size}; trying {attempt}", flush=True)
        try:
            result = search(pipe, prompts, budget=attempt, progress=progress, **settings, **size)
            return dataclasses.replace(result, seconds=time.perf_counter() - begin)  # the refused tries too
        except BudgetUnreachable as err:
            lowest, last = err.lowest, err
    tried_up_to = f"no budget up to {steps[-1]} pays: " if budget else ""
    raise ValueError(f"at size {size} {tried_up_to}{last}") from last


def searched_grid(config: SparseConfig) -> tuple[int, int, int]:
    """The latent grid a single-size config was searched at (its search settings)."""
    settings = (config.search or {}).get("settings", {})
    if "grid" in settings:
        return tuple(settings["grid"])
    found = {k: int(v) for k, v in re.findall(r"\b(frames|height|width)=(\d+)", settings.get("layout", ""))}
    if len(found) != 3:
        raise ValueError("this config does not record the size it was searched at (search.settings); search it again")
    return found["frames"], found["height"], found["width"]


def merge_sizes(configs: Sequence[SparseConfig]) -> SparseConfig:
    """One config from `pattern` configs searched on one model at different sizes: a size bucket
    per single-size config (at the grid it was searched at), the buckets of multi-size ones.
    Block sizes, backend, schedule and model must agree; a later bucket for a grid replaces an
    earlier one."""
    if not configs:
        raise ValueError("give at least one config to merge")
    first = configs[0]
    shared = ("method", "block_size", "kv_block_size", "backend", "schedule", "model", "pattern")
    for config in configs:
        if config.method != "pattern" or not (config.heads or config.sizes):
            raise ValueError("only searched `pattern` configs (per-head patterns) can be merged by size")
        differ = [name for name in shared if getattr(config, name) != getattr(first, name)]
        if differ:
            raise ValueError(f"configs merged by size must agree on {', '.join(differ)}")
    buckets: dict[tuple[int, int, int], SizeBucket] = {}
    for config in configs:
        own = config.sizes or [SizeBucket(grid=searched_grid(config), heads=config.heads, search=config.search)]
        buckets |= {bucket.grid: bucket for bucket in own}
    merged = first.model_dump() | {"heads": {}, "sizes": list(buckets.values()), "search": None, "version": 2}
    return SparseConfig.model_validate(merged)


def _state_class(cal: Calibration) -> type[CalibrationState]:
    """A CalibrationState bound to this calibration (install builds one state per transformer)."""
    return type("BoundCalibrationState", (CalibrationState,), {"calibration": cal})


def _whole_layer_savings(cal: Calibration, transformer, cost_model: CostModel) -> dict[str, float]:
    """Per layer, the ms (in the cost model's units) a call reused whole spares beyond attention:
    its ratio of time outside attention to dense attention times the cost model's dense time for
    the layer's heads; none where the layer cannot be reused whole."""
    savings = {}
    for layer, table in cal.errors.items():
        ratio = cost_model.outside_ratio.get(layer)
        if ratio is not None and can_reuse_whole(transformer.get_submodule(layer)):
            savings[layer] = max(ratio, 0.0) * cost_model.dense_ms * table.err.shape[0] / cost_model.heads
    return savings


def _dense_where_faster(
    choices: Choices, cal: Calibration, blocks: Blocks, cost_model: CostModel, savings: dict[str, float]
) -> Choices:
    """A layer whose sparse plan is predicted no faster than dense SDPA runs dense (exact, and faster)."""
    full = _full_index(cal.candidates)
    out = {}
    for layer, picks in choices.items():
        patterns = [cal.resolve(layer, h, c) for h, c in enumerate(picks)]
        dense_ms, sparse_ms = _layer_ms(cal.layouts[layer], patterns, blocks, cost_model, savings.get(layer, 0.0))
        out[layer] = [full] * len(picks) if sparse_ms >= dense_ms and any(c != full for c in picks) else picks
    return out


def _layer_ms(
    layout: TokenLayout, patterns: list[Pattern], blocks: Blocks, cost_model: CostModel, saving_ms: float = 0.0
) -> tuple[float, float]:
    """(dense SDPA ms, predicted ms per step of the plan) for one layer; a full plan runs SDPA.

    A `Skip(every=k)` head runs in full on one step in k: its work is spread over the k steps.
    A layer of skipped heads only also spares `saving_ms` on the steps it is reused whole.
    """
    plan = aligned_plan(layout, patterns, blocks)
    dense_ms = cost_model.dense_ms * plan.num_heads / cost_model.heads
    if plan.is_full:
        return dense_ms, dense_ms
    heads_ms = sum(_head_ms(layout, p, blocks, cost_model) for p in patterns)
    sparse_ms = heads_ms + cost_model.predict_ms(0.0, len(plan.head_groups))
    if all(isinstance(p, Skip) for p in patterns):
        sparse_ms -= saving_ms * reused_share({p.every for p in patterns})
    return dense_ms, sparse_ms


def _full_index(candidates: list[Candidate]) -> int:
    return next(i for i, p in enumerate(candidates) if isinstance(p, Full))


def _head_ms(layout: TokenLayout, pattern: Pattern, blocks: Blocks, cost_model: CostModel) -> float:
    """Predicted ms per step of one head (a skip's full run spread over its period)."""
    if isinstance(pattern, PER_CALL):
        if str(pattern) not in cost_model.per_call_ms:
            raise ValueError(f"the cost model has no timing of {pattern}; measure it (CostModel.with_per_call)")
        return cost_model.per_call_ms[str(pattern)] / cost_model.heads
    # Full heads (and skipped heads on their refresh steps) run through dense SDPA.
    if isinstance(pattern, Skip | Full):
        return cost_model.dense_ms / cost_model.heads / (pattern.every if isinstance(pattern, Skip) else 1)
    return float(aligned_plan(layout, pattern, blocks).kv_counts.sum()) * cost_model.per_block_pair_ms


def _amortized_density(layout: TokenLayout, pattern: Pattern, blocks: Blocks) -> float:
    if isinstance(pattern, Skip):
        return 1.0 / pattern.every
    if isinstance(pattern, Pyramid):
        return pattern.budget
    if isinstance(pattern, HilbertWindow):
        return pattern.density
    return aligned_plan(layout, pattern, blocks).density


def _candidate_costs(cal: Calibration, layer: str, blocks: Blocks, cost_model: CostModel) -> torch.Tensor:
    """Predicted ms per step of one head under each candidate (the heads' mean where heads fill it in)."""
    layout, heads = cal.layouts[layer], cal.errors[layer].err.shape[0]
    costs = [
        sum(_head_ms(layout, cal.resolve(layer, h, c), blocks, cost_model) for h in range(heads)) / heads
        if isinstance(candidate, BandAndHeavyColumns)
        else _head_ms(layout, candidate, blocks, cost_model)
        for c, candidate in enumerate(cal.candidates)
    ]
    return torch.tensor(costs, dtype=torch.float64)


def _predict(per_head: dict, layouts: dict, blocks: Blocks, cost_model: CostModel, savings: dict) -> dict:
    """Predicted density and attention time; a layer reused whole counts the projections it spares."""
    sparse_ms = dense_ms = density = 0.0
    for layer, patterns in per_head.items():
        layer_dense, layer_sparse = _layer_ms(layouts[layer], patterns, blocks, cost_model, savings.get(layer, 0.0))
        dense_ms += layer_dense
        sparse_ms += layer_sparse
        density += sum(_amortized_density(layouts[layer], p, blocks) for p in patterns) / len(patterns)
    return {
        "density": round(density / len(per_head), 4),
        "attention_ms": round(sparse_ms, 3),
        "dense_attention_ms": round(dense_ms, 3),
        "attention_speedup": round(dense_ms / sparse_ms, 3) if sparse_ms else None,
    }
