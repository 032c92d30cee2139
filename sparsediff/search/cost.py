"""A cost model calibrated on the device: a plan's predicted milliseconds.

    ms(plan) = per_block_pair * computed (head, query block, KV block) pairs
             + per_group * head groups (launches of a fused kernel)
             + fixed

fitted by least squares to timings of the chosen backend on random plans of several densities
and head groupings at the model's own layout size; `dense_ms` is SDPA on the same inputs.
Per-call methods have no static plan to count: `pyramid_ms` holds PSA's measured time per call
(all heads) at each budget the search offers.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from pydantic import BaseModel, ConfigDict

from sparsediff.attention import resolve_backend, sparse_attention
from sparsediff.layout import TokenLayout
from sparsediff.methods.pyramid import pyramid_attention
from sparsediff.plan import BlockPlan

DENSITIES = (0.1, 0.25, 0.5, 0.75)


class CostModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    device: str
    tokens: int
    heads: int
    head_dim: int
    block_size: int
    per_block_pair_ms: float
    per_group_ms: float
    fixed_ms: float
    dense_ms: float
    pyramid_ms: dict[str, float] = {}  # budget (as written by `budget_key`) -> ms per call, all heads

    def predict_ms(self, pairs: float, groups: int) -> float:
        return self.per_block_pair_ms * pairs + self.per_group_ms * groups + self.fixed_ms


def budget_key(budget: float) -> str:
    return f"{budget:g}"


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _random_plan(n: int, heads: int, block: int, density: float, groups: int, gen: torch.Generator) -> BlockPlan:
    blocks = math.ceil(n / block)
    per_group = [torch.rand(blocks, blocks, generator=gen) < density for _ in range(groups)]
    masks = [per_group[h % groups] for h in range(heads)]
    mask = torch.stack(masks)
    mask |= torch.eye(blocks, dtype=torch.bool)  # no empty rows
    return BlockPlan.from_block_mask(mask, block, seq_len=n)


@torch.no_grad()
def measure(
    tokens: int, heads: int, head_dim: int, block_size: int = 64, backend: str = "auto", device: str = "cpu",
    dtype: torch.dtype = torch.float32, repeat: int = 3, seed: int = 0, pyramid_budgets: tuple[float, ...] = (),
) -> CostModel:  # fmt: skip
    """Time the backend on random plans at this size and fit the model (a few seconds at 8k tokens);
    time PSA at each of `pyramid_budgets` on the same inputs."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, tokens, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    dense_ms = _median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), repeat)
    chosen = resolve_backend(backend, torch.device(device)).name
    rows, times = [], []
    for density in DENSITIES:
        for groups in sorted({1, heads}):
            plan = _random_plan(tokens, heads, block_size, density, groups, gen)
            ms = _median_ms(lambda plan=plan: sparse_attention(q, k, v, plan, chosen), repeat)
            rows.append([float(plan.kv_counts.sum()), float(len(plan.head_groups)), 1.0])
            times.append(ms)
    solution = torch.linalg.lstsq(
        torch.tensor(rows, dtype=torch.float64), torch.tensor(times, dtype=torch.float64)[:, None]
    )
    per_pair, per_group, fixed = (float(x) for x in solution.solution[:, 0])
    flat = TokenLayout(frames=1, height=1, width=tokens)
    pyramid_ms = {
        budget_key(b): _median_ms(
            lambda b=b: pyramid_attention(q, k, v, flat, b, block_size, chosen, head_dim**-0.5), repeat
        )
        for b in pyramid_budgets
    }
    return CostModel(
        backend=chosen, device=device, tokens=tokens, heads=heads, head_dim=head_dim, block_size=block_size,
        per_block_pair_ms=max(per_pair, 1e-9), per_group_ms=max(per_group, 0.0), fixed_ms=max(fixed, 0.0),
        dense_ms=dense_ms, pyramid_ms=pyramid_ms,
    )  # fmt: skip
