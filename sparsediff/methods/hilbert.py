"""Scale-DiT's local windows in Hilbert order with coarse global tokens (training-free form).

Visual tokens are permuted into a generalized Hilbert order (`hilbert`: one 3-D curve through
the video; `hilbert-frame`: a 2-D curve per frame), so a 1-D window of neighbouring positions is
a compact 2-D/3-D region. Each query attends to its window plus coarse global tokens: the
permuted visual sequence mean-pooled in groups of `pool` (compact regions too), every query
seeing all of them, their logits biased by + log(group size). Text is handled by the usual
stripes. `raster-window` is the same with no permutation: the baseline the Hilbert order must
beat. The permutation is applied per attention call (q, k, v in, output back).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from sparsediff.attention import sparse_attention
from sparsediff.layout import TokenLayout
from sparsediff.methods.bank import MASKED, pad_to, padding_bias, pool_blocks
from sparsediff.patterns import Window, build_plan
from sparsediff.plan import BlockPlan

Tensor = torch.Tensor


def coarse_length(layout: TokenLayout, block: int, pool: int) -> int:
    """Coarse tokens, padded to whole blocks."""
    groups = math.ceil(layout.num_visual / pool)
    return math.ceil(groups / block) * block


@lru_cache(maxsize=64)
def local_global_plan(layout: TokenLayout, density: float, block: int, pool: int) -> tuple[BlockPlan, int]:
    """(plan over [sequence | coarse tokens], window radius): the window sized so the total is `density`."""
    n = layout.num_tokens
    coarse = coarse_length(layout, block, pool)
    share = coarse / n
    best = None
    for radius in _radii(layout.num_visual):
        window = build_plan(layout, Window(radius=radius), block)
        gap = abs(window.density + share - density)
        if best is None or gap < best[0]:
            best = (gap, window, radius)
        if window.density + share >= density:
            break
    _, window, radius = best
    mask = window.to_dense_mask()
    sequence_blocks = mask.shape[-1]
    padded = sequence_blocks * block
    full = torch.ones(*mask.shape[:2], coarse // block, dtype=torch.bool)
    plan = BlockPlan.from_block_mask(torch.cat([mask, full], -1), block, seq_len=(n, padded + coarse))
    return plan, radius


def _radii(limit: int):
    r = 0
    while r < limit:
        yield r
        r = r + 1 if r < 16 else int(r * 1.25)


def local_global_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout, density: float, block: int, backend: str, scale: float,
    order: str = "hilbert-frame", pool: int = 16,
) -> tuple[Tensor, float]:  # fmt: skip
    """(output in raster order, density = computed / dense attention FLOPs)."""
    layout.check_length(q.shape[2])
    ordered = layout.to_order(order)
    qp, kp, vp = (ordered.permute(t) for t in (q, k, v))
    plan, _ = local_global_plan(ordered, density, block, pool)
    n = q.shape[2]
    padded = math.ceil(n / block) * block
    visual = ordered.visual_slice
    n_visual = ordered.num_visual
    groups = math.ceil(n_visual / pool) * pool
    coarse_k, coarse_bias = pool_blocks(pad_to(kp[:, :, visual], groups), n_visual, pool)
    coarse_v, _ = pool_blocks(pad_to(vp[:, :, visual], groups), n_visual, pool)
    coarse = plan.seq_len_kv - padded
    bias = torch.cat([
        padding_bias(n, padded, q.device, coarse_bias.dtype),
        torch.nn.functional.pad(coarse_bias, (0, coarse - coarse_bias.shape[0]), value=MASKED),
    ]).to(q.dtype)  # fmt: skip
    bank_k = torch.cat([pad_to(kp, padded), pad_to(coarse_k, coarse)], 2)
    bank_v = torch.cat([pad_to(vp, padded), pad_to(coarse_v, coarse)], 2)
    out = sparse_attention(qp, bank_k, bank_v, plan, backend, scale=scale, key_bias=bias)
    return ordered.unpermute(out), plan.density * plan.seq_len_kv / padded  # vs dense over whole blocks
