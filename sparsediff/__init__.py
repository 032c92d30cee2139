"""sparsediff: compute only the attention that matters in diffusion transformers.

Importing this package compiles nothing, needs no GPU and changes no global setting.
"""

from sparsediff.attention import BACKENDS, sparse_attention
from sparsediff.config import ModelSignature, Schedule, SparseConfig
from sparsediff.integrations import apply, remove, sparse, state_of
from sparsediff.integrations.diffusers import SparseAttnProcessor, sparse_processors
from sparsediff.layout import TokenLayout
from sparsediff.patterns import (
    AnyOf,
    Diagonal,
    Full,
    HilbertWindow,
    MultiDiagonal,
    Pattern,
    Pyramid,
    Skip,
    Stripe,
    Window,
    build_plan,
)
from sparsediff.plan import BlockPlan

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "AnyOf",
    "BlockPlan",
    "Diagonal",
    "Full",
    "HilbertWindow",
    "ModelSignature",
    "MultiDiagonal",
    "Pattern",
    "Pyramid",
    "Schedule",
    "Skip",
    "SparseAttnProcessor",
    "SparseConfig",
    "Stripe",
    "TokenLayout",
    "Window",
    "apply",
    "build_plan",
    "remove",
    "sparse",
    "sparse_attention",
    "sparse_processors",
    "state_of",
]
