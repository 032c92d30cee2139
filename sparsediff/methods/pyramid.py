"""PSA (pyramid pooled KV) and its binary baseline, block top-k, from the same pooled scores.

Per attention call, queries and keys are mean-pooled per block; softmax over the pooled scores
estimates each (query block, KV block) pair's attention mass. `topk` keeps the heaviest blocks
(a binary mask). `pyramid` gives every pair a level instead: full, keys pooled by 2, 4 or 8 (so
1/2, 1/4, 1/8 of the cost), or dropped, choosing levels greedily by mass gained per unit of cost
under the budget. A level keeps FIDELITY of a block's mass faithfully (full 1, /2 0.75, /4 0.5,
/8 0.25: a modelling choice, stated here); the incremental gains are equal, so cheap coarse
levels spread first and the heaviest blocks are refined. Text blocks and each query block's own
diagonal block stay full. The pooled pyramid (K/V pooled by 2, 4, 8 inside each block) is
built once per call and shared by all heads; the levels form one KV bank whose blocks are 1/8
of a query block, so a level assignment is a block mask over the bank.
"""

from __future__ import annotations

import math

import torch

from sparsediff.attention import sparse_attention
from sparsediff.kernels import expand_kv
from sparsediff.layout import TokenLayout
from sparsediff.methods.bank import count_bias, group_counts, pad_to, padding_bias, pool_blocks
from sparsediff.plan import BlockPlan

Tensor = torch.Tensor
POOLS = (2, 4, 8)
STEP_GAIN = 0.25  # mass share each refinement adds: drop -> /8 -> /4 -> /2 -> full
STEP_COST = (1 / 8, 1 / 8, 1 / 4, 1 / 2)  # block cost each refinement adds


def pooled_mass(q: Tensor, k: Tensor, block: int, scale: float) -> Tensor:
    """[H, Qb, Kb] estimated attention mass from block-mean queries and keys (batch averaged)."""
    k = expand_kv(k, q.shape[1])
    n_q, n_kv = q.shape[2], k.shape[2]
    qb, kb = math.ceil(n_q / block), math.ceil(n_kv / block)
    qp, _ = pool_blocks(pad_to(q, qb * block), n_q, block)
    kp, log_count = pool_blocks(pad_to(k, kb * block), n_kv, block)
    scores = (qp.float() @ kp.float().transpose(-1, -2)) * scale + log_count.float()
    return scores.softmax(-1).mean(0)


def forced_full(layout: TokenLayout, block: int) -> Tensor:
    """[Qb, Kb] blocks that always compute in full: text keys, text queries, the diagonal."""
    n = layout.num_tokens
    blocks = math.ceil(n / block)
    text = torch.nn.functional.pad(layout.is_text, (0, blocks * block - n)).view(blocks, block).any(-1)
    return torch.eye(blocks, dtype=torch.bool) | text[None, :] | text[:, None]


def assign_levels(mass: Tensor, budget: float, forced: Tensor) -> Tensor:
    """[H, Qb, Kb] level per pair: 0 dropped, 1 pooled by 8, 2 by 4, 3 by 2, 4 full."""
    heads, q_blocks, kv_blocks = mass.shape
    cost = torch.tensor(STEP_COST)
    value = mass[..., None] * (STEP_GAIN / cost)  # [H, Qb, Kb, 4], non-increasing along the last dim
    value = value.masked_fill(forced[None, :, :, None], -1.0)  # forced blocks are already full
    spare = budget * kv_blocks - forced.sum(-1).float()  # [Qb] block units left per row
    flat = value.reshape(heads, q_blocks, kv_blocks * 4)
    order = flat.argsort(dim=-1, descending=True, stable=True)  # a block's steps stay in order
    step_cost = cost.repeat(kv_blocks)[order]
    taken = (step_cost.cumsum(-1) <= spare[None, :, None]) & (flat.gather(-1, order) > 0)
    chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, order, taken)
    levels = chosen.view(heads, q_blocks, kv_blocks, 4).sum(-1)
    return torch.where(forced[None], 4, levels)


def pyramid_bank_plan(levels: Tensor, block: int, n_q: int, n_kv: int) -> BlockPlan:
    """The plan over the bank [full | /2 | /4 | /8] with bank blocks of block / 8 tokens."""
    parts = [(levels == 4).repeat_interleave(8, -1)]
    for pool, level in zip(POOLS, (3, 2, 1), strict=True):
        parts.append((levels == level).repeat_interleave(8 // pool, -1))
    kv_blocks = math.ceil(n_kv / block)
    bank_len = kv_blocks * block * 15 // 8
    return BlockPlan.from_block_mask(torch.cat(parts, -1), (block, block // 8), seq_len=(n_q, bank_len))


def pyramid_bank(k: Tensor, v: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """(keys, values, bias) of the bank: the padded keys, then each pooled level.

    Written in place, each level summed from the one below (POOLS double), so building the bank
    reads 1.75x the keys instead of 3x plus a concatenation (8 -> 5 ms per call at batch 2, 4
    heads, 4,104 tokens); `pool_blocks` of the padded keys is the definition the tests check.
    """
    n = k.shape[2]
    padded = math.ceil(n / block) * block
    counts = [group_counts(padded, n, pool, k.device, k.dtype) for pool in POOLS]
    bias = torch.cat([padding_bias(n, padded, k.device, k.dtype), *map(count_bias, counts)])
    return _bank(k, n, padded, counts), _bank(v, n, padded, counts), bias


def _bank(x: Tensor, n: int, padded: int, counts: list[Tensor]) -> Tensor:
    out = x.new_zeros(*x.shape[:2], padded + sum(len(c) for c in counts), x.shape[-1])
    out[:, :, :n] = x
    sums, start = out[:, :, :padded], padded
    for c in counts:
        sums = sums.unflatten(2, (len(c), -1)).sum(3)  # the level below, pairwise
        torch.div(sums, c.clamp_min(1)[:, None], out=out[:, :, start : start + len(c)])
        start += len(c)
    return out


def _check(layout: TokenLayout, q: Tensor, block: int) -> None:
    layout.check_length(q.shape[2])
    if block % 8:
        raise ValueError(f"pyramid needs a block size divisible by 8 (pooling by 8 inside a block), got {block}")


def pyramid_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout, budget: float, block: int, backend: str, scale: float
) -> tuple[Tensor, float]:
    """(output, density = computed / dense attention FLOPs, whole blocks counted)."""
    _check(layout, q, block)
    levels = assign_levels(pooled_mass(q, k, block, scale), budget, forced_full(layout, block))
    plan = pyramid_bank_plan(levels, block, q.shape[2], k.shape[2])
    bank_k, bank_v, bias = pyramid_bank(k, v, block)
    out = sparse_attention(q, bank_k, bank_v, plan, backend, scale=scale, key_bias=bias)
    return out, plan.density * plan.seq_len_kv / bank_k.shape[2] * 15 / 8  # vs dense over the padded keys


def topk_plan(mass: Tensor, density: float, forced: Tensor, n_q: int, n_kv: int, block: int) -> BlockPlan:
    """Per head and query block the heaviest `density` of KV blocks by mass; `forced` [Qb, Kb] always in."""
    kv_blocks = mass.shape[-1]
    keep = min(math.ceil(density * kv_blocks), kv_blocks)  # forced blocks count first, and always stay
    ranked = torch.where(forced[None], torch.inf, mass)
    top = ranked.topk(keep, -1).indices
    mask = torch.zeros_like(mass, dtype=torch.bool).scatter_(-1, top, True) | forced[None]
    return BlockPlan.from_block_mask(mask, block, seq_len=(n_q, n_kv))


def topk_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout, density: float, block: int, backend: str, scale: float
) -> tuple[Tensor, float]:
    """Binary block top-k from the pooled scores: the baseline `pyramid` must beat."""
    layout.check_length(q.shape[2])
    plan = topk_plan(
        pooled_mass(q, k, block, scale), density, forced_full(layout, block), q.shape[2], k.shape[2], block
    )
    return sparse_attention(q, k, v, plan, backend, scale=scale), plan.density
