"""Block-gather attention: the CPU fast path, and a no-compile fallback on GPUs.

For a chunk of (head, query block) rows, gather each row's listed K/V blocks into a padded
[rows, K * block_kv, D] tensor and run SDPA's fused kernel on it, one row per batch item (a
per-key bias and the padding go in as SDPA's additive mask).
Rows are sorted by how many blocks they list and chunked so that rows of a chunk pad to nearly
the same width, and a chunk stays small enough for its scores to live in cache (large chunks at N = 16k ran
3x slower on 2 CPU cores). The chunk schedule depends only on the block lists, so it is built
once per plan and device and kept in the plan's cache.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Work per chunk in (query block, KV block) pairs; measured best at 64-128 on 2 cores
# with 64 x 64 blocks (see `sparsediff bench attention`).
CHUNK_BLOCK_PAIRS = 128


@dataclass
class _Chunk:
    rows: Tensor  # [R] index into the (head * Qb + q_block) rows
    kv_rows: Tensor  # [R * C] index into the (kv_head * Kb + kv_block) blocks
    kv_blocks: Tensor  # [R * C] the KV block of each (for a per-key bias)
    bias: Tensor | None  # [R, 1, C * block_kv] 0 / -inf for padding slots and keys past N
    q_len: int  # query rows to compute: fewer than a block when every row is the last, partial block


@dataclass
class _Schedule:
    chunks: list[_Chunk]
    max_rows: int  # largest R
    max_keys: int  # largest R * C * block_kv
    covers_all_rows: bool  # False when some row lists no block (its output must be zero)


def _build_schedule(
    kv_indices: Tensor, kv_counts: Tensor, block_q: int, block_kv: int, n_q: int, n_kv: int, kv_heads: int,
    budget: int,
) -> _Schedule:  # fmt: skip
    heads, q_blocks, _ = kv_indices.shape
    last_rows = n_q - (q_blocks - 1) * block_q  # valid rows of the last query block
    kv_blocks = math.ceil(n_kv / block_kv)
    group = heads // kv_heads
    indices = kv_indices.reshape(heads * q_blocks, -1).long()
    counts = kv_counts.reshape(-1).long()
    order = torch.argsort(counts.cpu(), descending=True, stable=True).to(indices.device)
    order = order[counts[order] > 0]
    counts_sorted = counts[order].tolist()
    key_offsets = torch.arange(block_kv, device=indices.device)
    chunks, start = [], 0
    while start < len(order):
        width = counts_sorted[start]
        stop = min(len(order), start + max(1, budget // width))
        rows = order[start:stop]
        idx = indices[rows, :width]  # [R, C]
        kv_head = rows // q_blocks // group
        used = torch.arange(width, device=idx.device) < counts[rows, None]
        valid = used[..., None] & (idx[..., None] * block_kv + key_offsets < n_kv)  # [R, C, bk]
        bias = None
        if not bool(valid.all()):
            bias = torch.zeros(valid.shape, device=idx.device).masked_fill_(~valid, float("-inf"))
            bias = bias.view(len(rows), 1, width * block_kv)
        q_len = last_rows if bool((rows % q_blocks == q_blocks - 1).all()) else block_q
        chunks.append(_Chunk(rows, (kv_head[:, None] * kv_blocks + idx).reshape(-1), idx.reshape(-1), bias, q_len))
        start = stop
    return _Schedule(
        chunks,
        max_rows=max((len(c.rows) for c in chunks), default=0),
        max_keys=max((len(c.kv_rows) * block_kv for c in chunks), default=0),
        covers_all_rows=len(order) == heads * q_blocks,
    )


def _to_blocks(x: Tensor, block: int) -> Tensor:
    """[B, H, N, D] -> [B, H * ceil(N / block), block, D], zero-padded (a view when N fits)."""
    b, h, n, d = x.shape
    blocks = math.ceil(n / block)
    if blocks * block != n:
        x = F.pad(x, (0, 0, 0, blocks * block - n))
    return x.reshape(b, h * blocks, block, d)


class _Workspace:
    """Buffers for the gathered Q/K/V, reused by every chunk a worker runs.

    Allocating MB-sized temporaries per chunk made the allocator page-fault on every chunk
    (2-4x slower at N = 16k), so each worker carves its gathered tensors out of these.
    """

    def __init__(self, q: Tensor, schedule: _Schedule, block_q: int) -> None:
        batch, dim = q.shape[0], q.shape[-1]
        self.q = q.new_empty(batch * schedule.max_rows * block_q * dim)
        self.k = q.new_empty(batch * schedule.max_keys * dim)
        self.v = q.new_empty(batch * schedule.max_keys * dim)


def _attend_chunk(
    chunk: _Chunk, q_blocks, k_blocks, v_blocks, bias_blocks: Tensor | None, out, ws: _Workspace, scale: float
) -> None:
    """Attention for one chunk of rows, written into `out` (rows of chunks never overlap).

    `bias_blocks` [Kb, block_kv]: the per-key bias, or None.
    """
    batch, _, _, dim = q_blocks.shape
    block_q, block_kv = chunk.q_len, k_blocks.shape[2]
    q_blocks, out = q_blocks[:, :, :block_q], out[:, :, :block_q]  # a partial last block: its valid rows
    r = len(chunk.rows)
    keys = len(chunk.kv_rows) * block_kv // r
    qc = torch.index_select(q_blocks, 1, chunk.rows, out=ws.q[: batch * r * block_q * dim].view(batch, r, block_q, dim))
    kv_shape = (batch, r * keys // block_kv, block_kv, dim)
    kc = torch.index_select(k_blocks, 1, chunk.kv_rows, out=ws.k[: batch * r * keys * dim].view(kv_shape))
    vc = torch.index_select(v_blocks, 1, chunk.kv_rows, out=ws.v[: batch * r * keys * dim].view(kv_shape))
    bias = chunk.bias  # the 0 / -inf padding bias, then one row per (batch, row)
    if bias_blocks is not None:
        key_bias = bias_blocks.index_select(0, chunk.kv_blocks).view(r, 1, keys)
        bias = key_bias if bias is None else bias + key_bias
    if bias is not None:
        bias = (bias if batch == 1 else bias.repeat(batch, 1, 1))[:, None].to(q_blocks.dtype)
    # Each row is a short dense attention: SDPA's fused kernel (flash on the CPU, with fp32
    # softmax for half dtypes) ran 17-19% faster than baddbmm + softmax + bmm on these chunks.
    oc = F.scaled_dot_product_attention(
        qc.view(-1, 1, block_q, dim), kc.view(-1, 1, keys, dim), vc.view(-1, 1, keys, dim), bias, scale=scale
    )
    out.index_copy_(1, chunk.rows, oc.view(batch, r, block_q, dim))


@cache
def _worker_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="sparsediff-gather")


def block_sparse_attention_gather(
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
    budget: int | None = None,
) -> Tensor:
    cache = {} if cache is None else cache
    budget = budget or CHUNK_BLOCK_PAIRS * max(1, 64 // block_kv)  # the same keys per chunk for small KV blocks
    batch, heads, n_q, dim = q.shape
    key = ("gather_schedule", q.device, n_q, k.shape[1], k.shape[2], budget)
    if key not in cache:
        cache[key] = _build_schedule(kv_indices, kv_counts, block_q, block_kv, n_q, k.shape[2], k.shape[1], budget)
    schedule: _Schedule = cache[key]
    q_blocks = _to_blocks(q, block_q)
    k_blocks, v_blocks = _to_blocks(k, block_kv), _to_blocks(v, block_kv)
    out = q_blocks.new_empty(q_blocks.shape) if schedule.covers_all_rows else q_blocks.new_zeros(q_blocks.shape)
    bias_blocks = None
    if key_bias is not None:
        bias_blocks = F.pad(key_bias.float(), (0, k_blocks.shape[1] // k.shape[1] * block_kv - k.shape[2]))
        bias_blocks = bias_blocks.view(-1, block_kv)
    chunks = iter(schedule.chunks)
    lock = threading.Lock()

    def work() -> None:
        ws = _Workspace(q, schedule, block_q)
        while True:
            with lock:
                chunk = next(chunks, None)
            if chunk is None:
                return
            _attend_chunk(chunk, q_blocks, k_blocks, v_blocks, bias_blocks, out, ws, scale)

    def single_threaded_work() -> None:
        # Each worker's ops run on its own core: intra-op threads inside two workers put four
        # threads on two cores (the whole kernel ran 10-25% slower). torch's thread count is
        # per thread under OpenMP but also sets a process default, which is put back after.
        torch.set_num_threads(1)
        try:
            work()
        finally:
            torch.set_num_threads(threads)

    # On the CPU, one Python worker per core pulling chunks from a shared queue: each chunk's
    # ops are too small for intra-op threading, whose per-op barriers made 2-thread timings
    # swing 2x on this machine (GIL released inside every op). On GPUs one stream does it.
    threads = torch.get_num_threads()
    workers = min(threads, len(schedule.chunks)) if q.device.type == "cpu" else 1
    if workers > 1:
        for future in [_worker_pool(workers).submit(single_threaded_work) for _ in range(workers)]:
            future.result()
    else:
        work()
    return out.view(batch, heads, -1, dim)[:, :, :n_q]
