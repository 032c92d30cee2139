"""Methods turn a SparseConfig into per-head patterns for one attention call's layout."""

from sparsediff.methods.resolve import layer_patterns
from sparsediff.methods.window import window_pattern

__all__ = ["layer_patterns", "window_pattern"]
