"""End-to-end refinement: tune the solver's error weights on the calibration prompts' own outputs.

The solver minimizes the sum of per-head squared errors on sampled query rows, and that sum does
not rank whole configs by the quality of what they generate: errors of one size hurt differently
by their kind (a local band's error is a bias every step repeats; a skipped head's staleness
changes smoothly) and by their layer. Refinement scales the errors of one pattern kind or one
layer at a time, re-solves within the same budget (so the budget still holds), generates the
calibration prompts under the new choice and keeps the change when the mean PSNR against the
dense outputs rises: a coordinate search over the weights, at most `evaluations` generations
of the prompts (a weight change that leaves the choice as it was costs none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from sparsediff.search.solver import Choices

FACTOR = 1.5  # a weight moves by this factor, up or down
MIN_GAIN_DB = 0.05  # a change is kept when it raises the mean PSNR by more than this


@dataclass
class Refinement:
    """What refinement did: the weights it kept, the PSNR on the calibration prompts before and
    after, and every evaluation in order (the weight changed, its PSNR, whether it was kept)."""

    weights: dict[str, float] = field(default_factory=dict)
    psnr_before: float | None = None
    psnr_after: float | None = None
    trail: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "weights": {k: round(v, 4) for k, v in self.weights.items()},
            "psnr_before": round(self.psnr_before, 3),
            "psnr_after": round(self.psnr_after, 3),
            "evaluations": len(self.trail),
            "trail": self.trail,
        }


def kind_of(candidate) -> str:
    """The weight key of a candidate's pattern kind (its class: Diagonal, Skip, Pyramid, ...)."""
    return f"kind:{type(candidate).__name__}"


def weighted_errors(errors: dict[str, torch.Tensor], candidates: Sequence, weights: dict[str, float]) -> dict:
    """`errors` ([heads, candidates] per layer) scaled by each candidate's kind and each layer's weight."""
    per_candidate = torch.tensor([weights.get(kind_of(c), 1.0) for c in candidates], dtype=torch.float32)
    return {layer: table * per_candidate * weights.get(f"layer:{layer}", 1.0) for layer, table in errors.items()}


def weight_keys(candidates: Sequence, layers: Sequence[str]) -> list[str]:
    """What refinement may weigh: every pattern kind but full attention (its error is 0), then every layer."""
    kinds = dict.fromkeys(kind_of(c) for c in candidates if kind_of(c) != "kind:Full")
    return [*kinds, *(f"layer:{layer}" for layer in layers)]


def refine_weights(
    solve: Callable[[dict[str, float]], Choices],
    evaluate: Callable[[Choices], float],
    keys: Sequence[str],
    evaluations: int,
    progress: bool = True,
    start: dict[str, float] | None = None,
) -> tuple[Choices, Refinement]:
    """Coordinate search on the error weights from `start` (default: all 1): per key, the weight
    times and divided by `FACTOR`; the first change that raises `evaluate` by more than
    `MIN_GAIN_DB` is kept and the pass goes on from it; passes repeat until one keeps nothing or
    the evaluations are spent."""
    if evaluations < 1:
        raise ValueError(f"refinement needs at least 1 evaluation, got {evaluations}")
    weights = dict(start or {})
    best = solve(weights)
    best_score = evaluate(best)
    scores = {_key(best): best_score}
    found = Refinement(psnr_before=best_score, trail=[{"change": "solver", "psnr": _r(best_score)}])
    bar = tqdm(total=evaluations, initial=1, desc="refine (end to end)", disable=not progress)
    kept_one = True
    while kept_one and len(found.trail) < evaluations:
        kept_one = False
        for key in keys:
            for factor in (FACTOR, 1 / FACTOR):
                if len(found.trail) >= evaluations:
                    break
                trial = weights | {key: weights.get(key, 1.0) * factor}
                choices = solve(trial)
                if _key(choices) in scores:
                    continue
                score = scores[_key(choices)] = evaluate(choices)
                kept = score > best_score + MIN_GAIN_DB
                found.trail.append({"change": f"{key} x{factor:.3g}", "psnr": _r(score), "kept": kept})
                bar.update(1)
                bar.set_postfix(psnr=f"{max(score, best_score):.2f}")
                if kept:
                    weights, best, best_score, kept_one = trial, choices, score, True
                    break
    bar.close()
    found.weights, found.psnr_after = weights, best_score
    return best, found


def _key(choices: Choices) -> tuple:
    return tuple((layer, tuple(picks)) for layer, picks in sorted(choices.items()))


def _r(value: float) -> float:
    return round(value, 3)
