"""Block-sparse flash attention in Triton: one program per (query tile, batch x head).

A program loads its query tile (`BLOCK_M` rows inside one of the plan's query blocks) once, walks
that block's KV-block list (`kv_indices[h, qb, :kv_counts[h, qb]]`, as a `BlockPlan` holds it) in
`BLOCK_N`-key tiles and keeps an online softmax in fp32 (running max, running sum, rescaled
accumulator), so it reads each kept K/V block once per tile and never materializes scores beyond
one tile pair. Every head of every head group runs in the one launch. Grouped-query attention maps
head h to KV head h // (H / H_kv); `key_bias` adds one logit per key (pooled keys' log-size bias,
so the pyramid and Hilbert methods run here too); ragged tails are masked; rows of a block with no
KV block are zeros.

On a GPU the tile (`BLOCK_M`, `BLOCK_N`, `num_warps`, `num_stages`) is autotuned once per head
dim, dtype, plan block sizes, density class and length class (`triton.autotune`, its results kept
on disk by Triton's cache), and the kernel launches on q's device. Under the Triton interpreter
(`TRITON_INTERPRET=1`, set before triton is imported: how the tests run it on the CPU) nothing is
timed: the largest tile that fits runs, or the one a caller names.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sparsediff.kernels import triton_refuses

Tensor = torch.Tensor


@dataclass(frozen=True)
class Tile:
    """One launch configuration: query rows and keys per inner step, warps, software-pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    def fitted(self, plan_q: int, plan_kv: int, head_dim: int) -> Tile:
        """This tile inside the plan's blocks (powers of two, so the smaller divides the larger);
        at head dim 256 the KV tile stays at 64 keys to fit shared memory."""
        block_n = min(self.block_n, plan_kv, 64 if head_dim > 128 else self.block_n)
        return Tile(min(self.block_m, plan_q), block_n, self.num_warps, self.num_stages)


# What the autotuner tries on a GPU: flash attention's usual Hopper/Ampere tiles, 128-query tiles
# with 8 warps where a plan's query blocks are that large.
GPU_TILES = (
    Tile(64, 64, 4, 3),
    Tile(64, 128, 4, 3),
    Tile(128, 64, 8, 3),
    Tile(128, 128, 8, 3),
    Tile(128, 64, 4, 2),
    Tile(128, 32, 4, 3),
    Tile(64, 32, 4, 2),
    Tile(128, 128, 8, 2),
)


def candidate_tiles(plan_q: int, plan_kv: int, head_dim: int) -> list[Tile]:
    """The GPU tiles fitted to a plan, without repeats, in GPU_TILES' order."""
    return list(dict.fromkeys(t.fitted(plan_q, plan_kv, head_dim) for t in GPU_TILES))


def density_class(kv_counts: Tensor, n_kv_blocks: int) -> int:
    """Plans within a factor of two of density share a tuned tile: -round(log2(density))."""
    density = float(kv_counts.float().mean()) / max(n_kv_blocks, 1)
    return -round(math.log2(density)) if density > 0 else 99


@triton.jit(do_not_specialize=["DENSITY_CLASS", "LENGTH_CLASS"])
def _block_sparse_forward(
    Q, K, V, Out, KV_INDICES, KV_COUNTS, KEY_BIAS,
    scale, n_q, n_kv, heads, group,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
    sih, siq, sik, sch, scq,
    DENSITY_CLASS, LENGTH_CLASS,
    PLAN_Q: tl.constexpr, PLAN_KV: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr,
    FP32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // heads
    h = batch_head % heads
    h_kv = h // group
    q_block = (tile * BLOCK_M) // PLAN_Q  # BLOCK_M divides PLAN_Q: a tile lies in one plan block
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < n_q
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=row_ok[:, None], other=0.0)
    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    count = tl.load(KV_COUNTS + h * sch + q_block * scq)
    for j in range(0, count):
        kv_block = tl.load(KV_INDICES + h * sih + q_block * siq + j * sik)
        for start in tl.static_range(0, PLAN_KV, BLOCK_N):
            cols = kv_block * PLAN_KV + start + tl.arange(0, BLOCK_N)
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
            # A tile past the sequence's end leaves the max at -inf: exp(-inf - -inf) would be nan.
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            probs = tl.exp(scores - safe_max[:, None])
            rescale = tl.exp(running_max - safe_max)
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


def _prune(configs, named_args, **kwargs):
    """The autotuner's candidates for this call: GPU_TILES fitted to the plan's blocks."""
    tiles = candidate_tiles(kwargs["PLAN_Q"], kwargs["PLAN_KV"], kwargs["HEAD_DIM"])
    return [
        triton.Config({"BLOCK_M": t.block_m, "BLOCK_N": t.block_n}, num_warps=t.num_warps, num_stages=t.num_stages)
        for t in tiles
    ]


_tuned_forward = triton.autotune(
    configs=[triton.Config({"BLOCK_M": t.block_m, "BLOCK_N": t.block_n}) for t in GPU_TILES],
    key=["HEAD_DIM", "PLAN_Q", "PLAN_KV", "DENSITY_CLASS", "LENGTH_CLASS"],  # and every tensor's dtype
    prune_configs_by={"early_config_prune": _prune},
    cache_results=True,
)(_block_sparse_forward)


def _interpreting() -> bool:
    """Under the interpreter bf16 `tl.dot` is wrong (numpy has no bf16; measured: errors of 1e10 on
    a 16 x 16 product), so bf16 operands are multiplied in fp32 there; on a GPU they are not."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _plan_arguments(kv_indices: Tensor, kv_counts: Tensor, n_kv_blocks: int, cache: dict | None):
    """int32 block lists and the density class, derived once per plan (the class reads the counts
    back from the device) and kept in the plan's cache."""
    key = ("triton", kv_indices.data_ptr(), kv_counts.data_ptr())
    if cache is not None and key in cache:
        return cache[key]
    found = (kv_indices.to(torch.int32), kv_counts.to(torch.int32), density_class(kv_counts, n_kv_blocks))
    if cache is not None:
        cache[key] = found
    return found


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
    tile: Tile | None = None,
) -> Tensor:
    """The kernel signature of `sparsediff.kernels` (see its docstring); fp32, fp16 and bf16.
    `tile` fixes the launch configuration instead of the autotuned one (fitted to the plan)."""
    batch, heads, n_q, dim = q.shape
    problem = triton_refuses(dim, block_q, block_kv)
    if problem:
        raise ValueError(problem)
    n_kv = k.shape[2]
    indices, counts, density = _plan_arguments(kv_indices, kv_counts, triton.cdiv(n_kv, block_kv), cache)
    out = torch.empty_like(q)
    bias = key_bias if key_bias is not None else q.new_zeros(1)
    arguments = (
        q, k, v, out, indices, counts, bias,
        scale, n_q, n_kv, heads, heads // k.shape[1],
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *indices.stride(), *counts.stride(),
        density, max(n_q, 1).bit_length(),
    )  # fmt: skip
    constants = {
        "PLAN_Q": block_q,
        "PLAN_KV": block_kv,
        "HEAD_DIM": dim,
        "HAS_BIAS": key_bias is not None,
        "FP32_DOT": q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and _interpreting()),
    }
    if tile is None and _interpreting():
        tile = Tile(128, 128).fitted(block_q, block_kv, dim)
    with torch.cuda.device(q.device) if q.is_cuda else nullcontext():
        if tile is None:
            grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)  # noqa: E731
            _tuned_forward[grid](*arguments, **constants)
        else:
            tile = tile.fitted(block_q, block_kv, dim)
            _block_sparse_forward[(triton.cdiv(n_q, tile.block_m), batch * heads)](
                *arguments, **constants, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
                num_warps=tile.num_warps, num_stages=tile.num_stages,
            )  # fmt: skip
    return out
