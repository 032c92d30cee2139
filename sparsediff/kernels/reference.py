"""Reference: dense attention under the token mask the block lists expand to.

Slow (materializes N_q x N_kv) and exact; the definition every other kernel is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def expand_kv(t: Tensor, heads: int) -> Tensor:
    """K or V [B, H_kv, N, D] with each head repeated to `heads` (grouped-query attention)."""
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], 1)


def expand_block_lists(
    kv_indices: Tensor, kv_counts: Tensor, block_q: int, block_kv: int, n_q: int, n_kv: int
) -> Tensor:
    """[H, N_q, N_kv] bool token mask of per-row KV block lists."""
    heads, q_blocks, width = kv_indices.shape
    kv_blocks = -(-n_kv // block_kv)
    used = torch.arange(width, device=kv_indices.device) < kv_counts[..., None]
    blocks = torch.zeros(heads, q_blocks, kv_blocks + 1, dtype=torch.bool, device=kv_indices.device)
    blocks.scatter_(-1, torch.where(used, kv_indices.long(), kv_blocks), True)
    blocks = blocks[..., :kv_blocks].repeat_interleave(block_q, 1)[:, :n_q]
    return blocks.repeat_interleave(block_kv, 2)[:, :, :n_kv]


def block_sparse_attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_indices: Tensor,
    kv_counts: Tensor,
    block_q: int,
    block_kv: int,
    scale: float,
    cache: dict | None = None,
    key_bias: Tensor | None = None,
) -> Tensor:
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    mask = expand_block_lists(kv_indices, kv_counts, block_q, block_kv, q.shape[2], k.shape[2])
    attn_mask = mask[None] if key_bias is None else key_bias.masked_fill(~mask, float("-inf"))[None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    # SDPA gives NaN for a row with no allowed key; the contract is zeros.
    empty = ~mask.any(-1)  # [H, N_q]
    return out.masked_fill(empty[None, :, :, None], 0.0)
