"""A cost model calibrated on the device: a plan's predicted milliseconds.

    ms(plan) = per_block_pair * computed (head, query block, KV block) pairs
             + per_group * head groups (launches of a fused kernel)
             + fixed

fitted by least squares to timings of the chosen backend on random plans of several densities
and head groupings at the model's own sequence length and batch (the batch matters: at batch 2
a Hilbert-window call took 2.1x its batch-1 time, a pyramid call 1.55x); `dense_ms` is SDPA on the same
inputs. Per-call head patterns (`Pyramid`, `HilbertWindow`) have no static plan to count:
`per_call_ms` holds each one's measured time per call (all heads) on the model's layout, keyed
by `str(pattern)`.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from sparsediff.attention import resolve_backend, sparse_attention
from sparsediff.layout import TokenLayout
from sparsediff.methods import per_call_heads
from sparsediff.patterns import Pattern, Pyramid
from sparsediff.plan import BlockPlan

DENSITIES = (0.1, 0.25, 0.5, 0.75)


class CostModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    device: str
    tokens: int
    batch: int = 1
    heads: int
    head_dim: int
    block_size: int
    kv_block_size: int | None = None  # KV blocks of the timed plans, when not block_size
    per_block_pair_ms: float
    per_group_ms: float
    fixed_ms: float
    dense_ms: float
    per_call_ms: dict[str, float] = {}  # str(per-call pattern) -> ms per call, all heads
    # attention layer -> its processor's time outside attention (projections, norms) over its
    # dense attention time, from the search's dense runs: what a layer reused whole spares
    outside_ratio: dict[str, float] = {}

    @model_validator(mode="before")
    @classmethod
    def _read_pyramid_ms(cls, data):
        """Cost models saved before `per_call_ms` timed only pyramids, keyed by budget."""
        if isinstance(data, dict) and "pyramid_ms" in data:
            data = dict(data)
            old = data.pop("pyramid_ms")
            data["per_call_ms"] = {str(Pyramid(budget=float(b))): ms for b, ms in old.items()} | data.get(
                "per_call_ms", {}
            )
        return data

    @property
    def plan_blocks(self) -> tuple[int, int]:
        """(query, KV) block sizes of the plans it was fitted on."""
        return self.block_size, self.kv_block_size or self.block_size

    def predict_ms(self, pairs: float, groups: int) -> float:
        return self.per_block_pair_ms * pairs + self.per_group_ms * groups + self.fixed_ms

    def with_per_call(self, patterns, layout: TokenLayout | None = None, repeat: int = 3, seed: int = 0) -> CostModel:
        """This model plus timings of the per-call `patterns` it lacks (measured now, on its device,
        on `layout`: by default a flat one of its length)."""
        missing = [p for p in dict.fromkeys(patterns) if str(p) not in self.per_call_ms]
        if not missing:
            return self
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(self.batch, self.heads, self.tokens, self.head_dim, generator=gen).to(self.device)
                   for _ in range(3))  # fmt: skip
        timed = _per_call_ms(q, k, v, missing, self.block_size, self.backend, repeat, layout)
        return self.model_copy(update={"per_call_ms": self.per_call_ms | timed})

    def with_outside_ratios(self, measured: dict[str, list[float]]) -> CostModel:
        """This model plus the median of `measured` ratios for layers it has none for (a reused model
        keeps its own, so the same inputs give the same search)."""
        missing = {n: statistics.median(r) for n, r in measured.items() if r and n not in self.outside_ratio}
        return self.model_copy(update={"outside_ratio": self.outside_ratio | missing}) if missing else self


def _per_call_ms(q, k, v, patterns, block_size: int, backend: str, repeat: int, layout=None) -> dict[str, float]:
    layout = layout or TokenLayout(frames=1, height=1, width=q.shape[2])
    layout.check_length(q.shape[2])
    scale = q.shape[-1] ** -0.5
    return {
        str(p): _median_ms(lambda p=p: per_call_heads(p, q, k, v, layout, block_size, backend, scale), repeat)
        for p in patterns
    }


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _random_plan(
    n: int, heads: int, blocks: tuple[int, int], density: float, groups: int, gen: torch.Generator
) -> BlockPlan:
    q_blocks, kv_blocks = (math.ceil(n / b) for b in blocks)
    per_group = [torch.rand(q_blocks, kv_blocks, generator=gen) < density for _ in range(groups)]
    mask = torch.stack([per_group[h % groups] for h in range(heads)])
    mask[:, torch.arange(q_blocks), torch.arange(q_blocks) * kv_blocks // q_blocks] = True  # no empty rows
    return BlockPlan.from_block_mask(mask, blocks, seq_len=n)


@torch.no_grad()
def measure(
    tokens: int, heads: int, head_dim: int, block_size: int = 64, backend: str = "auto", device: str = "cpu",
    dtype: torch.dtype = torch.float32, repeat: int = 3, seed: int = 0, per_call: tuple[Pattern, ...] = (),
    kv_block_size: int | None = None, batch: int = 1, layout: TokenLayout | None = None,
) -> CostModel:  # fmt: skip
    """Time the backend on random plans at this size and batch and fit the model (a few seconds at
    8k tokens); time each per-call head pattern of `per_call` on the same inputs, on `layout` (by
    default a flat one). Plans use query blocks of `block_size` and KV blocks of `kv_block_size`
    (default: the same); per-call patterns plan their own blocks of `block_size`."""
    blocks = (block_size, kv_block_size or block_size)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    dense_ms = _median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), repeat)
    chosen = resolve_backend(backend, torch.device(device)).name
    rows, times = [], []
    for density in DENSITIES:
        for groups in sorted({1, heads}):
            plan = _random_plan(tokens, heads, blocks, density, groups, gen)
            ms = _median_ms(lambda plan=plan: sparse_attention(q, k, v, plan, chosen), repeat)
            rows.append([float(plan.kv_counts.sum()), float(len(plan.head_groups)), 1.0])
            times.append(ms)
    solution = torch.linalg.lstsq(
        torch.tensor(rows, dtype=torch.float64), torch.tensor(times, dtype=torch.float64)[:, None]
    )
    per_pair, per_group, fixed = (float(x) for x in solution.solution[:, 0])
    return CostModel(
        backend=chosen, device=device, tokens=tokens, batch=batch, heads=heads, head_dim=head_dim,
        block_size=block_size, kv_block_size=kv_block_size,
        per_block_pair_ms=max(per_pair, 1e-9), per_group_ms=max(per_group, 0.0), fixed_ms=max(fixed, 0.0),
        dense_ms=dense_ms, per_call_ms=_per_call_ms(q, k, v, per_call, block_size, chosen, repeat, layout),
    )  # fmt: skip
