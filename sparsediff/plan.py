"""BlockPlan: the one object between planning (methods) and kernels.

Like FlexAttention's BlockMask, a plan stores, per head and query block, a padded list of the
KV blocks to compute. Its meaning is exact; for one head `h` it is

    allowed = plan.to_token_mask()[h]                 # [N_q, N_kv] bool
    scores = q[:, h] @ k[:, h].T * scale
    scores[~allowed] = -inf
    out[:, h] = softmax(scores) @ v[:, h]             # rows with no allowed key give 0

and every kernel backend must reproduce it (fp32 1e-4, half 2e-2 max abs). Skipped heads compute
nothing: their output is reused from an earlier step by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


def _block_lengths(seq_len: int, block: int) -> Tensor:
    """[ceil(seq_len / block)] number of real tokens in each block (the last may be short)."""
    n = math.ceil(seq_len / block)
    lengths = torch.full((n,), block, dtype=torch.long)
    lengths[-1] = seq_len - (n - 1) * block
    return lengths


def as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """(query, KV) sizes from one size for both, or the pair as given."""
    return (value, value) if isinstance(value, int) else value


@dataclass(eq=False)
class BlockPlan:
    """Per (head, query block) KV block lists.

    Attributes:
        kv_indices: [H, Qb, K] int32, the KV blocks of each row; entries past the count are 0.
        kv_counts: [H, Qb] int32, how many entries of `kv_indices` are used.
        block_q, block_kv: block sizes in tokens.
        seq_len_q, seq_len_kv: sequence lengths (need not be block multiples).
        skipped_heads: [H] bool; a skipped head computes nothing (count 0 on every row).
        head_groups: heads sharing one strategy, so a kernel can launch them together.
    """

    kv_indices: Tensor
    kv_counts: Tensor
    block_q: int
    block_kv: int
    seq_len_q: int
    seq_len_kv: int
    skipped_heads: Tensor
    head_groups: tuple[tuple[int, ...], ...]
    kernel_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_block_mask(
        cls,
        mask: Tensor,
        block_size: int | tuple[int, int],
        seq_len: int | tuple[int, int] | None = None,
        skipped_heads: Tensor | None = None,
        head_groups: tuple[tuple[int, ...], ...] | None = None,
    ) -> BlockPlan:
        """Build a plan from a block mask [H, Qb, Kb] (True = compute this block).

        `seq_len` defaults to whole blocks; pass the real lengths when the last block is short.
        Rows with no block are an error unless their head is in `skipped_heads`.
        """
        if mask.dim() != 3 or mask.dtype != torch.bool:
            raise ValueError(
                f"block mask must be a bool tensor [heads, q_blocks, kv_blocks], got {mask.dtype} {tuple(mask.shape)}"
            )
        block_q, block_kv = as_pair(block_size)
        if block_q < 1 or block_kv < 1:
            raise ValueError(f"block sizes must be positive, got {(block_q, block_kv)}")
        heads, q_blocks, kv_blocks = mask.shape
        if seq_len is None:
            seq_len = (q_blocks * block_q, kv_blocks * block_kv)
        seq_len_q, seq_len_kv = as_pair(seq_len)
        for name, n, blocks, size in (
            ("query", seq_len_q, q_blocks, block_q),
            ("key", seq_len_kv, kv_blocks, block_kv),
        ):
            if n < 1 or math.ceil(n / size) != blocks:
                raise ValueError(
                    f"{name} length {n} does not fit {blocks} blocks of {size}: need ceil({n}/{size}) == {blocks}"
                )
        mask = mask.cpu()
        skipped = torch.zeros(heads, dtype=torch.bool) if skipped_heads is None else skipped_heads.cpu().bool()
        if skipped.shape != (heads,):
            raise ValueError(f"skipped_heads must have shape ({heads},), got {tuple(skipped.shape)}")
        mask = mask & ~skipped[:, None, None]
        counts = mask.sum(-1)
        empty = (counts == 0) & ~skipped[:, None]
        if empty.any():
            h, qb = empty.nonzero()[0].tolist()
            raise ValueError(
                f"query block {qb} of head {h} attends to no key block ({int(empty.sum())} such rows); "
                "every query needs at least one key: add a diagonal or stripe, or mark the head skipped"
            )
        width = max(int(counts.max()), 1)
        order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[..., :width]
        slots = torch.arange(width)
        indices = torch.where(slots < counts[..., None], order, 0)
        if head_groups is None:
            head_groups = _identical_heads(mask, skipped)
        return cls(
            kv_indices=indices.to(torch.int32).contiguous(),
            kv_counts=counts.to(torch.int32),
            block_q=block_q,
            block_kv=block_kv,
            seq_len_q=seq_len_q,
            seq_len_kv=seq_len_kv,
            skipped_heads=skipped,
            head_groups=tuple(tuple(g) for g in head_groups),
        )

    def __post_init__(self) -> None:
        if self.kv_indices.dim() != 3 or self.kv_counts.shape != self.kv_indices.shape[:2]:
            raise ValueError(
                f"kv_indices must be [H, Qb, K] and kv_counts [H, Qb]; got {tuple(self.kv_indices.shape)} "
                f"and {tuple(self.kv_counts.shape)}"
            )
        if self.kv_indices.shape[1] != math.ceil(self.seq_len_q / self.block_q):
            raise ValueError(f"{self.kv_indices.shape[1]} query blocks do not cover {self.seq_len_q} tokens")
        used = torch.arange(self.kv_indices.shape[-1], device=self.kv_counts.device) < self.kv_counts[..., None]
        bad = used & ((self.kv_indices < 0) | (self.kv_indices >= self.num_kv_blocks))
        if bad.any():
            raise ValueError(f"kv_indices out of range [0, {self.num_kv_blocks}) at {bad.nonzero()[0].tolist()}")
        if (self.kv_counts > self.num_kv_blocks).any() or (self.kv_counts < 0).any():
            raise ValueError(f"kv_counts must lie in [0, {self.num_kv_blocks}]")

    @property
    def num_heads(self) -> int:
        return self.kv_indices.shape[0]

    @property
    def num_q_blocks(self) -> int:
        return self.kv_indices.shape[1]

    @property
    def num_kv_blocks(self) -> int:
        return math.ceil(self.seq_len_kv / self.block_kv)

    @property
    def device(self) -> torch.device:
        return self.kv_indices.device

    def to(self, device: torch.device | str) -> BlockPlan:
        device = torch.device(device)
        if device == self.device:
            return self
        return BlockPlan(
            self.kv_indices.to(device),
            self.kv_counts.to(device),
            self.block_q,
            self.block_kv,
            self.seq_len_q,
            self.seq_len_kv,
            self.skipped_heads.to(device),
            self.head_groups,
        )

    def to_dense_mask(self) -> Tensor:
        """[H, Qb, Kb] bool block mask (as FlexAttention's `BlockMask.to_dense`)."""
        heads, q_blocks, width = self.kv_indices.shape
        used = torch.arange(width, device=self.device) < self.kv_counts[..., None]
        mask = torch.zeros(heads, q_blocks, self.num_kv_blocks + 1, dtype=torch.bool, device=self.device)
        # Unused slots write into a spare column that is dropped.
        index = torch.where(used, self.kv_indices.long(), self.num_kv_blocks)
        mask.scatter_(-1, index, True)
        return mask[..., :-1]

    def to_token_mask(self) -> Tensor:
        """[H, N_q, N_kv] bool token mask: the exact meaning of the plan."""
        mask = self.to_dense_mask()
        mask = mask.repeat_interleave(self.block_q, 1)[:, : self.seq_len_q]
        return mask.repeat_interleave(self.block_kv, 2)[:, :, : self.seq_len_kv]

    @property
    def density(self) -> float:
        """Computed attention FLOPs over dense FLOPs (partial last blocks counted exactly)."""
        q_len = _block_lengths(self.seq_len_q, self.block_q).to(self.device)
        kv_len = _block_lengths(self.seq_len_kv, self.block_kv).to(self.device)
        width = self.kv_indices.shape[-1]
        used = torch.arange(width, device=self.device) < self.kv_counts[..., None]
        pair_tokens = q_len[None, :, None] * kv_len[self.kv_indices.long()] * used
        return float(pair_tokens.sum()) / (self.num_heads * self.seq_len_q * self.seq_len_kv)

    @property
    def is_full(self) -> bool:
        """True when every head computes every block (dense attention would do the same)."""
        return bool((self.kv_counts == self.num_kv_blocks).all())

    def __repr__(self) -> str:
        return (
            f"BlockPlan(heads={self.num_heads}, seq=({self.seq_len_q}, {self.seq_len_kv}), "
            f"blocks=({self.block_q}, {self.block_kv}), grid={self.num_q_blocks}x{self.num_kv_blocks}, "
            f"density={self.density:.3f}, groups={len(self.head_groups)}, "
            f"skipped={int(self.skipped_heads.sum())})"
        )

    def __str__(self) -> str:
        """The repr plus a drawing of head 0's block mask (at most 64 x 64 blocks shown)."""
        mask = self.to_dense_mask()[0, :64, :64].cpu()
        rows = ["".join("#" if x else "." for x in row.tolist()) for row in mask]
        return "\n".join([repr(self), *rows])


def _identical_heads(mask: Tensor, skipped: Tensor) -> list[tuple[int, ...]]:
    """Group heads whose block masks are identical (skipped heads form their own group)."""
    groups: dict[bytes, list[int]] = {}
    for h in range(mask.shape[0]):
        key = b"skip" if skipped[h] else mask[h].numpy().tobytes()
        groups.setdefault(key, []).append(h)
    return [tuple(g) for g in groups.values()]
