"""Methods turn a SparseConfig into attention for one call's layout.

Static methods (`dense`, `local`, `pattern`) give per-head patterns, planned once per layer and
layout; dynamic methods (`pyramid`, `topk`, `hilbert`, `raster-window`) look at each call's
queries and keys (or permute them) and run through `DYNAMIC`.
"""

from __future__ import annotations

import torch

from sparsediff.layout import TokenLayout
from sparsediff.methods.hilbert import local_global_attention
from sparsediff.methods.local import local_pattern
from sparsediff.methods.pyramid import pyramid_attention, topk_attention
from sparsediff.methods.resolve import layer_patterns, searched_patterns
from sparsediff.patterns import HilbertWindow, Pattern, Pyramid


def _hilbert(q, k, v, layout, config, scale):
    return local_global_attention(q, k, v, layout, config.density, config.block_size, config.backend, scale,
                                  order=config.order, pool=config.coarse_pool)  # fmt: skip


def _raster_window(q, k, v, layout, config, scale):
    return local_global_attention(q, k, v, layout, config.density, config.block_size, config.backend, scale,
                                  order="raster", pool=config.coarse_pool)  # fmt: skip


def _pyramid(q, k, v, layout, config, scale):
    return pyramid_attention(q, k, v, layout, config.density, config.block_size, config.backend, scale)


def _topk(q, k, v, layout, config, scale):
    return topk_attention(q, k, v, layout, config.density, config.block_size, config.backend, scale)


# name -> f(q, k, v, layout, config, scale) -> (output, density of this call)
DYNAMIC = {"pyramid": _pyramid, "topk": _topk, "hilbert": _hilbert, "raster-window": _raster_window}


def per_call_heads(
    pattern: Pattern, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, block: int,
    backend: str, scale: float,
) -> tuple[torch.Tensor, float]:  # fmt: skip
    """(output, density) of the heads `q` holds under a per-call head pattern (`patterns.PER_CALL`)."""
    if isinstance(pattern, Pyramid):
        return pyramid_attention(q, k, v, layout, pattern.budget, block, backend, scale)
    if isinstance(pattern, HilbertWindow):
        return local_global_attention(q, k, v, layout, pattern.density, block, backend, scale, order=pattern.order)
    raise TypeError(f"{pattern} is not planned per call")


__all__ = ["DYNAMIC", "layer_patterns", "local_pattern", "per_call_heads", "searched_patterns"]
