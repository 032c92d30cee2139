"""`sparse_attention`: run a BlockPlan on q, k, v with the best backend for the device.

Tensor layout everywhere: [B, H, N, D] (heads before tokens), K/V may have fewer heads (GQA).
Backends declare the devices and dtypes they run on, and what they need; asking for one that
cannot run raises a clear error, `auto` picks among those that can.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from sparsediff.kernels import (
    block_sparse_attention_flex,
    block_sparse_attention_gather,
    block_sparse_attention_ref,
    triton_refuses,
)
from sparsediff.plan import BlockPlan

logger = logging.getLogger(__name__)
Tensor = torch.Tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float64, *HALF_DTYPES)


@dataclass(frozen=True)
class Backend:
    """A kernel plus what it supports; `unavailable()` says why it cannot run, or None."""

    name: str
    kernel: Callable[..., Tensor]
    devices: tuple[str, ...]
    description: str
    needs: Callable[[torch.device], str | None] = lambda device: None
    refuses: Callable[[int, int, int], str | None] = lambda head_dim, block_q, block_kv: None

    def unavailable(self, device: torch.device, shape: tuple[int, int, int] | None = None) -> str | None:
        """Why this backend cannot run on `device` (or take `shape`: head dim, query and KV block)."""
        if device.type not in self.devices:
            return f"backend {self.name!r} runs on {self.devices}, not on {device.type}"
        return self.needs(device) or (self.refuses(*shape) if shape else None)


@cache
def _compiler_missing() -> str | None:
    """FlexAttention compiles through Inductor, which needs a C++ compiler on the CPU."""
    if shutil.which("g++") or shutil.which("clang++") or shutil.which("c++"):
        return None
    return "backend 'flex' needs a C++ compiler for torch.compile on the CPU (install g++), or use backend='torch'"


def _flex_needs(device: torch.device) -> str | None:
    try:
        import torch.nn.attention.flex_attention
    except ImportError:
        return f"backend 'flex' needs torch >= 2.5 with FlexAttention (found {torch.__version__})"
    return _compiler_missing() if device.type == "cpu" else None


def _triton_needs(device: torch.device) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "backend 'triton' needs the triton package (pip install 'sparsediff[triton]')"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "backend 'triton' runs on CUDA GPUs; on the CPU only under the Triton interpreter (TRITON_INTERPRET=1)"
    return None


def _triton_kernel(*args, **kwargs) -> Tensor:
    """Imported on first use: triton is optional, and reads TRITON_INTERPRET when it compiles."""
    from sparsediff.kernels.triton import block_sparse_attention_triton

    return block_sparse_attention_triton(*args, **kwargs)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "reference", block_sparse_attention_ref, ("cpu", "cuda"), "dense SDPA under the expanded mask: exact, slow"
        ),
        Backend("torch", block_sparse_attention_gather, ("cpu", "cuda"), "block gather + fused SDPA per chunk"),
        Backend("flex", block_sparse_attention_flex, ("cpu", "cuda"), "torch.compile'd FlexAttention", _flex_needs),
        Backend(
            "triton",
            _triton_kernel,
            ("cpu", "cuda"),
            "Triton block-sparse flash attention",
            _triton_needs,
            triton_refuses,
        ),
    )
}


def backend_choices() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


def resolve_backend(name: str, device: torch.device, shape: tuple[int, int, int] | None = None) -> Backend:
    """The backend `name` (or the best for `device` when "auto"), checked to be runnable; with
    `shape` (head dim, query block, KV block), also to take it: on a GPU, head dims Triton cannot
    take (PixArt's 72, for example) run through FlexAttention under `auto`."""
    if name == "auto":
        # On 2 CPU cores (docs/results.md) the gather path matches compiled FlexAttention without its
        # per-shape compile. On GPUs our Triton kernel reads the plan as it is (no BlockMask to
        # build, no compile per shape); FlexAttention where triton is missing.
        preference = ("triton", "flex", "torch") if device.type == "cuda" else ("torch",)
        for candidate in preference:
            if BACKENDS[candidate].unavailable(device, shape) is None:
                return BACKENDS[candidate]
        raise RuntimeError(f"no sparse attention backend runs on {device}")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {backend_choices()}")
    reason = BACKENDS[name].unavailable(device)
    if reason:
        raise RuntimeError(reason)
    problem = BACKENDS[name].refuses(*shape) if shape else None
    if problem:
        raise ValueError(problem)
    return BACKENDS[name]


def is_trivial_mask(mask: Tensor) -> bool:
    """True when an attention mask allows every key (bool all True, or additive all zero)."""
    return bool(mask.all()) if mask.dtype == torch.bool else not bool(mask.any())


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "q, k, v must be [batch, heads, tokens, head_dim]; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if (q.shape[2], k.shape[2]) != (plan.seq_len_q, plan.seq_len_kv):
        raise ValueError(
            f"plan was built for (N_q, N_kv) = ({plan.seq_len_q}, {plan.seq_len_kv}) but got "
            f"({q.shape[2]}, {k.shape[2]}); build a plan for this layout"
        )
    if plan.num_heads not in (1, q.shape[1]):
        raise ValueError(
            f"plan has {plan.num_heads} heads but q has {q.shape[1]}; per-head plans need one row per head"
        )


def _plan_for(plan: BlockPlan, heads: int, device: torch.device) -> BlockPlan:
    """The plan on `device` with one row per head (a 1-head plan is shared by all heads)."""
    key = ("prepared", heads, device)
    if key not in plan.kernel_cache:
        prepared = plan.to(device)
        if plan.num_heads != heads:
            prepared = BlockPlan(
                prepared.kv_indices.expand(heads, -1, -1),
                prepared.kv_counts.expand(heads, -1),
                plan.block_q,
                plan.block_kv,
                plan.seq_len_q,
                plan.seq_len_kv,
                prepared.skipped_heads.expand(heads),
                (tuple(range(heads)),),
            )
        plan.kernel_cache[key] = prepared
    return plan.kernel_cache[key]


def _split_full_heads(prepared: BlockPlan) -> tuple[Tensor | None, BlockPlan | None]:
    """(heads that compute every block, or None; the plan of the other heads, or None when none is left).

    A full head runs faster through dense SDPA than through a block kernel (gather: 1.6x slower
    at N = 4,104 on 2 cores), and searched configs have them: skipped heads on refresh steps.
    """
    key = ("split_full_heads",)
    if key not in prepared.kernel_cache:
        full = (prepared.kv_counts == prepared.num_kv_blocks).all(-1) & ~prepared.skipped_heads
        rest = prepared
        if full.any():
            rest = None
            if not (full | prepared.skipped_heads).all():
                rest = BlockPlan(
                    prepared.kv_indices,
                    prepared.kv_counts.masked_fill(full[:, None], 0),
                    prepared.block_q,
                    prepared.block_kv,
                    prepared.seq_len_q,
                    prepared.seq_len_kv,
                    prepared.skipped_heads | full,
                    prepared.head_groups,
                )
        prepared.kernel_cache[key] = (full.nonzero().flatten() if full.any() else None, rest)
    return prepared.kernel_cache[key]


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    plan: BlockPlan,
    backend: str = "auto",
    scale: float | None = None,
    reuse: Tensor | None = None,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Attention restricted to the plan's blocks. q [B, H, N_q, D], k/v [B, H_kv, N_kv, D].

    Skipped heads need `reuse`, the output [B, H, N_q, D] of the last call that computed them.
    `key_bias` [N_kv] is added to every logit of its key. With `auto`, heads that keep every
    block run dense SDPA (same result, fastest).
    """
    _check_inputs(q, k, v, plan)
    if key_bias is not None:
        if key_bias.shape != (k.shape[2],):
            raise ValueError(
                f"key_bias must have shape ({k.shape[2]},) (one value per key), got {tuple(key_bias.shape)}"
            )
        key_bias = key_bias.to(q.dtype)
    dense_mask = None if key_bias is None else key_bias.view(1, 1, 1, -1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    prepared = _plan_for(plan, q.shape[1], q.device)
    skipped = prepared.skipped_heads
    if skipped.any() and (reuse is None or reuse.shape != q.shape):
        raise ValueError(
            f"the plan skips heads {skipped.nonzero().flatten().tolist()}; pass reuse=<output of shape "
            f"{tuple(q.shape)} from the last step that computed them>"
        )
    if backend == "auto" and prepared.is_full:
        return F.scaled_dot_product_attention(q, k, v, dense_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    full_heads, rest = _split_full_heads(prepared) if backend == "auto" else (None, prepared)
    if rest is None:  # every head is full or skipped
        out = torch.empty_like(q)
    else:
        out = resolve_backend(backend, q.device, (q.shape[-1], rest.block_q, rest.block_kv)).kernel(
            q, k, v, rest.kv_indices, rest.kv_counts, rest.block_q, rest.block_kv, scale, rest.kernel_cache, key_bias
        )
    if full_heads is not None:
        kv_heads = full_heads // (q.shape[1] // k.shape[1])
        out[:, full_heads] = F.scaled_dot_product_attention(
            q[:, full_heads], k[:, kv_heads], v[:, kv_heads], dense_mask, scale=scale
        )
    if skipped.any():
        out[:, skipped] = reuse[:, skipped]
    return out
