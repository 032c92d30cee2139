"""Sparse attention on diffusers pipelines: `apply`, `remove` and the `sparse` context.

How it plugs in, and why this way: every attention module keeps its own processor (its
projections, norms, rotary embeddings, masks), wrapped by a `SparseAttnProcessor` that runs it
under a `TorchFunctionMode` replacing only `F.scaled_dot_product_attention`. That one call is
where every family's core attention ends: processors that route through diffusers'
`dispatch_attention_fn` reach it through the native backend, and SD3, CogVideoX and PixArt call
it directly. A registered dispatcher backend would miss those three and needs private API
(a new `AttentionBackendName` member); per-class copies of processors would copy model code.
The wrapper also knows its layer by name, so per-layer plans need no global context.

A stateful `ModelHook` on the transformer (diffusers' hook registry) reads each forward's
timestep, cache context and latent shape: it derives the denoising step and CFG branch
(`StepTracker`) and the TokenLayout, and diffusers resets it when a pipeline call ends. This
module only describes each intercepted call (`SparseState.describe`: its role from the model,
its layout, text-padding groups, or why it must run dense) and hands it to the call's
`methods.runner.Runner`, which decides and computes (schedule, patterns, reuse, plans, kernels).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager
from torch.overrides import TorchFunctionMode

from sparsediff.attention import is_trivial_mask
from sparsediff.config import ModelSignature, SparseConfig
from sparsediff.integrations.families import (
    FAMILIES,
    SUPPORT,
    Family,
    can_reuse_whole,
    check_supported,
    family_of,
    text_padding_groups,
)
from sparsediff.layout import TokenLayout
from sparsediff.methods.runner import AttentionCall, GenerationStats, Runner, Step, check_dense_layers

logger = logging.getLogger(__name__)
Tensor = torch.Tensor

HOOK_NAME = "sparsediff_step"
STATE_ATTR = "_sparsediff_state"


@dataclass
class StepTracker:
    """Where the running pipeline call is: its denoising step, the call's branch, and which generation.

    The step comes from what the pipeline does, first found of: the `step_index` a pipeline passes
    in its cache context (`transformer.cache_context("cond", step_index=i)`); the pipeline
    scheduler's own `step_index` (one per model call of the loop, so Heun's and KDPM2's two calls
    at one timestep are two steps, as `scheduler.timesteps` counts them); the timestep alone (a
    smaller one is the next step, the same one another call of this step). The branch is the
    cache context's name (`"cond"`, `"uncond"`) or, without one, the call's order within its step;
    reuse buffers are kept per branch. A new pipeline call starts when the step goes back or the
    timestep turns against the way it has moved in this generation (most pipelines' timesteps fall;
    Lumina's rise, `1 - t / 1000`); `generation` counts them, so that every state sharing the tracker
    (Wan 2.2's two experts) drops what it kept for the previous call.
    """

    total_steps: Callable[[], int | None] = lambda: None
    scheduler_step: Callable[[], int | None] = lambda: None
    step: int = -1
    branch: str | int = 0
    generation: int = 0
    _last_t: float | None = None
    _direction: int = 0  # how t moves in this generation: -1 falling (most), +1 rising (Lumina), 0 unseen
    _calls_in_step: int = 0

    def observe(self, timestep: Tensor | float | None, context: CacheContext | None = None) -> None:
        t = None if timestep is None else float(timestep.max()) if isinstance(timestep, Tensor) else float(timestep)
        known = context.step_index if context is not None and context.step_index is not None else None
        known = self.scheduler_step() if known is None else known
        moved = 0 if t is None or self._last_t is None else (t > self._last_t) - (t < self._last_t)
        turned = moved != 0 and moved == -self._direction  # t moved against this generation's direction
        if known is not None:
            new_generation = self.step < 0 or known < self.step or (known == self.step and turned)
            step = known
        elif t is not None:
            new_generation = self._last_t is None or self.step < 0 or turned
            step = 0 if new_generation else self.step + (moved != 0)
        else:
            return  # nothing tells the step: it stays unknown (-1), so no step-dependent behaviour
        if new_generation:
            self.generation += 1
            self._direction = 0
        elif moved:
            self._direction = moved
        self._calls_in_step = 0 if new_generation or step != self.step else self._calls_in_step + 1
        self.step = step
        self.branch = context.name if context is not None else self._calls_in_step
        self._last_t = t if t is not None else self._last_t

    def reset(self) -> None:
        """The pipeline call ended: the next call is a new generation whatever its timesteps."""
        self.step, self.branch, self._calls_in_step, self._last_t, self._direction = -1, 0, 0, None, 0

    def __repr__(self) -> str:
        return f"StepTracker(generation={self.generation}, step={self.step}, branch={self.branch!r})"


@dataclass
class SparseState:
    """What `apply` installs on one transformer: it describes each attention call (role, layout,
    padding groups, where the generation is) and hands it to its `Runner`, which decides and computes.
    The step tracker and the stats are the pipeline's, shared by its transformers.

    Outputs kept for reuse are dropped when a new pipeline call starts and released when one ends
    (diffusers resets stateful hooks at the end of a pipeline call); stats restart with each call.
    """

    config: SparseConfig
    tracker: StepTracker
    layers: list[str]  # attention module names, in module order
    family: Family | None = None
    roles: dict[str, str] = field(default_factory=dict)  # layer -> Family.role; missing: "self"
    heads: dict[str, int | None] = field(default_factory=dict)  # layer -> the module's head count
    stats: GenerationStats = field(default_factory=GenerationStats)
    grid: tuple[int, int, int] | None = None  # latent grid of the current forward
    fixed_layout: TokenLayout | None = None
    runner: Runner = field(init=False)
    _warned: set = field(default_factory=set)
    _layouts: dict = field(default_factory=dict)  # (grid, n) -> TokenLayout | None

    def __post_init__(self) -> None:
        governed = {layer: h for layer, h in self.heads.items() if self.roles.get(layer, "self") == "self"}
        self.runner = Runner(self.config, self.layers, governed, self.stats)

    def __repr__(self) -> str:
        return f"SparseState({self.tracker}, {self.runner})"

    @property
    def calls(self) -> Counter:
        """How the current (or last) pipeline call's attention calls were served."""
        return self.stats.calls

    @property
    def plans(self) -> dict:
        return self.runner.plans

    @property
    def reuse(self) -> dict:
        return self.runner.reuse

    @property
    def plan_seconds(self) -> float:
        return self.runner.plan_seconds

    def density(self) -> float | None:
        """Share of the current (or last) generation's self/joint attention work computed, dense calls included."""
        return self.stats.density()

    def sparse_density(self) -> float | None:
        """Density over the calls that ran sparse only."""
        return self.stats.sparse_density()

    def at(self) -> Step:
        tracker = self.tracker
        return Step(
            tracker.step, tracker.branch, tracker.generation, tracker.total_steps() if tracker.step >= 0 else None
        )

    def observe(self, timestep, context: CacheContext | None = None) -> None:
        """Advance the step tracker; a new pipeline call drops what the last one kept."""
        self.tracker.observe(timestep, context)
        self.runner.begin(self.at())
        if self.stats.generation != self.tracker.generation:
            self.stats.restart(self.tracker.generation)

    def release(self) -> None:
        """Free the outputs kept for reuse (skipped heads' and whole layers' outputs)."""
        self.runner.release()

    def layout_for(self, n: int) -> TokenLayout | None:
        """The layout of an n-token self/joint attention call in the current forward."""
        key = (self.grid, n)
        if key not in self._layouts:
            self._layouts[key] = self._infer_layout(n)
        return self._layouts[key]

    def _infer_layout(self, n: int) -> TokenLayout | None:
        if self.fixed_layout is not None:
            return self.fixed_layout if self.fixed_layout.num_tokens == n else None
        if self.grid is None or self.family is None:
            return None
        layout, problem = self.family.layout(self.grid, n)
        if problem:
            self._warn_once(f"text:{self.family.name}", problem)
        return layout

    def describe(self, layer: str, query: Tensor, key: Tensor, attn_mask, is_causal: bool, dropout_p: float) -> dict:
        """The model-side facts of one call: its layout and padding groups, or why it runs dense
        (`governed` False for calls the config never makes sparse)."""
        role = self.roles.get(layer, "self")
        if role != "self":
            return {"dense_reason": f"dense: {role} attention", "governed": False}
        if query.shape[-2] != key.shape[-2] or is_causal or dropout_p:
            return {"dense_reason": "dense: not self-attention", "governed": False}
        layout = self.layout_for(query.shape[-2])
        if layout is None:
            return {"dense_reason": "dense: no layout"}
        if attn_mask is None or is_trivial_mask(attn_mask):
            return {"layout": layout}
        groups = text_padding_groups(attn_mask, layout, query.shape[0])
        return {"layout": layout, "groups": groups} if groups else {"dense_reason": "dense: attention mask"}

    def attend(
        self,
        layer: str,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        *,
        head_offset: int = 0,
    ) -> Tensor:
        """Stands in for `F.scaled_dot_product_attention` inside `layer`'s processor; `head_offset`:
        the first of the layer's heads this call holds (context parallelism)."""

        def native() -> Tensor:
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
            )

        facts = self.describe(layer, query, key, attn_mask, is_causal, dropout_p)
        call = AttentionCall(layer, query, key, value, native, self.at(), scale, head_offset=head_offset, **facts)
        return self.runner.run(call)

    def processor_done(self, layer: str, seconds: float) -> None:
        """Told the wall time of each processor call that ran (the search prices projections from it)."""

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


# torch's own SDPA, even where a user has rebound `F.scaled_dot_product_attention` to a wrapper
# of it (timing, logging): the wrapper's inner call is the one intercepted, not silently missed.
TORCH_SDPA = torch._C._nn.scaled_dot_product_attention


class _SDPAInterceptor(TorchFunctionMode):
    """Routes torch's `scaled_dot_product_attention` to `handler`; every other op runs unchanged."""

    def __init__(self, handler: Callable[..., Tensor]) -> None:
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is TORCH_SDPA:
            return self.handler(*args, **kwargs)
        return func(*args, **kwargs)


class SparseAttnProcessor:
    """Wraps a model's own attention processor; only its core attention becomes sparse.

    Build with `SparseAttnProcessor.wrap(inner, layer, state)`: the returned object's
    `__call__` has the inner processor's exact signature, because legacy `Attention.forward`
    drops keyword arguments the processor does not name.
    """

    def __init__(self, inner, layer: str, state: SparseState) -> None:
        self.inner = inner
        self.layer = layer
        self.state = state

    @classmethod
    def wrap(cls, inner, layer: str, state: SparseState) -> SparseAttnProcessor:
        return _processor_class(type(inner))(inner, layer, state)

    def _run(self, attn, *args, **kwargs):
        # A layer whose heads all reuse now returns its last output whole, sparing the Q/K/V and
        # output projections too (exact where `can_reuse_whole`); the runner decides and keeps it.
        state, runner = self.state, self.state.runner
        whole = can_reuse_whole(attn)
        at, inputs = state.at(), _tensor_shapes(args, kwargs)
        if whole:
            kept = runner.reused_layer(self.layer, at, inputs)
            if kept is not None:
                return kept
        start = time.perf_counter()
        attend = functools.partial(state.attend, self.layer, head_offset=_head_offset(self.inner, attn))
        with _SDPAInterceptor(attend):
            out = self.inner(attn, *args, **kwargs)
        state.processor_done(self.layer, time.perf_counter() - start)
        if whole:
            runner.keep_layer(self.layer, at, inputs, out)
        return out

    def __getattr__(self, name: str):
        # Model code reads processor attributes (e.g. `_attention_backend`): answer as the inner one.
        if name in ("inner", "layer", "state"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value) -> None:
        # ... and sets them (`enable_parallelism` sets `_parallel_config`): on the inner one too.
        if name in ("inner", "layer", "state"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r}, inner={type(self.inner).__name__})"


def _head_offset(processor, attn) -> int:
    """The first head of `attn` this process's attention calls hold: under diffusers' Ulysses
    context parallelism, rank r of degree d holds heads r * H / d .. (r + 1) * H / d after the
    all-to-all (`TemplatedUlyssesAttention` sends head chunk r to rank r)."""
    parallel = getattr(getattr(processor, "_parallel_config", None), "context_parallel_config", None)
    if parallel is None:
        return 0
    if (parallel.ring_degree or 1) > 1:
        raise ValueError(
            "sparsediff does not run under ring attention (ring_degree > 1): each process sees a chunk of the "
            "keys, not the whole sequence its plan covers; use ulysses_degree, which hands each process whole heads"
        )
    degree = parallel.ulysses_degree or 1
    return 0 if degree == 1 else parallel._ulysses_local_rank * (attn.heads // degree)


def _tensor_shapes(args, kwargs) -> tuple:
    """The shapes of a call's tensor arguments: a kept output is reused only for the same ones."""
    values = [*args, *(kwargs[k] for k in sorted(kwargs))]
    return tuple(tuple(v.shape) if isinstance(v, Tensor) else None for v in values)


@functools.cache
def _processor_class(inner_cls: type) -> type:
    def __call__(self, *args, **kwargs):
        return self._run(*args, **kwargs)

    __call__.__signature__ = inspect.signature(inner_cls.__call__)
    return type(f"Sparse{inner_cls.__name__}", (SparseAttnProcessor,), {"__call__": __call__})


@functools.cache
def _forward_signature(model_class: type) -> inspect.Signature:
    return inspect.signature(model_class.forward)


class SparseStepHook(ModelHook):
    """Reads the timestep, cache context and latent shape of each transformer forward.

    Stateful, so that diffusers hands it the pipeline's cache context (`cache_context("cond")`)
    and resets it when a pipeline call ends (`maybe_free_model_hooks`): the outputs kept for
    reuse are released then, not held until the next call.
    """

    _is_stateful = True

    def __init__(self, state: SparseState) -> None:
        super().__init__()
        self.state = state
        self.contexts = StateManager(BaseState)  # only its context is read; diffusers sets it

    def pre_forward(self, module, *args, **kwargs):
        bound = _forward_signature(type(module)).bind_partial(module, *args, **kwargs).arguments
        self.state.observe(bound.get("timestep"), _current_context(self.contexts))
        self.state.grid = self.state.family.grid(module, bound)
        return args, kwargs

    def reset_state(self, module):
        self.state.tracker.reset()
        self.state.release()
        return module


def _current_context(manager: StateManager) -> CacheContext | None:
    try:
        return manager.context
    except ValueError:  # no cache context: the transformer is called outside a pipeline's loop
        return None


def transformers_of(target) -> list[torch.nn.Module]:
    """The diffusers transformers of a pipeline (`transformer`, Wan 2.2's `transformer_2`), or the
    target itself when it is one; a model sparsediff cannot reach is refused with the reason."""
    if _is_diffusers_model(target) or type(target).__name__ in SUPPORT:  # DualTransformer2DModel is no ModelMixin
        found = [target]
    else:
        found = [m for m in (getattr(target, n, None) for n in ("transformer", "transformer_2")) if m is not None]
        if not found or not all(_is_diffusers_model(m) for m in found):
            raise TypeError(
                f"sparsediff.apply expects a diffusers pipeline with a transformer, or a diffusers transformer; "
                f"got {type(target).__name__}"
            )
    for model in found:
        check_supported(model)
        if not attention_processors(model):
            raise TypeError(
                f"{type(model).__name__} is a diffusers model, but none of its modules is a diffusers attention "
                "module with a processor, so sparsediff has no attention call to make sparse (families it knows: "
                f"{', '.join(FAMILIES)}; any model built from diffusers' attention modules works too)"
            )
    return found


def _is_diffusers_model(target) -> bool:
    from diffusers import ModelMixin

    return isinstance(target, ModelMixin)


def attention_processors(model) -> dict[str, object]:
    """`<module>.processor` -> processor for every attention module, in module order: diffusers'
    `attn_processors` where the model has it (AttentionMixin), otherwise every submodule of
    diffusers' attention classes (the ones its own `set_attention_backend` walks)."""
    if hasattr(model, "attn_processors"):
        return model.attn_processors
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention, MochiAttention

    classes = (Attention, MochiAttention, AttentionModuleMixin)
    return {
        f"{name}.processor": module.processor
        for name, module in model.named_modules()
        if isinstance(module, classes) and getattr(module, "processor", None) is not None
    }


def set_processors(model, processors: dict[str, object]) -> None:
    """Install `<module>.processor` -> processor (the inverse of `attention_processors`)."""
    if hasattr(model, "set_attn_processor"):
        model.set_attn_processor(processors)
        return
    for key, processor in processors.items():
        module = model.get_submodule(key.removesuffix(".processor"))
        if hasattr(module, "set_processor"):
            module.set_processor(processor)
        else:  # MochiAttention keeps a plain attribute
            module.processor = processor


def _attention_layers(transformer) -> dict[str, object]:
    """Attention module name -> module, in module order."""
    names = [name.removesuffix(".processor") for name in attention_processors(transformer)]
    return {name: transformer.get_submodule(name) for name in names}


def model_signature(transformer) -> ModelSignature:
    """What a config searched on this transformer records, and what `apply` checks."""
    first = next(iter(_attention_layers(transformer).values()))
    heads = getattr(first, "heads", None) or 1
    return ModelSignature(
        model_class=type(transformer).__name__,
        attention_layers=len(attention_processors(transformer)),
        heads=heads,
        head_dim=getattr(first, "inner_dim", 0) // heads,
    )


def _check_fits(config: SparseConfig, transformer, layers: dict[str, object]) -> None:
    heads = {name: getattr(module, "heads", None) for name, module in layers.items()}
    sig = config.model
    if sig is not None:
        actual = model_signature(transformer).model_dump()
        wrong = {k: (getattr(sig, k), v) for k, v in actual.items() if getattr(sig, k) != v}
        if wrong:
            detail = ", ".join(f"{k}: config {a!r} vs model {b!r}" for k, (a, b) in wrong.items())
            raise ValueError(f"this config was made for another model ({detail}); search again for this model")
    for table in config.head_tables():
        for name, patterns in table.items():
            if name not in layers:
                raise ValueError(
                    f"config names attention layer {name!r}, which {type(transformer).__name__} does not have"
                )
            if heads[name] is not None and len(patterns) != heads[name]:
                raise ValueError(
                    f"config gives {len(patterns)} head patterns for {name!r}, which has {heads[name]} heads"
                )
    check_dense_layers(config.schedule, list(layers))


def _scheduled_steps(target) -> int | None:
    """Model calls of the pipeline call in progress (schedulers set `timesteps` at its start)."""
    timesteps = getattr(getattr(target, "scheduler", None), "timesteps", None)
    return len(timesteps) if timesteps is not None and len(timesteps) else None


def _scheduler_step(target) -> int | None:
    """The pipeline scheduler's position in `timesteps` (None before its first step)."""
    return getattr(getattr(target, "scheduler", None), "step_index", None)


def apply(target, config: SparseConfig) -> SparseState:
    """Put sparse attention on a diffusers pipeline (all its transformers) or one transformer."""
    return install(target, config, SparseState)


def install(target, config: SparseConfig, state_class: type[SparseState]) -> SparseState:
    """Wrap every attention processor of the target's transformers with one `state_class` each.

    `state_class` is SparseState or a subclass that overrides `attend` (the offline search's
    calibration uses this to watch dense attention); `remove` undoes either.
    """
    if config.method == "sparsed":
        raise ValueError("method 'sparsed' is for diffusion language models (transformers models), not pipelines")
    transformers = transformers_of(target)
    for transformer in transformers:
        if hasattr(transformer, STATE_ATTR):
            raise RuntimeError(f"sparsediff is already applied to this {type(transformer).__name__}; call remove first")
    if config.schedule.dense_fraction and getattr(target, "scheduler", None) is None:
        raise ValueError(
            "schedule.dense_fraction needs the number of steps: apply to the pipeline, or use schedule.dense_steps"
        )
    # Read from the pipeline at each call, so a scheduler swapped after `apply` is the one followed.
    tracker = StepTracker(functools.partial(_scheduled_steps, target), functools.partial(_scheduler_step, target))
    stats = GenerationStats()
    states = []
    for transformer in transformers:
        layers = _attention_layers(transformer)
        _check_fits(config, transformer, layers)
        state = state_class(config, tracker, list(layers), stats=stats, **_model_facts(transformer, layers))
        states.append((transformer, layers, state))
    for transformer, layers, state in states:
        originals = attention_processors(transformer)
        set_processors(transformer, _wrapped(originals, layers, state))
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(SparseStepHook(state), HOOK_NAME)
        setattr(transformer, STATE_ATTR, (state, originals))
    return states[0][2]


def remove(target) -> None:
    """Restore the exact original processors and remove the step hook."""
    transformers = transformers_of(target)
    if not any(hasattr(t, STATE_ATTR) for t in transformers):
        raise RuntimeError("sparsediff is not applied to this model; nothing to remove")
    for transformer in transformers:
        if not hasattr(transformer, STATE_ATTR):
            continue
        _, originals = getattr(transformer, STATE_ATTR)
        set_processors(transformer, originals)
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(HOOK_NAME, recurse=False)
        delattr(transformer, STATE_ATTR)


def sparse_processors(transformer, config: SparseConfig | dict | str, layout: TokenLayout) -> dict[str, object]:
    """Processors for `transformer.set_attn_processor(...)` at one fixed layout, no hook.

    Without `apply`'s hook there is no step tracking: every step runs the config's sparse plan.
    """
    config = SparseConfig.load(config)
    layers = _attention_layers(transformer)
    _check_fits(config, transformer, layers)
    state = SparseState(config, StepTracker(), list(layers), fixed_layout=layout, **_model_facts(transformer, layers))
    return _wrapped(attention_processors(transformer), layers, state)


def _model_facts(transformer, layers: dict[str, object]) -> dict:
    """What a SparseState needs to know of the model: its family, each layer's role and heads."""
    family = family_of(transformer)
    return {
        "family": family,
        "roles": {name: family.role(name, module) for name, module in layers.items()},
        "heads": {name: getattr(module, "heads", None) for name, module in layers.items()},
    }


def _wrapped(originals: dict, layers, state: SparseState) -> dict[str, SparseAttnProcessor]:
    return {f"{n}.processor": SparseAttnProcessor.wrap(originals[f"{n}.processor"], n, state) for n in layers}


def state_of(transformer) -> SparseState | None:
    """The SparseState `apply` installed on `transformer`, if any."""
    found = getattr(transformer, STATE_ATTR, None)
    return found[0] if found else None
