"""Quality-target search: the lowest time budget whose config, generated end to end, keeps a
quality target on the calibration prompts.

Quality falls as the budget falls, though not strictly (the solver's choice jumps between
pattern kinds: a lower budget can pick a kind that keeps more). The search brackets the answer
from a start budget (x or / `STEP` until one budget meets the target and one below it does not),
then bisects in log space until the two are within `RESOLUTION` of each other; evaluations left
then probe below the lowest budget tried (/ `STEP` each, down to the floor), and a probe that
meets the target is bracketed and bisected in turn. The lowest budget that met the target is the
answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from sparsediff.search.quality import Quality, QualityTarget

STEP = 1.5  # bracketing moves the budget by this factor
RESOLUTION = 1.1  # bisection stops when a passing and a failing budget are this close (ratio)


@dataclass(frozen=True)
class Point:
    """One evaluated config: its budget, error weights, end-to-end quality on the calibration
    prompts, and the attention speedup the cost model predicts for it."""

    budget: float
    quality: Quality
    met: bool
    predicted_speedup: float | None = None
    weights: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        out = {"budget": self.budget, **self.quality.as_json(), "met": self.met,
               "predicted_attention_speedup": self.predicted_speedup}  # fmt: skip
        return out | ({"weights": {k: round(v, 4) for k, v in self.weights.items()}} if self.weights else {})


@dataclass
class BudgetSearch:
    trail: list[Point] = field(default_factory=list)

    @property
    def passing(self) -> Point | None:
        """The lowest budget that met the target."""
        met = [p for p in self.trail if p.met]
        return min(met, key=lambda p: p.budget) if met else None

    @property
    def failing(self) -> Point | None:
        """The highest budget below the passing one (or of all, when none passed) that missed."""
        bound = self.passing.budget if self.passing else math.inf
        missed = [p for p in self.trail if not p.met and p.budget < bound]
        return max(missed, key=lambda p: p.budget) if missed else None

    def best(self) -> Point:
        """The point of highest quality (what to report when none met the target)."""
        return max(self.trail, key=lambda p: (p.met, p.quality.psnr))


def find_budget(evaluate: Callable[[float], Point], start: float, floor: float, evaluations: int) -> BudgetSearch:
    """Bracket, bisect, then probe lower budgets in [`floor`, 1] from `start`, at most
    `evaluations` calls of `evaluate` (budget -> evaluated point). Budgets are rounded to 4
    decimals; none is evaluated twice."""
    if evaluations < 2:
        raise ValueError(f"a target search needs at least 2 evaluations to bracket the budget, got {evaluations}")
    if not 0 < floor <= 1:
        raise ValueError(f"the lowest budget must be in (0, 1], got {floor}")
    found = BudgetSearch()
    budget = _clamp(start, floor)
    while budget is not None and len(found.trail) < evaluations and budget not in {p.budget for p in found.trail}:
        found.trail.append(evaluate(budget))
        budget = _next_budget(found, floor)
    return found


def _next_budget(found: BudgetSearch, floor: float) -> float | None:
    """The budget to evaluate after `found.trail`, or None when nothing is left to try."""
    passing, failing = found.passing, found.failing
    if passing is None:  # none met yet: up, until dense time
        return None if failing.budget >= 1.0 else _clamp(failing.budget * STEP, floor)
    if failing is None:  # all met: down, until the kernel's fixed cost
        return None if passing.budget <= floor else _clamp(passing.budget / STEP, floor)
    if passing.budget / failing.budget > RESOLUTION:
        return _clamp(math.sqrt(passing.budget * failing.budget), floor)
    lowest = min(p.budget for p in found.trail)  # the edge is found: probe below what was tried
    return None if lowest <= floor else _clamp(lowest / STEP, floor)


def _clamp(budget: float, floor: float) -> float:
    return round(min(1.0, max(floor, budget)), 4)


def describe(point: Point, target: QualityTarget) -> str:
    quality = point.quality
    verdict = "meets" if point.met else "misses"
    return f"budget {point.budget:g}: {quality.psnr:.2f} dB, SSIM {quality.ssim:.4f} ({verdict} {target})"
