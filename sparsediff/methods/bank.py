"""Attention over a KV bank: the original keys plus pooled keys whose logits get + log(pool size).

PSA's pyramid levels and Scale-DiT's coarse global tokens are both extra, pooled keys with a
log-size bias (a pooled key stands for `size` similar keys): every backend takes it as a
per-key bias (the gather kernel as SDPA's additive mask; it replaced an extra feature of 1 on
queries and bias / scale on keys, whose odd head dim made SDPA 9% slower). Padding slots get a
bias of -1000 (zero weight).
"""

from __future__ import annotations

import math

import torch

from sparsediff.kernels import expand_kv

Tensor = torch.Tensor
MASKED = -1000.0  # bias of padding slots: exp(-1000) is 0 in every float type


def pool_blocks(x: Tensor, valid: int, size: int) -> tuple[Tensor, Tensor]:
    """Mean-pool groups of `size` consecutive tokens (groups never cross a block when size divides it).

    x: [B, H, N, D] with N >= valid, a multiple of `size`; tokens at or past `valid` are padding.
    Returns pooled [B, H, N / size, D] and bias [N / size] = log(valid tokens in the group), or
    MASKED where a group holds none.
    """
    n = x.shape[2]
    counts = group_counts(n, valid, size, x.device, x.dtype)
    sums = x.reshape(*x.shape[:2], n // size, size, x.shape[-1]).sum(3)
    return sums / counts.clamp_min(1)[:, None], count_bias(counts)


def group_counts(length: int, valid: int, size: int, device, dtype) -> Tensor:
    """[length / size] valid tokens in each group of `size` of a run of `length` padded past `valid`."""
    return (torch.arange(length, device=device) < valid).to(dtype).view(length // size, size).sum(-1)


def count_bias(counts: Tensor) -> Tensor:
    """log(count) per pooled key (it stands for that many keys), MASKED where a group is all padding."""
    return torch.where(counts > 0, counts.clamp_min(1).log(), torch.full_like(counts, MASKED))


def padding_bias(valid: int, length: int, device, dtype) -> Tensor:
    """[length] bias of a padded key run: 0 for the first `valid` keys, MASKED for the padding."""
    return torch.where(torch.arange(length, device=device) < valid, 0.0, MASKED).to(dtype)


def pad_to(x: Tensor, length: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[2]))


def bank_attention_reference(
    q: Tensor, k_bank: Tensor, v_bank: Tensor, bias: Tensor, token_mask: Tensor, scale: float
) -> Tensor:
    """The definition: dense softmax over allowed bank keys [H, N_q, N_bank] with the bias, in fp64."""
    k_bank, v_bank = expand_kv(k_bank, q.shape[1]), expand_kv(v_bank, q.shape[1])
    scores = q.double() @ k_bank.double().transpose(-1, -2) * scale + bias.double()
    scores = scores.masked_fill(~token_mask, -math.inf)
    return (scores.softmax(-1) @ v_bank.double()).to(q.dtype)
