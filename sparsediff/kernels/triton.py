"""Block-sparse flash attention in Triton: one program per (query block, batch x head).

Each program loads its query block once, walks the block's KV-block list (`kv_indices[h, qb,
:kv_counts[h, qb]]`, as a `BlockPlan` holds it) and keeps an online softmax in fp32 (running
max, running sum, rescaled accumulator), so it reads each kept K/V block once and never
materializes scores beyond one block pair. Every head of every head group runs in the one launch.
Grouped-query attention maps head h to KV head h // (H / H_kv); `key_bias` adds one logit per key
(pooled keys' log-size bias); ragged tails are masked; rows of a block with no KV block are zeros.

Runs on CUDA, and on the CPU under the Triton interpreter (`TRITON_INTERPRET=1`, set before
triton is imported), which is how the tests check it against the reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor
HEAD_DIMS = (16, 32, 64, 128, 256)  # tl.dot needs a power of two >= 16


@triton.jit
def _block_sparse_forward(
    Q, K, V, Out, KV_INDICES, KV_COUNTS, KEY_BIAS,
    scale, n_q, n_kv, heads, group,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
    sih, siq, sik, sch, scq,
    BLOCK_Q: tl.constexpr, BLOCK_KV: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr,
    FP32_DOT: tl.constexpr,
):  # fmt: skip
    q_block = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // heads
    h = batch_head % heads
    h_kv = h // group
    rows = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < n_q
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=row_ok[:, None], other=0.0)
    running_max = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
    count = tl.load(KV_COUNTS + h * sch + q_block * scq)
    for j in range(0, count):
        kv_block = tl.load(KV_INDICES + h * sih + q_block * siq + j * sik)
        cols = kv_block * BLOCK_KV + tl.arange(0, BLOCK_KV)
        col_ok = cols < n_kv
        k = tl.load(K + b * skb + h_kv * skh + cols[None, :] * skn + dims[:, None] * skd, mask=col_ok[None, :],
                    other=0.0)  # fmt: skip
        if FP32_DOT:
            scores = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee") * scale
        else:
            scores = tl.dot(q, k) * scale
        if HAS_BIAS:
            scores += tl.load(KEY_BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        scores = tl.where(col_ok[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, 1))
        probs = tl.exp(scores - new_max[:, None])
        rescale = tl.exp(running_max - new_max)
        running_sum = running_sum * rescale + tl.sum(probs, 1)
        v = tl.load(V + b * svb + h_kv * svh + cols[:, None] * svn + dims[None, :] * svd, mask=col_ok[:, None],
                    other=0.0)  # fmt: skip
        if FP32_DOT:
            acc = acc * rescale[:, None] + tl.dot(probs, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v)
        running_max = new_max
    out = acc / tl.where(running_sum > 0, running_sum, 1.0)[:, None]  # a row with no block: acc is 0
    tl.store(Out + b * sob + h * soh + rows[:, None] * son + dims[None, :] * sod, out.to(Out.dtype.element_ty),
             mask=row_ok[:, None])  # fmt: skip


def _interpreting() -> bool:
    """Under the interpreter bf16 `tl.dot` is wrong (numpy has no bf16; measured: errors of 1e10 on
    a 16 x 16 product), so bf16 operands are multiplied in fp32 there; on a GPU they are not."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def block_sparse_attention_triton(
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
    """The kernel signature of `sparsediff.kernels` (see its docstring); fp32, fp16 and bf16."""
    batch, heads, n_q, dim = q.shape
    if dim not in HEAD_DIMS:
        raise ValueError(f"the triton backend takes head dims {HEAD_DIMS}, got {dim}; use backend 'torch' or 'flex'")
    if block_q < 16 or block_kv < 16 or block_q & (block_q - 1) or block_kv & (block_kv - 1):
        raise ValueError(f"the triton backend takes power-of-two blocks >= 16 tokens, got ({block_q}, {block_kv})")
    out = torch.empty_like(q)
    indices = kv_indices.to(torch.int32)
    counts = kv_counts.to(torch.int32)
    bias = key_bias if key_bias is not None else q.new_zeros(1)
    grid = (triton.cdiv(n_q, block_q), batch * heads)
    _block_sparse_forward[grid](
        q, k, v, out, indices, counts, bias,
        scale, n_q, k.shape[2], heads, heads // k.shape[1],
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        *indices.stride(), *counts.stride(),
        BLOCK_Q=block_q, BLOCK_KV=block_kv, HEAD_DIM=dim, HAS_BIAS=key_bias is not None,
        FP32_DOT=q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and _interpreting()),
    )  # fmt: skip
    return out
