"""FlexAttention backend: the block lists become a BlockMask of full blocks.

All listed blocks are marked "full", so no mask_mod runs inside blocks; FlexAttention masks the
padding past the sequence length itself. Under `torch.compile` (Inductor, CPU or GPU) empty
blocks are skipped; eager FlexAttention computes densely and is only useful for tests.
Compilation happens once per shape (12 s first, about 6 s per new length on 2 CPU cores);
the BlockMask is cached in the plan's cache, so a 50-step generation pays for it once.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def block_mask_from_lists(kv_indices: Tensor, kv_counts: Tensor, block_q: int, block_kv: int, n_q: int, n_kv: int):
    from torch.nn.attention.flex_attention import BlockMask

    counts = kv_counts[None].to(torch.int32)
    # FlexAttention reads the number of KV blocks from the index width: pad to all blocks.
    kv_blocks = -(-n_kv // block_kv)
    indices = F.pad(kv_indices, (0, kv_blocks - kv_indices.shape[-1]))[None].to(torch.int32)
    return BlockMask.from_kv_blocks(
        torch.zeros_like(counts),
        torch.zeros_like(indices),
        counts,
        indices,
        BLOCK_SIZE=(block_q, block_kv),
        seq_lengths=(n_q, n_kv),
    )


def block_sparse_attention_flex(
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
    compile: bool = True,
) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    cache = {} if cache is None else cache
    key = ("flex_block_mask", q.device, q.shape[2], k.shape[2])
    if key not in cache:
        cache[key] = block_mask_from_lists(kv_indices, kv_counts, block_q, block_kv, q.shape[2], k.shape[2])
    fn = _compiled_flex() if compile else flex_attention
    gqa = q.shape[1] != k.shape[1]
    score_mod = None if key_bias is None else _add_key_bias(key_bias)
    return fn(q, k, v, score_mod=score_mod, block_mask=cache[key], scale=scale, enable_gqa=gqa)


def _add_key_bias(key_bias: Tensor):
    def score_mod(score, batch, head, q_idx, kv_idx):
        return score + key_bias[kv_idx]

    return score_mod
