"""sparsediff: compute only the attention that matters in diffusion transformers.

Importing this package compiles nothing, needs no GPU and changes no global setting.
"""

from sparsediff.attention import BACKENDS, sparse_attention
from sparsediff.layout import TokenLayout
from sparsediff.patterns import AnyOf, Diagonal, Full, MultiDiagonal, Pattern, Skip, Stripe, Window, build_plan
from sparsediff.plan import BlockPlan

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "AnyOf",
    "BlockPlan",
    "Diagonal",
    "Full",
    "MultiDiagonal",
    "Pattern",
    "Skip",
    "Stripe",
    "TokenLayout",
    "Window",
    "build_plan",
    "sparse_attention",
]
