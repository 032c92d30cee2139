"""Diffusers' own step and block caches and cache-dit, as peers to compare with and to stack under sparse attention.

Each peer runs through its own engine, never re-implemented: diffusers' hooks
(`transformer.enable_cache(config)`, removed with `disable_cache()`) at diffusers' documented
defaults, and cache-dit's DBCache (`cache_dit.enable_cache(transformer, cache_config=...)`, the
optional `cache-dit` package) at its defaults but one: F1B0, since its F8B0 needs 8 blocks per
stack; FasterCache also splits the per-sample inputs its list misses (`FASTERCACHE_ALSO_SPLIT`).
`name:key=value,...` changes settings (`fbcache:threshold=0.1`,
`cachedit:residual_diff_threshold=0.12`). MagCache needs magnitude ratios measured on the model:
`magcache_ratios` runs diffusers' own calibration mode once and reads the ratios it logs.
A peer that cannot run on a model raises `PeerError` naming why.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    SeaCacheConfig,
    TaylorSeerCacheConfig,
)


@dataclass(frozen=True)
class PeerKind:
    config: Callable[[], type]  # the config class (imported on use: cache-dit is optional)
    defaults: dict  # beyond the config's own defaults, as the engine's docs use it
    needs_timestep: bool = False  # reads the pipeline's current timestep
    engine: str = "diffusers"  # or "cache-dit"
    probe: Callable[[dict], int] = lambda settings: 0  # leading blocks whose output decides what is skipped


def _cache_dit():
    try:
        import cache_dit
    except ImportError as err:
        raise ValueError("the cachedit peer needs the cache-dit package: pip install 'sparsediff[cachedit]'") from err
    # It logs every run's cache statistics, and warns that hooks were removed, to stdout, through one
    # handler its loggers share (also those its modules create later): errors only, so our --json
    # output stays clean.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("cache_dit"):
            for handler in logging.getLogger(name).handlers:
                handler.setLevel(logging.ERROR)
    return cache_dit


PEERS: dict[str, PeerKind] = {
    "pab": PeerKind(lambda: PyramidAttentionBroadcastConfig, {"spatial_attention_block_skip_range": 2}, True),
    "fastercache": PeerKind(lambda: FasterCacheConfig, {}, True),
    "fbcache": PeerKind(lambda: FirstBlockCacheConfig, {}, probe=lambda settings: 1),
    "taylorseer": PeerKind(lambda: TaylorSeerCacheConfig, {}),
    "magcache": PeerKind(lambda: MagCacheConfig, {}),
    "seacache": PeerKind(lambda: SeaCacheConfig, {}),
    "cachedit": PeerKind(
        lambda: _cache_dit().DBCacheConfig,
        {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0},
        engine="cache-dit",
        probe=lambda settings: settings["Fn_compute_blocks"],
    ),
}


# Per-sample inputs that diffusers' FasterCache does not split into the unconditional and
# conditional halves of a CFG batch (it splits hidden states, timestep, text and masks): left
# whole, a skipped unconditional half meets a full batch. HunyuanVideo, SD3 and Flux take them.
FASTERCACHE_ALSO_SPLIT = ("pooled_projections",)


def _fastercache_split(transformer) -> list[str]:
    """FasterCache's split inputs, and those of `FASTERCACHE_ALSO_SPLIT` that `transformer` takes."""
    split = "_unconditional_conditional_input_kwargs_identifiers"
    field = next(f for f in fields(FasterCacheConfig) if f.name == split)
    accepted = inspect.signature(transformer.forward).parameters
    return [*field.default, *(name for name in FASTERCACHE_ALSO_SPLIT if name in accepted)]


class PeerError(RuntimeError):
    """A peer that cannot run on this model, with the reason."""


@dataclass(frozen=True)
class Peer:
    name: str
    settings: tuple[tuple[str, object], ...] = ()

    def __str__(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.name}:{knobs}" if knobs else self.name


def parse_peer(text: str) -> Peer | None:
    """`name` or `name:key=value,...` when `name` is a peer; None when it is not one."""
    name, _, knobs = text.partition(":")
    if name not in PEERS:
        return None
    allowed = {f.name for f in fields(PEERS[name].config())}
    settings = []
    for knob in filter(None, knobs.split(",")):
        key, equals, raw = knob.partition("=")
        if not equals or key not in allowed:
            raise ValueError(f"{text!r}: {knob!r} is not a setting of {name}; it takes {', '.join(sorted(allowed))}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{text!r}: the value of {key} must be a number, a tuple or True/False") from err
        settings.append((key, value))
    return Peer(name, tuple(settings))


def cache_config(pipe, peer: Peer, steps: int, mag_ratios: list[float] | None = None):
    """The diffusers cache config for `peer` on `pipe` (the timestep callback where it needs one)."""
    kind = PEERS[peer.name]
    kwargs = kind.defaults | dict(peer.settings)
    if kind.needs_timestep:
        kwargs["current_timestep_callback"] = lambda: pipe.current_timestep
    if peer.name == "magcache":
        kwargs |= {"num_inference_steps": steps, "mag_ratios": mag_ratios}
    if peer.name == "fastercache":
        kwargs.setdefault("_unconditional_conditional_input_kwargs_identifiers", _fastercache_split(pipe.transformer))
    return kind.config()(**kwargs)


def probe_layers(transformer, peer: Peer, attention_layers: list[str]) -> list[str]:
    """The attention layers of the leading blocks whose output `peer` compares from step to step to
    decide what to skip (FirstBlockCache's first block, DBCache's first Fn). Stacked under ours no
    head there may reuse a past output: a layer reused whole changes not at all from step to step,
    so the cache would skip every later step (sparse heads there are fine: they follow the input)."""
    kind = PEERS[peer.name]
    count = kind.probe(kind.defaults | dict(peer.settings))
    stack = next((name for name in ("transformer_blocks", "blocks") if hasattr(transformer, name)), None)
    if not count or stack is None:
        return []
    prefixes = tuple(f"{stack}.{i}." for i in range(count))
    return [layer for layer in attention_layers if layer.startswith(prefixes)]


@contextlib.contextmanager
def enabled(pipe, peer: Peer, steps: int, mag_ratios: list[float] | None = None) -> Iterator[None]:
    """`peer` on the pipeline's transformer for the block, removed after (the pipeline as before)."""
    transformer = pipe.transformer
    if PEERS[peer.name].engine == "cache-dit":
        cache_dit = _cache_dit()
        enable = lambda config: cache_dit.enable_cache(transformer, cache_config=config)  # noqa: E731
        before = transformer.__dict__.get("forward"), list(transformer._modules)  # forward and child order
        disable = lambda: _disable_cache_dit(cache_dit, transformer, *before)  # noqa: E731
    else:
        enable, disable = transformer.enable_cache, transformer.disable_cache
    try:
        enable(cache_config(pipe, peer, steps, mag_ratios))
    except Exception as err:  # the engine's own refusal, whatever its type
        with contextlib.suppress(Exception):
            disable()
        raise PeerError(f"{peer} cannot run on {type(transformer).__name__}: {err}") from err
    try:
        yield
    except Exception as err:
        raise PeerError(f"{peer} failed on {type(transformer).__name__}: {type(err).__name__}: {err}") from err
    finally:
        disable()


class _Prebound:
    """A forward that binds to itself: what cache-dit's removal expects of the forward it saved."""

    def __init__(self, forward: Callable) -> None:
        self.forward = forward

    def __get__(self, instance, owner=None) -> Callable:
        return self.forward


def _disable_cache_dit(cache_dit, transformer, forward: Callable | None, children: list[str]) -> None:
    """cache-dit 1.5's removal, and the transformer exactly as before it. Its removal calls
    `saved.__get__(transformer)` on the forward it saved, which fails when diffusers' hook registry
    had made that a functools.partial (it gets a form that binds); it leaves the class's forward
    bound on the instance; and its patching moves the block lists to the end of the module's
    children, so module order (which FirstBlockCache takes its first block from, and our layer
    indices) changes. Forward and child order are put back."""
    saved = getattr(transformer, "_original_forward", None)
    if saved is not None and not hasattr(saved, "__get__"):
        transformer._original_forward = _Prebound(saved)
    cache_dit.disable_cache(transformer)
    if forward is None:
        transformer.__dict__.pop("forward", None)
    else:
        transformer.forward = forward
    modules = transformer._modules
    transformer._modules = {name: modules[name] for name in [*children, *modules] if name in modules}


def magcache_ratios(pipe, steps: int, run: Callable[[], object]) -> list[float]:
    """MagCache's magnitude ratios for this model and step count: diffusers' calibration mode runs
    `run` once without skipping and logs them; they are read from that log."""
    found: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record.getMessage())

    logger = logging.getLogger("diffusers.hooks.mag_cache")
    handler, level = Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
        with contextlib.redirect_stdout(io.StringIO()):  # calibration also prints the ratios
            run()
    finally:
        pipe.transformer.disable_cache()
        logger.removeHandler(handler)
        logger.setLevel(level)
    for message in found:
        match = re.search(r"Calibration Results: (\[.*\])", message)
        if match:
            return [float(x) for x in ast.literal_eval(match.group(1))]
    raise PeerError(f"magcache: calibration logged no ratios on {type(pipe.transformer).__name__}")
