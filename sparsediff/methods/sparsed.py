"""SparseD: per-head block patterns taken from one dense step's attention, reused afterwards.

Diffusion LMs attend bidirectionally over the whole sequence at every denoising step, and their
heads attend to much the same places from step to step. At the switch step each query block
keeps the KV blocks that received the most attention mass, up to `keep_ratio` of all blocks,
plus the attention sink (the first KV block) and the local band (the aligned diagonal block and
its neighbours); later steps run that plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sparsediff.attention import sparse_attention
from sparsediff.config import SparseConfig
from sparsediff.kernels import expand_kv
from sparsediff.methods.pyramid import topk_plan
from sparsediff.plan import BlockPlan

Tensor = torch.Tensor
SINK_BLOCKS = 1
BAND_BLOCKS = 1  # on each side of the aligned diagonal
_SCORE_BUFFER = 1 << 24  # elements of one chunk of scores


def block_mass_reference(q: Tensor, k: Tensor, scale: float, block: int) -> Tensor:
    """[H, Qb, Kb] attention mass per block, averaged over the batch and the block's query rows."""
    probs = (q.float() @ expand_kv(k, q.shape[1]).float().transpose(-1, -2) * scale).softmax(-1)
    n_q, n_kv = probs.shape[-2:]
    qb, kb = math.ceil(n_q / block), math.ceil(n_kv / block)
    padded = torch.nn.functional.pad(probs, (0, kb * block - n_kv, 0, qb * block - n_q))
    sums = padded.reshape(*probs.shape[:2], qb, block, kb, block).sum((3, 5))
    rows = torch.full((qb,), float(block))
    rows[-1] = n_q - (qb - 1) * block
    return (sums / rows[:, None]).mean(0)


def block_mass(q: Tensor, k: Tensor, scale: float, block: int, value: Tensor | None = None):
    """`block_mass_reference` in chunks of query blocks (bounded memory at long context), in place.

    With `value`, also returns the exact attention output [B, H, N_q, D] from the same
    probabilities, so the step that takes the pattern costs about one dense attention.
    """
    k = expand_kv(k, q.shape[1])
    batch, heads, n_q, _ = q.shape
    n_kv = k.shape[2]
    qb, kb = math.ceil(n_q / block), math.ceil(n_kv / block)
    mass = torch.empty(heads, qb, kb)
    out = None if value is None else torch.empty(*q.shape[:3], value.shape[-1], dtype=q.dtype, device=q.device)
    v = None if value is None else expand_kv(value, q.shape[1])
    chunk_blocks = max(1, _SCORE_BUFFER // (batch * heads * block * n_kv))
    key_t = k.transpose(-1, -2)
    for b0 in range(0, qb, chunk_blocks):
        b1 = min(qb, b0 + chunk_blocks)
        rows = slice(b0 * block, min(n_q, b1 * block))
        probs = _probabilities(q[:, :, rows], key_t, scale)
        if out is not None:
            out[:, :, rows] = (probs @ v.float()).to(out.dtype)
        r = probs.shape[2]
        if r < (b1 - b0) * block:  # short last query block
            probs = torch.nn.functional.pad(probs, (0, 0, 0, (b1 - b0) * block - r))
        per_row_block = probs.view(batch, heads, b1 - b0, block, n_kv).sum(3)  # [B, H, c, N_kv]
        sums = _block_sums(per_row_block, block, n_kv)
        counts = torch.full((b1 - b0,), float(block))
        counts[-1] = r - (b1 - b0 - 1) * block
        mass[:, b0:b1] = (sums / counts[:, None]).mean(0)
        del probs, per_row_block  # freed before the next chunk's scores are allocated
    return mass if value is None else (mass, out)


def _probabilities(q_rows: Tensor, key_t: Tensor, scale: float) -> Tensor:
    """Softmax of `q_rows @ key_t * scale` in float32, computed in place in one score buffer."""
    probs = torch.matmul(q_rows, key_t).float().mul_(scale)
    probs.sub_(probs.amax(-1, keepdim=True)).exp_()
    return probs.div_(probs.sum(-1, keepdim=True))


def _block_sums(probs: Tensor, block: int, n_kv: int) -> Tensor:
    """[..., N_kv] probabilities -> [..., Kb] per KV block (no padded copy of `probs`)."""
    whole = n_kv // block * block
    sums = probs[..., :whole].unflatten(-1, (whole // block, block)).sum(-1)
    return sums if whole == n_kv else torch.cat([sums, probs[..., whole:].sum(-1, keepdim=True)], -1)


def block_mass_rows(q: Tensor, k: Tensor, scale: float, block: int, rows: int) -> Tensor:
    """`block_mass_reference` estimated from `rows` evenly spaced query rows of each query block
    (all rows when `rows` >= block: then it is exact): rows / block of the exact cost, computed in
    chunks of query blocks so that its scores stay within `_SCORE_BUFFER` elements."""
    batch, heads, n_q, _ = q.shape
    n_kv = k.shape[2]
    qb, r = math.ceil(n_q / block), min(rows, block)
    offsets = torch.arange(r) * block // r
    starts = torch.arange(qb)[:, None] * block
    picked = (starts + offsets[None]).clamp(max=n_q - 1).to(q.device)  # [Qb, r]
    real = (starts + offsets[None]) < n_q  # rows past a short last block repeat: weighed out
    weights = (real.float() / real.sum(1, keepdim=True)).to(q.device)
    key_t = expand_kv(k, heads).float().transpose(-1, -2)
    mass = torch.empty(heads, qb, math.ceil(n_kv / block))
    chunk = max(1, _SCORE_BUFFER // (batch * heads * r * n_kv))
    for b0 in range(0, qb, chunk):
        b1 = min(qb, b0 + chunk)
        probs = _probabilities(q[:, :, picked[b0:b1].flatten()].float(), key_t, scale)
        sums = _block_sums(probs, block, n_kv).unflatten(2, (b1 - b0, r))  # [B, H, c, r, Kb]
        mass[:, b0:b1] = (sums * weights[b0:b1, :, None]).sum(3).mean(0).cpu()
        del probs  # freed before the next chunk's scores are allocated: one buffer at a time
    return mass


def block_mass_pooled(q: Tensor, k: Tensor, scale: float, block: int) -> Tensor:
    """`block_mass_reference` estimated from each query block's mean query: 1 / block of the exact cost."""
    n_q, n_kv = q.shape[2], k.shape[2]
    qb = math.ceil(n_q / block)
    padded = torch.nn.functional.pad(q.float(), (0, 0, 0, qb * block - n_q))
    counts = torch.full((qb, 1), float(block), device=q.device)
    counts[-1] = n_q - (qb - 1) * block
    pooled = padded.unflatten(2, (qb, block)).sum(3) / counts  # [B, H, Qb, D]
    probs = (pooled @ expand_kv(k, q.shape[1]).float().transpose(-1, -2) * scale).softmax(-1)
    return _block_sums(probs, block, n_kv).mean(0).cpu()


def forced_blocks(q_blocks: int, kv_blocks: int, n_q: int, n_kv: int, block: int) -> Tensor:
    """[Qb, Kb] the sink and the local band around the aligned diagonal (queries are the last n_q keys)."""
    offset = n_kv - n_q  # DiffusionGemma: keys are the cached prompt, then the canvas the queries are
    centre = (torch.arange(q_blocks) * block + offset) // block
    band = (torch.arange(kv_blocks)[None, :] - centre[:, None]).abs() <= BAND_BLOCKS
    band[:, :SINK_BLOCKS] = True
    return band


def sparsed_plan(mass: Tensor, keep_ratio: float, block: int, n_q: int, n_kv: int) -> BlockPlan:
    """Per head and query block: the top `keep_ratio` KV blocks by mass, the sink and the band always in."""
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    _, q_blocks, kv_blocks = mass.shape
    return topk_plan(mass, keep_ratio, forced_blocks(q_blocks, kv_blocks, n_q, n_kv, block), n_q, n_kv, block)


@dataclass
class SparsedPatterns:
    """SparseD's method state for one model: per layer and shape, the block plan taken from the
    attention of the switch step (computed exactly on that step), reused on every later step and
    retaken every `recompute_every` sparse steps. `reset` when a new sequence starts."""

    config: SparseConfig
    plans: dict = field(default_factory=dict)  # (layer, n_q, n_kv) -> BlockPlan
    pattern_computations: int = 0

    def reset(self) -> None:
        self.plans.clear()

    def pattern_step(self, layer, query: Tensor, key: Tensor, step: int, switch: int) -> bool:
        """Whether a call at `step` takes (or retakes) its layer's plan rather than running it."""
        every = self.config.recompute_every
        recompute = every and step > switch and (step - switch) % every == 0
        return bool(step == switch or recompute or (layer, query.shape[2], key.shape[2]) not in self.plans)

    def attend(self, layer, query: Tensor, key: Tensor, value: Tensor, scale: float | None, step: int, switch: int):
        """(output [B, H, N_q, D], how it was served, density) of one call at or after the switch."""
        batch, heads = query.shape[:2]
        shape = (query.shape[2], key.shape[2])
        plan_key = (layer, *shape)
        q, k, v = sequences_as_heads(query, key, value)
        if self.pattern_step(layer, query, key, step, switch):
            block, estimate = self.config.block_size, self.config.mass
            with torch.no_grad():
                s = q.shape[-1] ** -0.5 if scale is None else scale
                if estimate == "exact":
                    mass, out = block_mass(q, k, s, block, value=v)
                elif estimate == "rows":
                    mass = block_mass_rows(q, k, s, block, self.config.mass_rows)
                else:
                    mass = block_mass_pooled(q, k, s, block)
            plan = self.plans[plan_key] = sparsed_plan(mass, self.config.keep_ratio, block, *shape)
            self.pattern_computations += 1
            if estimate == "exact":
                served, density = "dense: pattern step", 1.0
            else:  # the estimate's share of a dense attention, then the new plan
                out = sparse_attention(q, k, v, plan, self.config.backend, scale=scale)
                cost = min(self.config.mass_rows, block) / block if estimate == "rows" else 1 / block
                served, density = "sparse: pattern step", min(1.0, plan.density + cost)
        else:
            plan = self.plans[plan_key]
            out = sparse_attention(q, k, v, plan, self.config.backend, scale=scale)
            served, density = "sparse", plan.density
        return out.view(batch, heads, *out.shape[2:]), served, density


def sequences_as_heads(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[B, H, N, D] -> [1, B*H, N, D], KV heads repeated to H: every sequence of a batch gets its own
    patterns, as in SparseD (a needle sits in a different block in each sequence)."""
    if query.shape[0] == 1:
        return query, key, value
    return tuple(
        t.reshape(1, -1, *t.shape[2:])
        for t in (query, expand_kv(key, query.shape[1]), expand_kv(value, query.shape[1]))
    )
