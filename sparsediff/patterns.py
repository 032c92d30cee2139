"""Attention patterns in layout units, and the planner that turns them into a BlockPlan.

Patterns are small parametric objects (like FlexAttention's `mask_mod`s) composed with `|`:

    Diagonal(radius=2, temporal_radius=1) | MultiDiagonal(radius=1, frame_offsets=(-4, 4))

They speak in latent-grid units (a spatial radius, frame offsets, token columns), never in
block indices, so a config found at one resolution or length transfers to another. Each
pattern has two twins: `token_mask` (brute force over token pairs: the definition) and
`block_mask` (fast, what the planner uses); a block is computed when any of its token pairs is
allowed, and the tests check the two agree.

Patterns describe visual-to-visual attention; the planner adds the text rules: text keys are a
stripe every query sees, text queries see everything (both can be turned off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Annotated, Literal, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from sparsediff.layout import TokenLayout
from sparsediff.plan import BlockPlan, as_pair

Tensor = torch.Tensor

# Dilation works on chunks of query blocks; this bounds the chunk's float buffer (elements).
_DILATION_BUFFER = 1 << 24


class Pattern(BaseModel):
    """Base class: a set of (query, key) token pairs defined on a TokenLayout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def token_mask(self, layout: TokenLayout) -> Tensor:
        """[N, N] bool, True where query i may attend key j. Brute force: the reference."""
        raise NotImplementedError

    def block_mask(self, layout: TokenLayout, block_q: int, block_kv: int) -> Tensor:
        """[Qb, Kb] bool, True where any token pair of the block is allowed."""
        return _reduce_to_blocks(self.token_mask(layout), block_q, block_kv)

    def __or__(self, other: Pattern) -> Pattern:
        parts = [*_parts(self), *_parts(other)]
        return AnyOf(parts=tuple(parts))

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.model_dump(exclude={"kind"}).items())
        return f"{self.kind}({args})"


class Full(Pattern):
    """Every key: dense attention."""

    kind: Literal["full"] = "full"

    def token_mask(self, layout: TokenLayout) -> Tensor:
        return torch.ones(layout.num_tokens, layout.num_tokens, dtype=torch.bool)

    def block_mask(self, layout: TokenLayout, block_q: int, block_kv: int) -> Tensor:
        n = layout.num_tokens
        return torch.ones(math.ceil(n / block_q), math.ceil(n / block_kv), dtype=torch.bool)


class Skip(Pattern):
    """Compute nothing on most steps; the head reuses its output from the last step where it ran.

    It runs in full on steps divisible by `every` (and on dense steps), so a reused output is at
    most `every - 1` steps old: the search scores a skip against exactly that staleness.
    """

    kind: Literal["skip"] = "skip"
    every: int = Field(default=2, ge=2, description="run in full on steps divisible by this")

    def runs_at(self, step: int) -> bool:
        return step % self.every == 0

    def token_mask(self, layout: TokenLayout) -> Tensor:
        raise ValueError("a skipped head has no mask; the planner marks it in BlockPlan.skipped_heads")


class Pyramid(Pattern):
    """PSA's pyramid pooled KV for this head, planned per call from pooled scores (`methods.pyramid`).

    No static mask: a static plan leaves the head out (marked in `BlockPlan.skipped_heads`) and
    the caller fills its output from `pyramid_attention` at `budget` (a fraction of dense FLOPs).
    """

    kind: Literal["pyramid"] = "pyramid"
    budget: float = Field(gt=0, le=1)

    def token_mask(self, layout: TokenLayout) -> Tensor:
        raise ValueError("a pyramid head is planned per call; the static planner leaves it out")


class HilbertWindow(Pattern):
    """Scale-DiT's local window in Hilbert order plus coarse global tokens for this head, run per
    call on permuted tokens (`methods.hilbert`) at `density` of dense FLOPs.

    A static plan runs in raster order, where a window of Hilbert neighbours is scattered over
    many blocks; so, like `Pyramid`, the static planner leaves the head out and the caller fills it.
    """

    kind: Literal["hilbert-window"] = "hilbert-window"
    density: float = Field(gt=0, le=1)
    order: Literal["hilbert-frame", "hilbert"] = "hilbert-frame"

    def token_mask(self, layout: TokenLayout) -> Tensor:
        raise ValueError("a hilbert-window head runs per call on permuted tokens; the static planner leaves it out")


class Diagonal(Pattern):
    """Local neighbourhood: keys within `radius` rows/cols and `temporal_radius` frames."""

    kind: Literal["diagonal"] = "diagonal"
    radius: int = Field(ge=0)
    temporal_radius: int = Field(default=0, ge=0)

    def token_mask(self, layout: TokenLayout) -> Tensor:
        d = _coord_distance(layout)
        return _visual_pairs(layout) & (d[..., 0] <= self.temporal_radius) & (d[..., 1:].amax(-1) <= self.radius)

    def block_mask(self, layout: TokenLayout, block_q: int, block_kv: int) -> Tensor:
        kernel = (2 * self.temporal_radius + 1, 2 * self.radius + 1, 2 * self.radius + 1)
        return _dilated_block_mask(layout, block_q, block_kv, kernel, frame_offsets=(0,))


class MultiDiagonal(Pattern):
    """The spatial neighbourhood (`radius`) at the same place in frames t + offset."""

    kind: Literal["multi_diagonal"] = "multi_diagonal"
    radius: int = Field(ge=0)
    frame_offsets: tuple[int, ...] = Field(min_length=1)

    def token_mask(self, layout: TokenLayout) -> Tensor:
        coords = layout.coords
        dt = coords[None, :, 0] - coords[:, None, 0]
        near = _coord_distance(layout)[..., 1:].amax(-1) <= self.radius
        in_offsets = torch.isin(dt, torch.tensor(self.frame_offsets))
        return _visual_pairs(layout) & near & in_offsets

    def block_mask(self, layout: TokenLayout, block_q: int, block_kv: int) -> Tensor:
        kernel = (1, 2 * self.radius + 1, 2 * self.radius + 1)
        return _dilated_block_mask(layout, block_q, block_kv, kernel, frame_offsets=self.frame_offsets)


class Stripe(Pattern):
    """Key columns every query sees: text, whole frames, or chosen visual tokens.

    `positions` are visual tokens in layout units, (frame, y, x) as fractions of the frame count,
    height and width in [0, 1), so they transfer across sizes (the search stores the heaviest key
    columns it found this way); `tokens` are raster indices (t*H*W + h*W + w) of one layout.
    """

    kind: Literal["stripe"] = "stripe"
    text: bool = False
    frames: tuple[int, ...] = ()
    tokens: tuple[int, ...] = ()
    positions: tuple[tuple[float, float, float], ...] = ()

    def key_columns(self, layout: TokenLayout) -> Tensor:
        """[N] bool, the keys of the stripe."""
        cols = layout.is_text.clone() if self.text else torch.zeros(layout.num_tokens, dtype=torch.bool)
        if self.frames:
            if max(self.frames) >= layout.frames or min(self.frames) < -layout.frames:
                raise ValueError(f"stripe frames {self.frames} do not fit a layout with {layout.frames} frames")
            frames = torch.tensor(self.frames) % layout.frames
            cols |= torch.isin(layout.coords[:, 0], frames) & ~layout.is_text
        if self.tokens:
            tokens = torch.tensor(self.tokens)
            if tokens.min() < 0 or tokens.max() >= layout.num_visual:
                raise ValueError(f"stripe tokens must be raster indices in [0, {layout.num_visual})")
            cols[layout.inverse_index[tokens] + layout.text_prefix] = True
        if self.positions:
            cols[layout.inverse_index[self.raster_indices(layout)] + layout.text_prefix] = True
        return cols

    def raster_indices(self, layout: TokenLayout) -> Tensor:
        """Raster index of the visual token at each of `positions` in this layout."""
        where = torch.tensor(self.positions, dtype=torch.float64)
        if where.min() < 0 or where.max() >= 1:
            raise ValueError("stripe positions are (frame, y, x) fractions of the layout in [0, 1)")
        sizes = torch.tensor([layout.frames, layout.height, layout.width])
        t, y, x = (where * sizes).floor().long().unbind(-1)
        return (t * layout.height + y) * layout.width + x

    @staticmethod
    def positions_of(layout: TokenLayout, coords: Tensor) -> tuple[tuple[float, float, float], ...]:
        """Layout-unit positions (token centres) of [k, 3] (t, h, w) coordinates (rows of
        `layout.coords`): the inverse of `raster_indices`."""
        sizes = (layout.frames, layout.height, layout.width)
        return tuple(tuple(round((i + 0.5) / n, 6) for i, n in zip(c, sizes, strict=True)) for c in coords.tolist())

    def token_mask(self, layout: TokenLayout) -> Tensor:
        return self.key_columns(layout)[None, :].expand(layout.num_tokens, -1).clone()

    def block_mask(self, layout: TokenLayout, block_q: int, block_kv: int) -> Tensor:
        cols = _reduce_to_blocks(self.key_columns(layout)[None], 1, block_kv)[0]
        return cols[None, :].expand(math.ceil(layout.num_tokens / block_q), -1).clone()


class Window(Pattern):
    """Visual keys within `radius` positions in the current token order (Hilbert or raster)."""

    kind: Literal["window"] = "window"
    radius: int = Field(ge=0)

    def token_mask(self, layout: TokenLayout) -> Tensor:
        pos = torch.arange(layout.num_tokens)
        return _visual_pairs(layout) & ((pos[:, None] - pos[None, :]).abs() <= self.radius)

    def block_mask(self, layout: TokenLayout, block_q: int, block_kv: int) -> Tensor:
        # Visual positions of each block form one interval; two intervals are within the
        # radius when the gap between them is.
        q_lo, q_hi = _visual_interval(layout, block_q)
        k_lo, k_hi = _visual_interval(layout, block_kv)
        gap = torch.maximum(k_lo[None, :] - q_hi[:, None], q_lo[:, None] - k_hi[None, :])
        nonempty = (q_lo <= q_hi)[:, None] & (k_lo <= k_hi)[None, :]
        return nonempty & (gap <= self.radius)


class AnyOf(Pattern):
    """Union of patterns (what `a | b` builds)."""

    kind: Literal["union"] = "union"
    parts: tuple[PatternSpec, ...] = Field(min_length=1)

    def token_mask(self, layout: TokenLayout) -> Tensor:
        return _union(p.token_mask(layout) for p in self._checked_parts())

    def block_mask(self, layout: TokenLayout, block_q: int, block_kv: int) -> Tensor:
        return _union(p.block_mask(layout, block_q, block_kv) for p in self._checked_parts())

    def _checked_parts(self) -> tuple[Pattern, ...]:
        if any(isinstance(p, COMPUTED_ELSEWHERE) for p in self.parts):
            raise ValueError("skip, pyramid and hilbert-window cannot be part of a union: they are not masks")
        return self.parts

    def __str__(self) -> str:
        return " | ".join(str(p) for p in self.parts)


# Heads planned per call (the caller fills their output), and all heads a static plan leaves
# out: those and the skipped ones, whose output is reused.
PER_CALL = (Pyramid, HilbertWindow)
COMPUTED_ELSEWHERE = (Skip, *PER_CALL)

PatternSpec = Annotated[
    Union[Full, Skip, Pyramid, HilbertWindow, Diagonal, MultiDiagonal, Stripe, Window, AnyOf],  # noqa: UP007 (pydantic discriminator)
    Field(discriminator="kind"),
]
AnyOf.model_rebuild()


def _parts(p: Pattern) -> tuple[Pattern, ...]:
    return p.parts if isinstance(p, AnyOf) else (p,)


def _union(masks) -> Tensor:
    out = None
    for m in masks:
        out = m.clone() if out is None else out.logical_or_(m)
    return out


def _visual_pairs(layout: TokenLayout) -> Tensor:
    visual = ~layout.is_text
    return visual[:, None] & visual[None, :]


def _coord_distance(layout: TokenLayout) -> Tensor:
    """[N, N, 3] |Δt|, |Δh|, |Δw| between positions (meaningless for text, masked by callers)."""
    c = layout.coords
    return (c[:, None, :] - c[None, :, :]).abs()


def _reduce_to_blocks(mask: Tensor, block_q: int, block_kv: int) -> Tensor:
    """Any-reduce a token mask [Nq, Nk] to blocks [Qb, Kb] (short last blocks padded False)."""
    nq, nk = mask.shape
    qb, kb = math.ceil(nq / block_q), math.ceil(nk / block_kv)
    padded = F.pad(mask, (0, kb * block_kv - nk, 0, qb * block_q - nq))
    return padded.view(qb, block_q, kb, block_kv).any(3).any(1)


def _visual_interval(layout: TokenLayout, block: int) -> tuple[Tensor, Tensor]:
    """First and last visual position in each block (first > last when it holds none)."""
    starts = torch.arange(0, layout.num_tokens, block)
    lo = starts.clamp(min=layout.text_prefix)
    hi = (starts + block - 1).clamp(max=min(layout.num_tokens, layout.visual_slice.stop) - 1)
    return lo, hi


def _dilated_block_mask(
    layout: TokenLayout, block_q: int, block_kv: int, kernel: tuple[int, int, int], frame_offsets: Sequence[int]
) -> Tensor:
    """Blocks reachable from each query block by a box neighbourhood, shifted by frame offsets.

    Each query block's visual tokens are painted on the (t, h, w) grid, dilated with a box
    max-pool, shifted along t by every offset, read back in key order and any-reduced per key
    block. Chunked over query blocks to bound memory.
    """
    t, h, w = layout.frames, layout.height, layout.width
    n, nv, prefix = layout.num_tokens, layout.num_visual, layout.text_prefix
    q_blocks, kv_blocks = math.ceil(n / block_q), math.ceil(n / block_kv)
    visual_pos = torch.arange(prefix, prefix + nv)
    q_block_of_visual = visual_pos // block_q
    raster = layout.raster_index
    # Key side: for each grid cell (raster index), its key block.
    key_block_of_cell = torch.empty(nv, dtype=torch.long)
    key_block_of_cell[raster] = visual_pos // block_kv
    out = torch.zeros(q_blocks, kv_blocks, dtype=torch.bool)
    padding = tuple(k // 2 for k in kernel)
    chunk = max(1, _DILATION_BUFFER // nv)
    first_block, last_block = prefix // block_q, (prefix + nv - 1) // block_q
    for start in range(first_block, last_block + 1, chunk):
        stop = min(start + chunk, last_block + 1)
        sel = (q_block_of_visual >= start) & (q_block_of_visual < stop)
        grid = torch.zeros(stop - start, nv)
        grid[q_block_of_visual[sel] - start, raster[sel]] = 1.0
        grid = F.max_pool3d(grid.view(-1, 1, t, h, w), kernel, stride=1, padding=padding).view(-1, t, h, w)
        reach = torch.zeros_like(grid, dtype=torch.bool)
        for offset in frame_offsets:
            if abs(offset) >= t:
                continue
            if offset >= 0:
                reach[:, offset:] |= grid[:, : t - offset] > 0
            else:
                reach[:, :offset] |= grid[:, -offset:] > 0
        rows, cells = reach.view(stop - start, nv).nonzero(as_tuple=True)
        out[rows + start, key_block_of_cell[cells]] = True
    return out


@lru_cache(maxsize=256)
def _cached_block_mask(pattern: Pattern, layout: TokenLayout, block_q: int, block_kv: int) -> Tensor:
    return pattern.block_mask(layout, block_q, block_kv)


def build_plan(
    layout: TokenLayout,
    patterns: Pattern | Sequence[Pattern],
    block_size: int | tuple[int, int] = 64,
    text_keys: bool = True,
    text_queries_see_all: bool = True,
) -> BlockPlan:
    """Plan one attention call: one pattern for all heads, or one per head.

    Deterministic: the same layout and patterns always give the same plan. Block masks are
    cached per (pattern, layout, block size), so heads and layers sharing a pattern share work.
    """
    block_q, block_kv = as_pair(block_size)
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"block sizes must be >= 1 token, got {block_size}")
    per_head = [patterns] if isinstance(patterns, Pattern) else list(patterns)
    if not per_head:
        raise ValueError("build_plan needs at least one pattern")
    for p in per_head:
        if not isinstance(p, Pattern):
            raise TypeError(f"expected Pattern objects, got {type(p).__name__}: {p!r}")
    n = layout.num_tokens
    q_blocks, kv_blocks = math.ceil(n / block_q), math.ceil(n / block_kv)
    skipped = torch.tensor([isinstance(p, COMPUTED_ELSEWHERE) for p in per_head])
    masks, groups = [], {}
    for h, p in enumerate(per_head):
        groups.setdefault(p, []).append(h)
        if isinstance(p, COMPUTED_ELSEWHERE):
            masks.append(torch.zeros(q_blocks, kv_blocks, dtype=torch.bool))
        else:
            masks.append(_cached_block_mask(p, layout, block_q, block_kv))
    mask = torch.stack(masks)
    if layout.num_text:
        if text_keys:
            mask |= _reduce_to_blocks(layout.is_text[None], 1, block_kv)[0]
        if text_queries_see_all:
            mask |= _reduce_to_blocks(layout.is_text[:, None], block_q, 1)[:, 0][:, None]
    return BlockPlan.from_block_mask(
        mask,
        (block_q, block_kv),
        seq_len=n,
        skipped_heads=skipped,
        head_groups=tuple(tuple(g) for g in groups.values()),
    )


@lru_cache(maxsize=256)
def cached_plan(layout: TokenLayout, patterns: tuple[Pattern, ...], block_size: int | tuple[int, int]) -> BlockPlan:
    """`build_plan` remembered process-wide: plans are small index tensors, and a run at a layout
    already planned (a second prompt, a benchmark after its warm-up) should plan nothing."""
    return build_plan(layout, list(patterns), block_size)


def aligned_plan(
    layout: TokenLayout, patterns: Pattern | Sequence[Pattern], block_size: int | tuple[int, int] = 64
) -> BlockPlan:
    """The plan static methods run: `build_plan` on `layout.block_aligned(...)`, whose token order
    it uses (`TokenLayout.move_to` carries q, k, v and the output there and back)."""
    return build_plan(layout.block_aligned(*as_pair(block_size)), patterns, block_size)
