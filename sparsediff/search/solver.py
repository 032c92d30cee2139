"""Choose one candidate per (layer, head): under an error bound, or within a cost budget.

`errors[layer]` is [heads, candidates] relative L2 error, `costs[layer]` is [candidates]
predicted milliseconds per head. Both solvers are deterministic: ties go to the lower cost,
then the lower error, then the earlier candidate.

Whole-layer reuse couples a layer's heads: when every head of a layer is a skip, the runtime
reuses the layer's whole output on steps where no head refreshes, sparing its projections too
(`LayerReuse.saving_ms` per call). Per-head costs cannot see that, so each solver also weighs,
per layer, every head taking the same skip candidate, with the saving counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce

import torch

Choices = dict[str, list[int]]


@dataclass(frozen=True)
class LayerReuse:
    """What whole-layer reuse saves: `periods` maps skip candidates to their period, `saving_ms`
    a layer to the time one reused call spares beyond its attention (projections, norms)."""

    periods: dict[int, int] = field(default_factory=dict)
    saving_ms: dict[str, float] = field(default_factory=dict)

    def layer_saving(self, layer: str, picks: list[int]) -> float:
        """Predicted ms per step the layer saves by reusing whole (0 unless every head is a skip)."""
        if not picks or any(c not in self.periods for c in picks):
            return 0.0
        return self.saving_ms.get(layer, 0.0) * reused_share({self.periods[c] for c in picks})

    def whole_layer_options(self, heads: int) -> list[list[int]]:
        """Every head of a layer taking the same skip candidate, one option per skip."""
        return [[c] * heads for c in self.periods]


def reused_share(periods: set[int]) -> float:
    """Share of steps on which skipped heads of these periods all reuse (none refreshes)."""
    cycle = reduce(math.lcm, periods)
    return sum(all(step % p for p in periods) for step in range(cycle)) / cycle


NO_REUSE = LayerReuse()


def _best(errs: list[float], costs: list[float], key) -> int:
    return min(range(len(errs)), key=lambda c: (*key(errs[c], costs[c]), c))


def layer_cost(layer: str, picks: list[int], costs: dict[str, torch.Tensor], reuse: LayerReuse = NO_REUSE) -> float:
    cost = costs[layer].tolist()
    return sum(cost[c] for c in picks) - reuse.layer_saving(layer, picks)


def total_cost(choices: Choices, costs: dict[str, torch.Tensor], reuse: LayerReuse = NO_REUSE) -> float:
    return sum(layer_cost(layer, picks, costs, reuse) for layer, picks in choices.items())


def solve_max_error(
    errors: dict[str, torch.Tensor], costs: dict[str, torch.Tensor], max_error: float, reuse: LayerReuse = NO_REUSE
) -> Choices:
    """Per head, the cheapest candidate whose error is at most `max_error` (full always qualifies);
    a layer whose heads all meet the bound with one skip takes it when that is cheaper whole."""
    if max_error < 0:
        raise ValueError(f"max_error must be >= 0, got {max_error}")
    choices = {}
    for layer, table in errors.items():
        cost = costs[layer].tolist()
        picks = []
        for head_errs in table.tolist():
            feasible = [e if e <= max_error else math.inf for e in head_errs]
            picks.append(_best(feasible, cost, lambda e, c: (math.inf if e == math.inf else c, e)))
        wholes = [w for w in reuse.whole_layer_options(len(picks)) if bool((table[:, w[0]] <= max_error).all())]
        # min keeps the first of equals: the per-head choice unless a whole-layer skip is cheaper
        choices[layer] = min([picks, *wholes], key=lambda p, layer=layer: layer_cost(layer, p, costs, reuse))
    return choices


def _lagrangian(errors, costs, lam: float, reuse: LayerReuse) -> Choices:
    out = {}
    for layer, table in errors.items():
        cost = costs[layer].tolist()
        rows = table.tolist()

        def objective(picks: list[int], layer=layer, rows=rows) -> float:
            return sum(rows[h][c] ** 2 for h, c in enumerate(picks)) + lam * layer_cost(layer, picks, costs, reuse)

        per_head = [_best(e, cost, lambda err, c: (err * err + lam * c, c)) for e in rows]
        out[layer] = min([per_head, *reuse.whole_layer_options(len(rows))], key=objective)  # ties: per head
    return out


def cheapest_cost(
    errors: dict[str, torch.Tensor], costs: dict[str, torch.Tensor], reuse: LayerReuse = NO_REUSE
) -> float:
    """The cost of the cheapest plan there is, whatever its error (a budget below it has no plan)."""
    cheapest = {}
    for layer, table in errors.items():  # a whole-layer skip may be cheaper than every head's cheapest
        per_head = [_best([0.0] * len(costs[layer]), costs[layer].tolist(), lambda e, x: (x, e))] * table.shape[0]
        options = [per_head, *reuse.whole_layer_options(table.shape[0])]
        cheapest[layer] = min(options, key=lambda p, layer=layer: layer_cost(layer, p, costs, reuse))
    return total_cost(cheapest, costs, reuse)


def solve_budget(
    errors: dict[str, torch.Tensor], costs: dict[str, torch.Tensor], budget_ms: float, reuse: LayerReuse = NO_REUSE
) -> Choices:
    """Least total squared error with total cost <= budget_ms: error is spent where it buys the most
    time. Lagrangian relaxation (bisection on the multiplier) finds the best plan on the convex hull
    of (cost, error) within the budget; what that leaves unspent goes to `_top_up`."""
    floor = cheapest_cost(errors, costs, reuse)
    if floor > budget_ms:
        raise ValueError(f"budget {budget_ms:.3g} ms is below the cheapest possible plan ({floor:.3g} ms)")

    def spent(lam: float) -> float:
        return total_cost(_lagrangian(errors, costs, lam, reuse), costs, reuse)

    low, high = 0.0, 1.0
    while spent(high) > budget_ms:
        high *= 4
    if spent(low) <= budget_ms:
        return _lagrangian(errors, costs, low, reuse)
    for _ in range(60):
        mid = (low + high) / 2
        if spent(mid) > budget_ms:
            low = mid
        else:
            high = mid
    return _top_up(_lagrangian(errors, costs, high, reuse), errors, costs, budget_ms, reuse)


def _top_up(choices: Choices, errors, costs, budget_ms: float, reuse: LayerReuse) -> Choices:
    """Spend what the hull solution leaves of the budget: repeatedly take the one-head change that
    lowers squared error the most per ms and still fits (the hull can jump past a cheaper step;
    on random 2 x 2 x 4 tables this took the brute-force optimum from 28 to 42 of 48 cases)."""
    choices = {layer: list(picks) for layer, picks in choices.items()}
    while True:
        left = budget_ms - total_cost(choices, costs, reuse)
        best = None
        for layer, picks in choices.items():
            table, before = errors[layer].tolist(), layer_cost(layer, picks, costs, reuse)
            for h, current in enumerate(picks):
                for c, err in enumerate(table[h]):
                    gain = table[h][current] ** 2 - err**2
                    if gain <= 0:
                        continue
                    extra = layer_cost(layer, [*picks[:h], c, *picks[h + 1 :]], costs, reuse) - before
                    if extra <= left:
                        rate = gain / max(extra, 1e-9)
                        if best is None or rate > best[0]:
                            best = (rate, layer, h, c)
        if best is None:
            return choices
        _, layer, h, c = best
        choices[layer][h] = c


def limit_kept_memory(
    choices: Choices, errors: dict[str, torch.Tensor], costs: dict[str, torch.Tensor], skips: set[int],
    bytes_per_head: dict[str, int], limit: int,
) -> Choices:  # fmt: skip
    """Replace skipped heads until what they keep fits `limit` bytes: each time the replacement
    that adds the least cost per byte freed, by the cheapest candidate that is not a skip and
    whose error is at most the skip's (full attention always is), so quality never drops."""
    choices = {layer: list(picks) for layer, picks in choices.items()}

    def kept() -> int:
        return sum(bytes_per_head[layer] * sum(c in skips for c in picks) for layer, picks in choices.items())

    while kept() > limit:
        best = None
        for layer, picks in choices.items():
            cost, table = costs[layer].tolist(), errors[layer].tolist()
            for h, c in enumerate(picks):
                if c not in skips:
                    continue
                options = [o for o in range(len(cost)) if o not in skips and table[h][o] <= table[h][c]]
                replacement = min(options, key=lambda o, cost=cost: (cost[o], o))
                rate = (cost[replacement] - cost[c]) / bytes_per_head[layer]
                if best is None or rate < best[0]:
                    best = (rate, layer, h, replacement)
        if best is None:
            break
        _, layer, h, replacement = best
        choices[layer][h] = replacement
    return choices
