"""The `local` method: one local 3-D neighbourhood (a `Diagonal`) for every head, sized to a density target.

The fixed baseline every searched config must beat. The radius is chosen per layout (so the
same density holds at any resolution), isotropic in latent units and capped by the frame count.
"""

from __future__ import annotations

from functools import lru_cache

from sparsediff.layout import TokenLayout
from sparsediff.patterns import Diagonal, aligned_plan


@lru_cache(maxsize=128)
def local_pattern(layout: TokenLayout, density: float, block_size: int | tuple[int, int] = 64) -> Diagonal:
    """The Diagonal whose plan density (text stripes included) is closest to `density`."""
    best, best_gap = None, float("inf")
    for radius in range(max(layout.height, layout.width)):
        pattern = Diagonal(radius=radius, temporal_radius=min(radius, layout.frames - 1))
        achieved = aligned_plan(layout, pattern, block_size).density
        gap = abs(achieved - density)
        if gap < best_gap:
            best, best_gap = pattern, gap
        if achieved >= density:
            break
    return best
