"""Which patterns one attention layer runs, given the config, the layout and the head count."""

from __future__ import annotations

from sparsediff.config import SparseConfig
from sparsediff.layout import TokenLayout
from sparsediff.methods.local import local_pattern
from sparsediff.patterns import Full, Pattern


def layer_patterns(config: SparseConfig, layer: str, layout: TokenLayout, heads: int) -> list[Pattern]:
    """One pattern per head for `layer` (an attention module name)."""
    if config.method == "dense":
        return [Full()] * heads
    if config.method == "local":
        return [local_pattern(layout, config.density, config.plan_blocks)] * heads
    return searched_patterns(config, layer, heads, layout)


def searched_patterns(config: SparseConfig, layer: str, heads: int, layout: TokenLayout | None = None) -> list[Pattern]:
    """A `pattern` config's heads for `layer`: its per-head list (from the size bucket nearest
    `layout`'s grid, for a config searched at several sizes), else its one pattern for every head."""
    if config.sizes and layout is None:
        raise ValueError("a config searched at several sizes needs the call's layout to pick its heads")
    table = config.size_bucket(layout.grid)[0].heads if config.sizes else config.heads
    per_head = table.get(layer)
    if per_head is None:
        if config.pattern is None:
            raise ValueError(f"config has per-layer patterns but none for layer {layer!r}")
        return [config.pattern] * heads
    if len(per_head) != heads:
        raise ValueError(f"config gives {len(per_head)} head patterns for layer {layer!r}, but it has {heads} heads")
    return list(per_head)
