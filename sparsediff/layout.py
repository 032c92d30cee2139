"""TokenLayout: what each position of one attention call's sequence is.

Every method reasons in layout coordinates (text or visual, and (t, h, w) on the latent grid
after patchify), never in model-specific shapes. A sequence is

    [text_prefix tokens] [frames * height * width visual tokens in `order`] [text_suffix tokens]

Visual tokens come out of every diffusers model in raster order (t, h, w row-major); a method
that wants another order permutes them with `to_order` / `permute` and back with `unpermute`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from sparsediff.ordering import ORDERS, raster_permutation


@dataclass(frozen=True)
class TokenLayout:
    """One attention call's token layout.

    Example: Wan at 81 frames 480x832 has `TokenLayout(frames=21, height=30, width=52)`;
    Flux at 1024x1024 has `TokenLayout(height=64, width=64, text_prefix=512)`.
    """

    height: int
    width: int
    frames: int = 1
    text_prefix: int = 0
    text_suffix: int = 0
    order: str = "raster"

    def __post_init__(self) -> None:
        for name in ("height", "width", "frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenLayout.{name} must be a positive int, got {value!r}")
        for name in ("text_prefix", "text_suffix"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TokenLayout.{name} must be a non-negative int, got {value!r}")
        if self.order not in ORDERS:
            raise ValueError(f"unknown token order {self.order!r}; choose one of {ORDERS}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """(frames, height, width) of the visual tokens."""
        return self.frames, self.height, self.width

    @property
    def num_visual(self) -> int:
        return self.frames * self.height * self.width

    @property
    def num_text(self) -> int:
        return self.text_prefix + self.text_suffix

    @property
    def num_tokens(self) -> int:
        return self.num_visual + self.num_text

    @property
    def visual_slice(self) -> slice:
        return slice(self.text_prefix, self.text_prefix + self.num_visual)

    def to_order(self, order: str) -> TokenLayout:
        return replace(self, order=order)

    @cached_property
    def raster_index(self) -> torch.Tensor:
        """[num_visual] raster index (t*H*W + h*W + w) of the visual token at each position."""
        perm = raster_permutation(self.order, self.frames, self.height, self.width)
        return torch.from_numpy(np.array(perm))

    @cached_property
    def inverse_index(self) -> torch.Tensor:
        """[num_visual] position in this order of the visual token with each raster index."""
        inverse = torch.empty_like(self.raster_index)
        inverse[self.raster_index] = torch.arange(self.num_visual)
        return inverse

    @cached_property
    def coords(self) -> torch.Tensor:
        """[num_tokens, 3] (t, h, w) of each position; -1 for text tokens."""
        coords = torch.full((self.num_tokens, 3), -1, dtype=torch.long)
        r = self.raster_index
        plane = self.height * self.width
        coords[self.visual_slice] = torch.stack((r // plane, (r % plane) // self.width, r % self.width), -1)
        return coords

    @cached_property
    def is_text(self) -> torch.Tensor:
        """[num_tokens] bool, True where the position holds a text token."""
        mask = torch.ones(self.num_tokens, dtype=torch.bool)
        mask[self.visual_slice] = False
        return mask

    def check_length(self, n: int) -> None:
        if n != self.num_tokens:
            raise ValueError(
                f"sequence has {n} tokens but {self} describes {self.num_tokens} "
                f"({self.text_prefix} text prefix + {self.frames}x{self.height}x{self.width} visual "
                f"+ {self.text_suffix} text suffix); build the layout from this call's shapes"
            )

    def block_aligned(self, block_q: int, block_kv: int) -> TokenLayout:
        """The layout a static block plan runs on. A text prefix that is not a whole number of
        blocks shifts the visual grid off block boundaries, so every block straddles two grid rows
        and a local band touches a third more blocks; then the text goes behind the visual tokens
        (8 text tokens before a 16 x 16 x 16 grid, 64-token blocks: a radius-1 band plan fell from
        density 0.163 to 0.112, 35 -> 28 ms per call). `move_to` carries tensors between the two orders.
        """
        if self.text_prefix % math.lcm(block_q, block_kv) == 0:
            return self
        return replace(self, text_prefix=0, text_suffix=self.num_text)

    def move_to(self, x: torch.Tensor, target: TokenLayout, dim: int = -2) -> torch.Tensor:
        """`x`, in this layout's token order, in `target`'s: this layout with the text moved
        between the ends of the sequence (`block_aligned`, and back)."""
        self.check_length(x.shape[dim])
        if replace(target, text_prefix=self.text_prefix, text_suffix=self.text_suffix) != self or (
            target.num_text != self.num_text
        ):
            raise ValueError(f"cannot move tokens from {self} to {target}: only the text may move")
        shift = target.text_prefix - self.text_prefix
        return torch.roll(x, shift, dim) if shift else x

    def permute(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Reorder the visual tokens of a raster-ordered tensor into this layout's order."""
        return self._gather(x, dim, self.raster_index)

    def unpermute(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Inverse of `permute`: back to raster order."""
        return self._gather(x, dim, self.inverse_index)

    def _gather(self, x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        self.check_length(x.shape[dim])
        if self.order == "raster":
            return x
        full = torch.arange(self.num_tokens)
        full[self.visual_slice] = index + self.text_prefix
        return x.index_select(dim, full.to(x.device))
