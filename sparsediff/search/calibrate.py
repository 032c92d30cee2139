"""Calibration: during a dense run, score every candidate pattern per layer and head.

At sampled steps each self/joint attention call picks a fixed, seeded sample of visual query
rows, takes their exact output (from the dense call itself), and recomputes those rows under
every candidate's block mask. Relative squared L2 errors accumulate per (layer, head,
candidate). `Skip(every=k)` is scored as the runtime serves it: on its refresh steps (and dense
steps) it is exact, on the others it reuses the rows' exact output from the last refresh step,
so the error counts the real staleness (up to k - 1 steps). A band-plus-heavy-columns
candidate takes, per head, the visual key columns that got the most attention mass from the
sampled rows of the layer's first sampled call, and is scored from the next sampled call on
(never on the rows that chose its columns). Nothing but the sampled rows' outputs and those
columns is kept across calls: memory is O(layers x heads x rows x dim), and per call the extra
work is about candidates x rows / tokens of one dense attention.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sparsediff.config import SparseConfig
from sparsediff.integrations.diffusers import SparseState, install, remove
from sparsediff.kernels import expand_kv
from sparsediff.layout import TokenLayout
from sparsediff.media import frames_of
from sparsediff.methods import per_call_heads
from sparsediff.patterns import PER_CALL, Full, Pattern, Skip, Stripe, build_plan
from sparsediff.search.candidates import BandAndHeavyColumns, Candidate, default_candidates

Tensor = torch.Tensor
_SCORE_BUFFER = 1 << 24  # elements of one chunk of scores (heads x rows x keys)


@dataclass
class LayerErrors:
    """Accumulated squared errors and squared norms, [heads, candidates] (float64)."""

    err: Tensor
    norm: Tensor
    calls: int = 0

    def relative(self) -> Tensor:
        """Relative L2 error per head and candidate (inf where a candidate was never scored)."""
        return torch.where(self.norm > 0, (self.err / self.norm.clamp_min(1e-300)).sqrt(), torch.inf)


@dataclass
class Calibration:
    """What `CalibrationState` collects; shared by all transformers of one pipeline."""

    candidates: list[Candidate]
    sample_steps: frozenset[int]
    rows: int
    seed: int
    dense_steps: int = 0  # the schedule's dense first steps: every head runs in full there
    errors: dict[str, LayerErrors] = field(default_factory=dict)
    layouts: dict[str, TokenLayout] = field(default_factory=dict)  # the layout each layer was scored at
    head_dims: dict[str, int] = field(default_factory=dict)
    batch: int = 1  # of the attention calls (2 with classifier-free guidance in one batch)
    branches: set = field(default_factory=set)  # CFG branches run as separate calls (each keeps its own outputs)
    itemsize: int = 4  # bytes per element of the model's attention outputs
    columns: dict[str, list[tuple]] = field(default_factory=dict)  # layer -> per head, heaviest key positions
    # layer -> per processor call, its time outside attention over its dense attention time
    outside: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _refreshed: dict = field(default_factory=dict)  # (layer, branch, every) -> rows at the last refresh
    _key_masks: dict = field(default_factory=dict)

    def resolve(self, layer: str, head: int, candidate: int) -> Pattern:
        """The pattern candidate `candidate` stands for at this layer and head."""
        chosen = self.candidates[candidate]
        if isinstance(chosen, BandAndHeavyColumns):
            return chosen.resolve(self.columns[layer][head])
        return chosen


class DenseWatcher(SparseState):
    """Serves every attention call densely; self/joint calls with a known layout also go to `watch`."""

    _inside_s: float = 0.0  # time in `attend` during the running processor call (watching included)
    _sdpa_s: float = 0.0  # of which dense attention itself

    def attend(self, layer, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, *, head_offset=0):  # fmt: skip
        start = time.perf_counter()
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )
        self._sdpa_s += time.perf_counter() - start
        facts = self.describe(layer, query, key, attn_mask, is_causal, dropout_p)
        layout = facts.get("layout") if "groups" not in facts else None  # unmasked self/joint attention only
        if layout is not None:
            with torch.no_grad():
                self.watch(layer, query, key, value, out, layout, query.shape[-1] ** -0.5 if scale is None else scale)
        self._inside_s += time.perf_counter() - start
        return out

    def processor_done(self, layer: str, seconds: float) -> None:
        self.outside(layer, seconds - self._inside_s, self._sdpa_s)
        self._inside_s = self._sdpa_s = 0.0

    def outside(self, layer: str, outside_s: float, sdpa_s: float) -> None:
        """A processor call's time outside attention (projections, norms) and its dense attention time."""

    def watch(self, layer, query, key, value, out, layout: TokenLayout, scale: float) -> None:
        raise NotImplementedError


class CalibrationState(DenseWatcher):
    """At sampled steps, scores every candidate against the dense output."""

    calibration: Calibration  # set by the search on a bound subclass

    def watch(self, layer, query, key, value, out, layout: TokenLayout, scale: float) -> None:
        self.calls["calibration: dense"] += 1
        self._score(layer, query, key, value, out, layout, scale)

    def outside(self, layer: str, outside_s: float, sdpa_s: float) -> None:
        if layer in self.calibration.errors and sdpa_s > 0:
            self.calibration.outside[layer].append(outside_s / sdpa_s)

    def _score(self, layer, query, key, value, out, layout: TokenLayout, scale: float) -> None:
        cal = self.calibration
        if not cal.candidates:  # in layout units, from the first layout seen
            cal.candidates.extend(default_candidates(layout, block_size=self.config.block_size))
        rows = sample_rows(layout, cal.rows, cal.seed)
        exact = out[:, :, rows].double()
        step = self.tracker.step
        stale = {}  # every -> rows a skipped head serves now (None: it runs in full now)
        for skip in {p for p in cal.candidates if isinstance(p, Skip)}:
            slot = (layer, self.tracker.branch, skip.every)
            refresh = step < cal.dense_steps or skip.runs_at(step) or slot not in cal._refreshed
            stale[skip.every] = None if refresh else cal._refreshed[slot]
            if refresh:
                cal._refreshed[slot] = exact
        if step not in cal.sample_steps:
            return
        heads, n_cand = query.shape[1], len(cal.candidates)
        stats = cal.errors.setdefault(
            layer,
            LayerErrors(
                torch.zeros(heads, n_cand, dtype=torch.float64), torch.zeros(heads, n_cand, dtype=torch.float64)
            ),
        )
        cal.layouts.setdefault(layer, layout)
        cal.head_dims.setdefault(layer, query.shape[-1])
        cal.batch = query.shape[0]
        cal.branches.add(self.tracker.branch)
        cal.itemsize = query.element_size()
        stats.calls += 1
        norm = exact.square().sum(dim=(0, 2, 3))  # [H]
        key, value = expand_kv(key, heads), expand_kv(value, heads)
        q_rows = query[:, :, rows]
        per_chunk = max(1, _SCORE_BUFFER // (q_rows.shape[0] * rows.numel() * key.shape[-2]))
        block, plan_blocks = self.config.block_size, self.config.plan_blocks
        heavy = [p.count for p in cal.candidates if isinstance(p, BandAndHeavyColumns)]
        choosing_columns = bool(heavy) and layer not in cal.columns
        if choosing_columns:
            cal.columns[layer] = _heaviest_columns(q_rows, key, layout, scale, max(heavy), per_chunk)
        for c, pattern in enumerate(cal.candidates):
            if isinstance(pattern, BandAndHeavyColumns):
                if not choosing_columns:
                    allowed = torch.stack(
                        [_plan_key_mask(pattern.resolve(p), layout, plan_blocks, rows) for p in cal.columns[layer]]
                    )
                    stats.norm[:, c] += norm
                    stats.err[:, c] += _masked_error(q_rows, key, value, exact, allowed, scale, per_chunk)
                continue
            stats.norm[:, c] += norm
            if isinstance(pattern, Skip):
                served = stale[pattern.every]
                if served is not None:
                    stats.err[:, c] += (served - exact).square().sum(dim=(0, 2, 3))
                continue
            if isinstance(pattern, Full):
                continue
            if isinstance(pattern, PER_CALL):  # planned per call: run it on the whole call, keep the rows
                approx = per_call_heads(pattern, query, key, value, layout, block, self.config.backend, scale)[0]
                stats.err[:, c] += (approx[:, :, rows].double() - exact).square().sum(dim=(0, 2, 3))
                continue
            allowed = _key_mask(cal, pattern, layout, plan_blocks, rows)
            stats.err[:, c] += _masked_error(q_rows, key, value, exact, allowed, scale, per_chunk)


def _chunks(heads: int, per_chunk: int):
    for h0 in range(0, heads, per_chunk):
        yield h0, min(heads, h0 + per_chunk)


def _masked_error(q_rows, key, value, exact, allowed: Tensor, scale: float, per_chunk: int) -> Tensor:
    """[heads] squared error of the sampled rows when each may only see `allowed` keys.

    `allowed` is [rows, N] (every head alike) or [heads, rows, N].
    """
    err = torch.zeros(q_rows.shape[1], dtype=torch.float64)
    allowed = allowed.to(q_rows.device)
    for h0, h1 in _chunks(q_rows.shape[1], per_chunk):
        scores = (q_rows[:, h0:h1] @ key[:, h0:h1].transpose(-1, -2)).float() * scale
        mask = allowed if allowed.dim() == 2 else allowed[h0:h1]
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        approx = (probs @ value[:, h0:h1].float()).double()
        err[h0:h1] = (approx - exact[:, h0:h1]).square().sum(dim=(0, 2, 3)).cpu()
    return err


def _heaviest_columns(q_rows, key, layout: TokenLayout, scale: float, count: int, per_chunk: int) -> list[tuple]:
    """Per head, the `count` visual keys that got the most attention mass from the sampled rows (layout units)."""
    mass = torch.zeros(q_rows.shape[1], layout.num_visual, dtype=torch.float64)
    for h0, h1 in _chunks(q_rows.shape[1], per_chunk):
        probs = ((q_rows[:, h0:h1] @ key[:, h0:h1].transpose(-1, -2)).float() * scale).softmax(-1)
        mass[h0:h1] = probs[..., layout.visual_slice].sum(dim=(0, 2)).double().cpu()
    top = mass.topk(min(count, layout.num_visual), dim=-1).indices  # ties: torch's order, fixed for fixed inputs
    return [Stripe.positions_of(layout, layout.coords[layout.visual_slice][t]) for t in top]


def seeded_frames(pipe, prompt: str, seed: int, num_inference_steps: int, **call_kwargs) -> np.ndarray:
    """One generation's frames from `seed` (how a search runs prompt i: seed + i)."""
    output = pipe(prompt=prompt, num_inference_steps=num_inference_steps,
                  generator=torch.Generator().manual_seed(seed), **call_kwargs)  # fmt: skip
    return frames_of(output)


def watched_dense_runs(pipe, state_class: type[SparseState], prompts, block_size: int, seed: int,
                       num_inference_steps: int, progress: bool = False, kv_block_size: int | None = None,
                       backend: str = "auto", keep_frames: bool = False, first: int = 0,
                       after_each: Callable[[int, np.ndarray | None], None] | None = None,
                       **call_kwargs) -> None:  # fmt: skip
    """Run the pipeline once per prompt (seed + i) with `state_class` watching every attention call;
    `backend` runs what the watcher computes beside dense attention (per-call candidates). A
    resumed calibration starts at prompt `first`; `after_each(i, frames)` follows each run, with
    its frames when `keep_frames` (dense: the watcher changes nothing), else None."""
    config = SparseConfig(method="dense", block_size=block_size, kv_block_size=kv_block_size, backend=backend)
    install(pipe, config, state_class)
    try:
        runs = tqdm(total=len(prompts), initial=first, desc="dense runs", disable=not progress)
        for i in range(first, len(prompts)):
            frames = seeded_frames(pipe, prompts[i], seed + i, num_inference_steps, **call_kwargs)
            if after_each:
                after_each(i, frames if keep_frames else None)
            runs.update(1)
        runs.close()
    finally:
        remove(pipe)


@lru_cache(maxsize=64)
def sample_rows(layout: TokenLayout, rows: int, seed: int) -> Tensor:
    """A fixed, seeded sample of visual query rows of this layout (sorted positions)."""
    gen = torch.Generator().manual_seed(seed)
    count = min(rows, layout.num_visual)
    return torch.randperm(layout.num_visual, generator=gen)[:count].sort().values + layout.text_prefix


def _key_mask(cal: Calibration, pattern: Pattern, layout: TokenLayout, blocks: tuple[int, int], rows) -> Tensor:
    """`_plan_key_mask`, cached per candidate shared by all heads."""
    key = (pattern, layout, blocks)
    if key not in cal._key_masks:
        cal._key_masks[key] = _plan_key_mask(pattern, layout, blocks, rows)
    return cal._key_masks[key]


def _plan_key_mask(pattern: Pattern, layout: TokenLayout, blocks: tuple[int, int], rows: Tensor) -> Tensor:
    """[rows, N] keys the pattern's plan computes for each sampled row (text rules included), as
    the runtime plans it: in the block-aligned token order, moved back to this layout's."""
    block_q, block_kv = blocks
    aligned = layout.block_aligned(block_q, block_kv)
    mask = build_plan(aligned, pattern, blocks).to_dense_mask()[0]  # [Qb, Kb], aligned order
    where = aligned.move_to(torch.arange(layout.num_tokens), layout, dim=0)  # aligned position of each token
    keys = mask[where[rows] // block_q].repeat_interleave(block_kv, 1)[:, : layout.num_tokens]
    return aligned.move_to(keys, layout, dim=1)
