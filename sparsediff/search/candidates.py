"""Candidate patterns a head may take, in layout units (so choices transfer across sizes).

The set follows Sparse-vDiT's strategies: full, skip (run every 2nd or 4th step, reuse the
output in between), diagonal bands of several radii (local 3-D neighbourhoods), multi-diagonals
(the same place in every other frame), a first-frame stripe, unions of a band with the other
two, a band plus the heaviest key columns each head showed in calibration (its attention
sinks); and, planned per call for heads no static pattern fits, PSA's pyramid pooled KV and
Scale-DiT's windows in Hilbert order (with coarse global tokens), which only pay on permuted
tokens (a static plan runs in raster order).
Candidates too large for the layout (a radius covering the whole grid) are left out: they
equal `full`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsediff.layout import TokenLayout
from sparsediff.patterns import Diagonal, Full, HilbertWindow, MultiDiagonal, Pattern, Pyramid, Skip, Stripe

RADII = (1, 2, 3, 4, 6, 8, 12, 16)
SKIP_PERIODS = (2, 4)
PYRAMID_BUDGETS = (0.125, 0.25)  # PSA, planned per call (blocks must split into 8 pooled tokens)
HILBERT_DENSITIES = (0.125, 0.25)  # Hilbert windows (2-D curve per frame) + coarse tokens, per call
HEAVY_COLUMNS = 8  # key columns per head in the band-plus-columns candidates


@dataclass(frozen=True)
class BandAndHeavyColumns:
    """A candidate each head fills in: a local band plus the `count` visual key columns that got
    the most attention mass from that head in calibration, kept as a layout-unit `Stripe`."""

    radius: int
    temporal_radius: int
    count: int = HEAVY_COLUMNS

    def resolve(self, positions: tuple[tuple[float, float, float], ...]) -> Pattern:
        return Diagonal(radius=self.radius, temporal_radius=self.temporal_radius) | Stripe(
            positions=positions[: self.count]
        )


Candidate = Pattern | BandAndHeavyColumns


def default_candidates(layout: TokenLayout, allow_skip: bool = True, block_size: int = 64) -> list[Candidate]:
    """Full first, then cheaper structured patterns; order breaks ties in the solver."""
    side = max(layout.height, layout.width)
    radii = [r for r in RADII if 2 * r + 1 < side]
    frames = layout.frames
    other_frames = tuple(o for o in range(-(frames - 1), frames) if o != 0)
    found: list[Candidate] = [Full()]
    if allow_skip:
        found.extend(Skip(every=k) for k in SKIP_PERIODS)
    for r in radii:
        for tr in sorted({0, 1, 2, r} & set(range(frames))):
            found.append(Diagonal(radius=r, temporal_radius=tr))
    if other_frames:
        for r in radii[:3]:
            found.append(MultiDiagonal(radius=r, frame_offsets=(0, *other_frames)))
            found.append(
                Diagonal(radius=2 * r, temporal_radius=min(1, frames - 1))
                | MultiDiagonal(radius=r, frame_offsets=other_frames)
            )
        for r in radii[:4]:
            found.append(Diagonal(radius=r, temporal_radius=min(1, frames - 1)) | Stripe(frames=(0,)))
    found.extend(BandAndHeavyColumns(r, min(1, frames - 1)) for r in radii[:4])
    if block_size % 8 == 0:
        found.extend(Pyramid(budget=b) for b in PYRAMID_BUDGETS)
    found.extend(HilbertWindow(density=d) for d in HILBERT_DENSITIES)
    return list(dict.fromkeys(found))
