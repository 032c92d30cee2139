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

__all__ = ["block_sparse_attention_flex", "block_sparse_attention_gather", "block_sparse_attention_ref", "expand_kv"]
