"""One owner for every sparse attention call: integrations describe a call, the runner decides and computes.

An integration (diffusers processors, the transformers attention function) turns each attention
call it intercepts into an `AttentionCall`:

- `layer`: the attention module's name; `query` [B, H, N_q, D], `key`/`value` [B, H_kv, N_kv, D]
  (H % H_kv == 0), `scale` (None: 1/sqrt(D));
- `dense`: the model's own attention for this call, [B, H, N_q, D], run whenever the call runs
  dense, so a dense call is exactly what the model computes;
- `at`: where the call is (`Step`: step, CFG branch, generation number, total steps when known);
- `layout`: the TokenLayout of the call's tokens (None for a language model's sequence);
- `groups`: for key-padded text, (valid keys, sample indices) per distinct mask;
- `dense_reason`: set when the integration already knows the call cannot be sparse (cross-
  attention, an unknown mask or layout), with `governed` False for calls the config never makes
  sparse (they stay out of the generation's density);
- `head_offset`: the first of the layer's heads this call holds, when a process holds a slice
  of them (context parallelism after its all-to-all): heads offset .. offset + H of the config.

`Runner.run(call)` returns the output and records in `GenerationStats` what it did (dense or sparse and
why, the dense-equivalent work and the share computed); `plan_seconds` accumulates the time spent
planning. The runner owns the schedule decision (dense steps and layers), per-head pattern
resolution, skipped heads' outputs kept per (layer, branch) and dropped when a new generation starts,
block plans (cached process-wide by `patterns.cached_plan`), block alignment, per-call heads
(Pyramid, HilbertWindow), per-call methods, SparseD's compute-once patterns, padding groups, the
plan run, whole-layer reuse (`reused_layer` / `keep_layer`), the size bucket of a config
searched at several sizes, and the speed check (`methods.speed`): a kind of call whose sparse
form timed no faster than dense runs dense. It imports nothing of diffusers or transformers.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from sparsediff.attention import sparse_attention
from sparsediff.config import SparseConfig
from sparsediff.kernels import expand_kv
from sparsediff.layout import TokenLayout
from sparsediff.methods import DYNAMIC, layer_patterns, per_call_heads, searched_patterns
from sparsediff.methods.sparsed import SparsedPatterns
from sparsediff.methods.speed import DENSE_REASON, SpeedCheck, check_for, device_name, environment_key, never_slower
from sparsediff.patterns import PER_CALL, Full, Pattern, Skip, cached_plan
from sparsediff.plan import BlockPlan

Tensor = torch.Tensor


@dataclass(frozen=True)
class Step:
    """Where a call is: its denoising step (-1: unknown), its branch within the step (CFG), which
    generation (one pipeline call, or one sequence of a language model), and the generation's step
    count when known."""

    step: int = -1
    branch: str | int = 0
    generation: int = 0
    total: int | None = None


@dataclass
class AttentionCall:
    layer: str
    query: Tensor
    key: Tensor
    value: Tensor
    dense: Callable[[], Tensor]
    at: Step = Step()
    scale: float | None = None
    layout: TokenLayout | None = None
    groups: list[tuple[Tensor, Tensor]] | None = None
    dense_reason: str | None = None
    governed: bool = True
    head_offset: int = 0

    @property
    def work(self) -> float:
        """Dense attention work: batch x heads x queries x keys."""
        q, k = self.query, self.key
        return float(q.shape[0] * q.shape[1] * q.shape[-2] * k.shape[-2])


@dataclass(frozen=True)
class KeptHeads:
    """What a layer keeps for its skipped heads: their indices and outputs [B, len(heads), N, D]."""

    heads: tuple[int, ...]
    output: Tensor


def kept_bytes_of(skipped_heads: int, batch: int, tokens: int, head_dim: int, itemsize: int, branches: int = 1) -> int:
    """What `Runner.kept_bytes` holds for this many skipped heads (summed over layers): each keeps
    its output [batch, tokens, head_dim] per CFG branch run as its own call. A layer reused whole
    keeps its processor output instead, the same size for DiT layers (hidden = heads x head_dim)."""
    return skipped_heads * batch * tokens * head_dim * itemsize * branches


def _tensors(value) -> list[Tensor]:
    """The tensors of a processor output (a tensor, or a tuple of them)."""
    if isinstance(value, Tensor):
        return [value]
    return [v for v in value if isinstance(v, Tensor)] if isinstance(value, (tuple, list)) else []


def check_dense_layers(schedule, layers: Sequence[str]) -> None:
    """Refuse `schedule.dense_layers` entries that name no attention layer of the model."""
    for d in schedule.dense_layers:
        if isinstance(d, str) and d not in layers:
            raise ValueError(f"schedule.dense_layers names {d!r}, which is not an attention layer of this model")
        if isinstance(d, int) and not -len(layers) <= d < len(layers):
            raise ValueError(f"schedule.dense_layers index {d} is out of range for {len(layers)} attention layers")


@dataclass
class GenerationStats:
    """How attention calls were served, shared by every runner of a pipeline (both experts).

    A diffusers pipeline restarts them when a call starts, so they can be read after it. Work
    is dense-equivalent attention work of the calls the config governs (self and joint attention;
    cross-attention is never made sparse).
    """

    generation: int = 0
    calls: Counter = field(default_factory=Counter)
    work: float = 0.0  # every governed call, dense ones included
    computed: float = 0.0
    sparse_work: float = 0.0  # calls that ran a sparse plan or reused
    sparse_computed: float = 0.0

    def restart(self, generation: int) -> None:
        self.generation, self.calls = generation, Counter()
        self.work = self.computed = self.sparse_work = self.sparse_computed = 0.0

    def record(self, reason: str, work: float | None = None, density: float = 1.0) -> None:
        """Count one call; `work` None for calls outside what the config governs."""
        self.calls[reason] += 1
        if work is None:
            return
        self.work += work
        self.computed += work * density
        if reason.startswith("sparse"):
            self.sparse_work += work
            self.sparse_computed += work * density

    def density(self) -> float | None:
        """Share of the generation's governed attention work computed, dense steps and layers included."""
        return self.computed / self.work if self.work else None

    def sparse_density(self) -> float | None:
        """The same share over the calls that ran sparse only (what a plan's density says)."""
        return self.sparse_computed / self.sparse_work if self.sparse_work else None


class Runner:
    """Runs every attention call of one model (one transformer, one language model) under a config."""

    def __init__(
        self,
        config: SparseConfig,
        layers: Sequence[str],
        heads: dict[str, int | None] | None = None,
        stats: GenerationStats | None = None,
        speed: SpeedCheck | None = None,
    ) -> None:
        self.config = config
        self.layers = list(layers)  # attention module names in module order (dense_layers indexes them)
        self.heads = heads or {}  # layer -> head count, where known (whole-layer reuse needs it)
        self.stats = stats or GenerationStats()
        self.plans: dict = {}  # (layer, layout, heads, skipped heads running, head offset) -> BlockPlan
        # (layer, branch) -> KeptHeads; ("layer output", layer, branch) -> (input shapes, output, work)
        self.reuse: dict = {}
        self.sparsed = SparsedPatterns(config) if config.method == "sparsed" else None
        self.plan_seconds = 0.0  # one-off time spent building plans
        self._generation = 0  # the generation that `reuse` and SparseD's patterns belong to
        # layer -> (work, layout) of its running call, if it kept its output
        self._kept_now: dict[str, tuple[float, TokenLayout]] = {}
        self._layer_index = {name: i for i, name in enumerate(self.layers)}
        self.speed = (speed or check_for(config)) if never_slower(config) else None
        self._speed_keys: dict[tuple, str] = {}  # kind of call -> its key in the speed profile
        self._grids_seen: set[tuple[int, int, int]] = set()  # grids a size bucket was picked for
        # Layers whose heads never reuse a past output: a cache stacked on top compares their output
        # from step to step (FirstBlockCache's first block), and a reused output would look unchanged.
        self.fresh_layers: set[str] = set()
        # Every setting that changes what a call computes (and so how fast it runs).
        self._method_key = config.model_dump_json(include={"method", "density", "keep_ratio", "block_size",
            "kv_block_size", "order", "coarse_pool", "mass", "mass_rows", "recompute_every", "backend"})  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Runner(method={self.config.method!r}, layers={len(self.layers)}, plans={len(self.plans)}, "
            f"kept={len(self.reuse)}, calls={dict(self.stats.calls)})"
        )

    # --- generations -------------------------------------------------------------------------

    def begin(self, at: Step) -> None:
        """Drop the state kept for an earlier generation. (When stats restart is the integration's
        choice: per pipeline call for diffusers, never for a language model's requests.)"""
        if self._generation != at.generation:
            self.release()
            if self.sparsed is not None:
                self.sparsed.reset()
            self._generation = at.generation

    def release(self) -> None:
        """Free the outputs kept for reuse (skipped heads' outputs, whole layers' outputs)."""
        self.reuse.clear()
        self._kept_now.clear()

    def dense_now(self, layer: str, at: Step) -> bool:
        """The schedule: dense on the first steps (unknown step -1: never) and on dense layers."""
        return 0 <= at.step < self.config.schedule.dense_step_count(at.total) or self.dense_layer(layer)

    def dense_layer(self, layer: str) -> bool:
        """Whether `schedule.dense_layers` names `layer` (by name, or its index from either end)."""
        index = self._layer_index.get(layer)
        if index is None:
            return False
        return any(d in (layer, index, index - len(self.layers)) for d in self.config.schedule.dense_layers)

    # --- one call -----------------------------------------------------------------------------

    def run(self, call: AttentionCall) -> Tensor:
        self.begin(call.at)
        if call.dense_reason is not None:
            return self._dense(call, call.dense_reason)
        method = self.config.method
        if method == "sparsed":
            return self._sparsed(call)
        if call.layout is None:
            return self._dense(call, "dense: preset" if method == "dense" else "dense: no layout")
        if self.dense_now(call.layer, call.at):
            out = self._dense(call, "dense: schedule")
            if call.groups is None and method not in DYNAMIC:
                self._keep_if_skips(call, out, self._call_patterns(call))
            return out
        if call.groups is not None:
            masks = tuple((int(valid.sum()), len(samples)) for valid, samples in call.groups)
            what = ("padded", self._method_key if method in DYNAMIC else tuple(self._call_patterns(call)), masks)
            return self._checked(call, what, lambda: self._padded(call), "sparse: padded text")
        if method in DYNAMIC:
            q, k, v, layout, scale = call.query, call.key, call.value, call.layout, call.scale
            return self._checked(call, ("method", self._method_key), lambda: self._per_call(q, k, v, layout, scale))
        return self._static(call)

    def _dense(self, call: AttentionCall, reason: str) -> Tensor:
        self.stats.record(reason, call.work if call.governed else None)
        return call.dense()

    def _checked(self, call: AttentionCall, what, sparse: Callable[[], tuple[Tensor, float]], reason: str = "sparse"):
        """sparse() -> (output, density), unless the speed check found this kind of call (`what`
        runs, at this layout, shapes, dtype, device) no faster than dense; then the call runs dense."""
        verdict, measured = True, None
        if self.speed is not None:
            key = self._speed_key(call, what)
            verdict = self.speed.verdict(key)
            if verdict is None:  # first met on this machine: measured now, the verdict's output returned
                label = self._speed_label(call, what)
                verdict, measured = self.speed.decide(key, label, call, sparse, call.dense, call.query.device)
        if not verdict:
            if measured is None:
                return self._dense(call, DENSE_REASON)
            self.stats.record(DENSE_REASON, call.work if call.governed else None)
            return measured
        out, density = measured if measured is not None else sparse()
        self.stats.record(reason, call.work, density)
        return out

    def _speed_key(self, call: AttentionCall, what) -> str:
        """The kind of call in the speed profile: a hash of everything that changes how fast it
        runs. Every checked call asks, so the hash is kept per kind for this runner (the thread
        count is part of it: it can change between calls)."""
        q, k = call.query, call.key
        kind = (what, call.layout, tuple(q.shape), tuple(k.shape), q.dtype, q.device, torch.get_num_threads())
        key = self._speed_keys.get(kind)
        if key is None:
            text = repr((what, self._method_key, call.layout, self.config.plan_blocks, tuple(q.shape),
                         tuple(k.shape), str(q.dtype)))  # fmt: skip
            key = hashlib.sha256(f"{text}|{environment_key(q.device)}".encode()).hexdigest()[:24]
            self._speed_keys[kind] = key
        return key

    def _speed_label(self, call: AttentionCall, what) -> str:
        """A line a person can read for the kind of call (`sparsediff profile` shows it)."""
        q, k = call.query, call.key
        grid = "x".join(map(str, call.layout.grid)) if call.layout is not None else "-"
        return (f"{self.config.method} {what[0]} {call.layer} grid {grid} q{tuple(q.shape)} kv{k.shape[-2]} "
                f"{str(q.dtype).removeprefix('torch.')} {device_name(q.device)}")  # fmt: skip

    def _call_patterns(self, call: AttentionCall) -> list[Pattern]:
        return self.head_patterns(call.layer, call.layout, call.query.shape[1], call.head_offset)

    def _keep_if_skips(self, call: AttentionCall, out: Tensor, patterns: list[Pattern]) -> None:
        """Layers with skipped heads keep those heads' last output (per CFG branch) for reuse, and
        nothing of the other heads: on a real model each kept head is B x N x D per branch."""
        skipped = [h for h, p in enumerate(patterns) if isinstance(p, Skip)]
        if skipped:
            self.reuse[(call.layer, call.at.branch)] = KeptHeads(tuple(skipped), out[:, skipped].clone())
            self._kept_now[call.layer] = (call.work, call.layout)

    def _kept_output(self, call: AttentionCall) -> Tensor | None:
        """A full-shaped tensor holding the kept heads' outputs (the others unset), or None when
        nothing fits this call."""
        kept = self.reuse.get((call.layer, call.at.branch))
        q = call.query
        if kept is None or kept.output.shape != (q.shape[0], len(kept.heads), *q.shape[2:]):
            return None
        previous = torch.empty_like(q)
        previous[:, list(kept.heads)] = kept.output
        return previous

    def kept_bytes(self) -> int:
        """Memory held for reuse now: kept heads' outputs and layers' whole outputs."""
        total = 0
        for kept in self.reuse.values():
            tensors = [kept.output] if isinstance(kept, KeptHeads) else _tensors(kept[1])  # (inputs, output, ...)
            total += sum(t.numel() * t.element_size() for t in tensors)
        return total

    def _static(self, call: AttentionCall) -> Tensor:
        """A static plan (local, pattern), skipped heads reusing their kept output where they may;
        a searched layer whose heads are all `Full` runs the model's dense attention."""
        patterns = self._call_patterns(call)
        if self.config.method == "pattern" and all(isinstance(p, Full) for p in patterns):
            return self._dense(call, "dense: full pattern")
        reuses = any(isinstance(p, Skip) for p in patterns) and call.layer not in self.fresh_layers
        previous = self._kept_output(call) if reuses else None
        running = self._skipped_heads_running(patterns, call.at, can_reuse=previous is not None)
        what = ("plan", tuple(Full() if h in running else p for h, p in enumerate(patterns)))
        out = self._checked(call, what, lambda: self._static_attention(
            call, call.layout, call.query, call.key, call.value, patterns, previous))  # fmt: skip
        self._keep_if_skips(call, out, patterns)
        return out

    def _static_attention(self, call: AttentionCall, layout: TokenLayout, q, k, v, patterns, previous):
        """(output, density) of the layer's static plan for these heads on q, k, v in `layout`;
        skipped heads read `previous` where they reuse (without it they run in full)."""
        heads = q.shape[1]
        running = self._skipped_heads_running(patterns, call.at, can_reuse=previous is not None)
        plan = self.plan(call.layer, layout, heads, running, call.head_offset)
        reuse, per_call_density = self._per_call_heads(patterns, layout, q, k, v, previous, call.scale)
        return self._run_plan(plan, layout, q, k, v, call.scale, reuse), plan.density + per_call_density

    def _padded(self, call: AttentionCall) -> tuple[Tensor, float]:
        """Sparse attention over the unmasked tokens of each group of samples sharing a key mask:
        (output, density of the call's dense work).

        Padded text keys are dropped (the layout shrinks to the valid text); padded query rows,
        whose outputs only ever reach other padded tokens, attend densely over the valid keys, as
        the masked dense call would. Skipped heads compute in full here (no reuse across masks).
        """
        query, key, value, layout, scale = call.query, call.key, call.value, call.layout, call.scale
        covered = sorted(torch.cat([samples for _, samples in call.groups]).tolist())
        if covered != list(range(query.shape[0])):  # every row is filled below, or the call is refused
            raise ValueError(f"padding groups cover samples {covered} of a batch of {query.shape[0]}")
        gqa = key.shape[1] != query.shape[1]
        out = torch.empty_like(query)
        heads, n = query.shape[1], query.shape[-2]
        computed = 0.0
        for valid, samples in call.groups:
            keep, pad = valid.nonzero().squeeze(1), (~valid).nonzero().squeeze(1)
            q, k, v = (t[samples][:, :, keep] for t in (query, key, value))
            text = keep.numel() - layout.num_visual
            sub = replace(layout, **({"text_prefix": text} if layout.text_prefix else {"text_suffix": text}))
            if self.config.method in DYNAMIC:
                result, density = self._per_call(q, k, v, sub, scale)
            else:
                patterns = self.head_patterns(call.layer, sub, heads, call.head_offset)
                result, density = self._static_attention(call, sub, q, k, v, patterns, None)
            computed += len(samples) * (keep.numel() ** 2 * density + pad.numel() * keep.numel())
            padded = (
                F.scaled_dot_product_attention(query[samples][:, :, pad], k, v, scale=scale, enable_gqa=gqa)
                if pad.numel()
                else None
            )
            for i, b in enumerate(samples.tolist()):
                out[b, :, keep] = result[i]
                if padded is not None:
                    out[b, :, pad] = padded[i]
        return out, computed / (query.shape[0] * n * n)

    def _sparsed(self, call: AttentionCall) -> Tensor:
        """SparseD: dense until the switch step, which takes the patterns; sparse after."""
        switch = self.config.schedule.dense_step_count(call.at.total)
        if call.at.step < switch or self.dense_layer(call.layer):
            return self._dense(call, "dense: schedule")
        step = call.at.step

        def attend():
            return self.sparsed.attend(call.layer, call.query, call.key, call.value, call.scale, step, switch)

        if self.sparsed.pattern_step(call.layer, call.query, call.key, step, switch):
            out, reason, density = attend()
            self.stats.record(reason, call.work, density)
            return out
        return self._checked(call, ("sparsed", call.layer), lambda: attend()[::2])

    # --- plans and heads ------------------------------------------------------------------------

    def head_patterns(self, layer: str, layout: TokenLayout, heads: int, offset: int = 0) -> list[Pattern]:
        """The patterns of the `heads` heads from `offset` a call holds (all of the layer's, unless a
        process holds a slice of them)."""
        total = self.heads.get(layer) or heads
        if self.config.sizes and layout.grid not in self._grids_seen:
            self._grids_seen.add(layout.grid)
            bucket, inside = self.config.size_bucket(layout.grid)
            if not inside:
                searched = ", ".join("x".join(map(str, b.grid)) for b in self.config.sizes)
                warnings.warn(
                    f"sparsediff: latent grid {'x'.join(map(str, layout.grid))} (frames x height x width) lies "
                    f"outside the sizes this config was searched at ({searched}); using the patterns of the "
                    f"nearest, {'x'.join(map(str, bucket.grid))}. Search at this size too for patterns made for it "
                    "(sparsediff search --size ...)",
                    stacklevel=2,
                )
        if offset == 0 and heads == total:
            return layer_patterns(self.config, layer, layout, heads)
        if offset + heads > total:
            raise ValueError(f"{layer!r} has {total} heads; a call cannot hold heads {offset}..{offset + heads - 1}")
        return layer_patterns(self.config, layer, layout, total)[offset : offset + heads]

    def plan(
        self, layer: str, layout: TokenLayout, heads: int, running: frozenset[int] = frozenset(), offset: int = 0
    ) -> BlockPlan:
        """The plan of the layer's heads offset .. offset + heads, with the skipped heads in
        `running` computed in full (`Full`), in the token order of `layout.block_aligned(...)`.
        Plans are remembered process-wide (`patterns.cached_plan`), so a second generation at the same
        layout builds none."""
        key = (layer, layout, heads, running, offset)
        if key not in self.plans:
            aligned = layout.block_aligned(*self.config.plan_blocks)
            patterns = self.head_patterns(layer, aligned, heads, offset)
            patterns = tuple(Full() if h in running else p for h, p in enumerate(patterns))
            start = time.perf_counter()
            self.plans[key] = cached_plan(aligned, patterns, self.config.plan_blocks)
            self.plan_seconds += time.perf_counter() - start
        return self.plans[key]

    def _run_plan(self, plan: BlockPlan, layout: TokenLayout, query, key, value, scale, reuse) -> Tensor:
        """`sparse_attention` of a static plan, in the plan's token order and back."""
        aligned = layout.block_aligned(*self.config.plan_blocks)
        q, k, v, reuse = (t if t is None else layout.move_to(t, aligned) for t in (query, key, value, reuse))
        out = sparse_attention(q, k, v, plan, self.config.backend, scale=scale, reuse=reuse)
        return aligned.move_to(out, layout)

    def _per_call(self, query: Tensor, key: Tensor, value: Tensor, layout: TokenLayout, scale) -> tuple[Tensor, float]:
        """A method planned per call (pyramid, topk, hilbert, raster-window): (output, density)."""
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        return DYNAMIC[self.config.method](query, key, value, layout, self.config, scale)

    def _per_call_heads(self, patterns, layout, query, key, value, reuse, scale) -> tuple[Tensor | None, float]:
        """`reuse` with the layer's per-call heads (`Pyramid`, `HilbertWindow`) filled, heads with
        the same pattern in one call, and their share of the density."""
        heads = query.shape[1]
        by_pattern: dict[Pattern, list[int]] = {}
        for h, p in enumerate(patterns):
            if isinstance(p, PER_CALL):
                by_pattern.setdefault(p, []).append(h)
        if not by_pattern:
            return reuse, 0.0
        key, value = expand_kv(key, heads), expand_kv(value, heads)
        filled = torch.empty_like(query) if reuse is None else reuse.clone()
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        density = 0.0
        for pattern, chosen in by_pattern.items():
            idx = torch.tensor(chosen, device=query.device)
            out, head_density = per_call_heads(pattern, query[:, idx], key[:, idx], value[:, idx], layout,
                                               self.config.block_size, self.config.backend, scale)  # fmt: skip
            filled[:, idx] = out
            density += head_density * len(chosen) / heads
        return filled, density

    @staticmethod
    def _skipped_heads_running(patterns: list[Pattern], at: Step, can_reuse: bool) -> frozenset[int]:
        """Skipped heads that run in full now: on their refresh steps, or when there is nothing to reuse."""
        return frozenset(
            h
            for h, p in enumerate(patterns)
            if isinstance(p, Skip) and (not can_reuse or at.step < 0 or p.runs_at(at.step))
        )

    # --- whole-layer reuse ------------------------------------------------------------------------

    def _skips(self, layer: str, layout: TokenLayout) -> list[Skip] | None:
        """The layer's head patterns at `layout` when every one is a `Skip`, else None."""
        heads = self.heads.get(layer)
        if self.config.method != "pattern" or heads is None:
            return None
        patterns = searched_patterns(self.config, layer, heads, layout)
        return patterns if all(isinstance(p, Skip) for p in patterns) else None

    def reuses_whole_layer(self, layer: str, at: Step, layout: TokenLayout) -> bool:
        """Every head of `layer` reuses its output now at `layout`: not a refresh step of any, not dense."""
        skips = self._skips(layer, layout)
        if skips is None or at.step < 0 or self.dense_now(layer, at) or layer in self.fresh_layers:
            return False
        return not any(p.runs_at(at.step) for p in skips)

    def reused_layer(self, layer: str, at: Step, inputs: tuple) -> object | None:
        """The layer's last whole output, when all its heads reuse now and it was kept for these
        input shapes (the caller skips its projections too); None: run the layer."""
        self.begin(at)
        self._kept_now.pop(layer, None)
        kept = self.reuse.get(("layer output", layer, at.branch))
        if kept is None or kept[0] != inputs or not self.reuses_whole_layer(layer, at, kept[3]):
            return None
        self.stats.record("sparse: layer reused", kept[2], 0.0)
        return kept[1]

    def keep_layer(self, layer: str, at: Step, inputs: tuple, output: object) -> None:
        """Keep a layer's whole output when all its heads skip and its attention kept its output.
        With one period for all its heads, a step either refreshes all of them or reuses the layer
        whole, so when the next step reuses it whole its heads' outputs are dropped: the layer
        keeps only what it returns."""
        if layer not in self._kept_now:
            return
        work, layout = self._kept_now[layer]
        skips = self._skips(layer, layout)
        if skips is not None:
            self.reuse[("layer output", layer, at.branch)] = (inputs, output, work, layout)
            following = Step(at.step + 1, at.branch, at.generation, at.total)
            if len({p.every for p in skips}) == 1 and self.reuses_whole_layer(layer, following, layout):
                self.reuse.pop((layer, at.branch), None)
