"""Attention kernels over per-(head, query block) KV block lists.

Every kernel has the same signature and knows nothing about models or plans:

    kernel(q, k, v, kv_indices, kv_counts, block_q, block_kv, scale, cache, key_bias=None) -> out

q [B, H, N_q, D]; k, v [B, H_kv, N_kv, D] with H % H_kv == 0 (grouped-query attention);
kv_indices [H, Qb, K] int32 and kv_counts [H, Qb] int32 on q's device; `cache` is a dict
owned by the caller's plan where a kernel may keep index structures derived from the lists;
`key_bias` [N_kv] (q's dtype) is added to every logit of its key (pooled keys' log-size bias).
Query rows whose block has no KV block produce zeros. `block_sparse_attention_ref` defines
correct; the others must match it.
"""

from .flex import block_sparse_attention_flex
from .gather import block_sparse_attention_gather
from .reference import block_sparse_attention_ref, expand_kv

TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)  # tl.dot needs a power of two >= 16


def triton_refuses(head_dim: int, block_q: int, block_kv: int) -> str | None:
    """Why the Triton kernel cannot take these shapes, or None; here so that choosing a backend
    never imports triton."""
    if head_dim not in TRITON_HEAD_DIMS:
        return f"the triton backend takes head dims {TRITON_HEAD_DIMS}, got {head_dim}; use backend 'torch' or 'flex'"
    if min(block_q, block_kv) < 16 or block_q & (block_q - 1) or block_kv & (block_kv - 1):
        return f"the triton backend takes power-of-two blocks >= 16 tokens, got ({block_q}, {block_kv})"
    return None


__all__ = [
    "TRITON_HEAD_DIMS",
    "block_sparse_attention_flex",
    "block_sparse_attention_gather",
    "block_sparse_attention_ref",
    "expand_kv",
    "triton_refuses",
]
