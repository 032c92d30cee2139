"""Choose one candidate per (layer, head): under an error bound, or within a cost budget.

`errors[layer]` is [heads, candidates] relative L2 error, `costs[layer]` is [candidates]
predicted milliseconds per head. Both solvers are deterministic: ties go to the lower cost,
then the lower error, then the earlier candidate.
"""

from __future__ import annotations

import math

import torch

Choices = dict[str, list[int]]


def _best(errs: list[float], costs: list[float], key) -> int:
    return min(range(len(errs)), key=lambda c: (*key(errs[c], costs[c]), c))


def solve_max_error(errors: dict[str, torch.Tensor], costs: dict[str, torch.Tensor], max_error: float) -> Choices:
    """Per head, the cheapest candidate whose error is at most `max_error` (full always qualifies)."""
    if max_error < 0:
        raise ValueError(f"max_error must be >= 0, got {max_error}")
    choices = {}
    for layer, table in errors.items():
        cost = costs[layer].tolist()
        choices[layer] = []
        for head_errs in table.tolist():
            feasible = [e if e <= max_error else math.inf for e in head_errs]
            choices[layer].append(_best(feasible, cost, lambda e, c: (math.inf if e == math.inf else c, e)))
    return choices


def total_cost(choices: Choices, costs: dict[str, torch.Tensor]) -> float:
    return sum(float(costs[layer][c]) for layer, heads in choices.items() for c in heads)


def _lagrangian(errors, costs, lam: float) -> Choices:
    out = {}
    for layer, table in errors.items():
        cost = costs[layer].tolist()
        out[layer] = [_best(e, cost, lambda err, c: (err * err + lam * c, c)) for e in table.tolist()]
    return out


def solve_budget(errors: dict[str, torch.Tensor], costs: dict[str, torch.Tensor], budget_ms: float) -> Choices:
    """Least total squared error with total cost <= budget_ms (Lagrangian relaxation, bisection on
    the multiplier): error is spent where it buys the most time."""
    cheapest = {layer: [_best([0.0] * len(c), c.tolist(), lambda e, x: (x, e))] * t.shape[0]
                for layer, t, c in ((k, errors[k], costs[k]) for k in errors)}  # fmt: skip
    if total_cost(cheapest, costs) > budget_ms:
        raise ValueError(
            f"budget {budget_ms:.3g} ms is below the cheapest possible plan ({total_cost(cheapest, costs):.3g} ms)"
        )
    low, high = 0.0, 1.0
    while total_cost(_lagrangian(errors, costs, high), costs) > budget_ms:
        high *= 4
    if total_cost(_lagrangian(errors, costs, low), costs) <= budget_ms:
        return _lagrangian(errors, costs, low)
    for _ in range(60):
        mid = (low + high) / 2
        if total_cost(_lagrangian(errors, costs, mid), costs) > budget_ms:
            low = mid
        else:
            high = mid
    return _lagrangian(errors, costs, high)
