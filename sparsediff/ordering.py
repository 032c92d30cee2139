"""Token orders over a (frames, height, width) grid.

Scale-DiT permutes visual tokens so that a fixed-size 1-D window of the sequence covers a
compact 2-D/3-D region. A plain Hilbert curve needs power-of-two square grids; latent grids
are not (45 x 80 for 720p Wan, 13 frames). We use the generalized Hilbert ("gilbert")
construction of J. Cervený (github.com/jakubcerveny/gilbert), which recursively splits any
rectangle or box into halves of even length where possible.

What is guaranteed (checked exhaustively by the tests):
- every curve visits every cell exactly once (2-D up to 32 x 32, 3-D up to 8 x 8 x 8);
- 2-D, any sizes: consecutive cells are 8-neighbours (no coordinate moves by more than 1), and
  at most one step is diagonal; with both sides even, or one side 1, every step is a unit step;
- 3-D, all sides even: every step is a unit step (6-neighbours), as the construction promises.
  With an odd side the 3-D construction can jump: up to 2 steps per box moving 2-3 cells in one
  coordinate were measured up to 8 x 8 x 8. The `hilbert-frame` order (2-D curve per frame)
  has no jumps for any size.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Literal

import numpy as np

Order = Literal["raster", "hilbert", "hilbert-frame"]
ORDERS: tuple[str, ...] = ("raster", "hilbert", "hilbert-frame")

Vec = tuple[int, ...]


def _add(u: Vec, v: Vec) -> Vec:
    return tuple(a + b for a, b in zip(u, v, strict=True))


def _sub(u: Vec, v: Vec) -> Vec:
    return tuple(a - b for a, b in zip(u, v, strict=True))


def _neg(u: Vec) -> Vec:
    return tuple(-a for a in u)


def _half(u: Vec) -> Vec:
    return tuple(a // 2 for a in u)


def _unit(u: Vec) -> Vec:
    return tuple((a > 0) - (a < 0) for a in u)


def _length(u: Vec) -> int:
    # Direction vectors are axis-aligned, so the sum is the signed length.
    return abs(sum(u))


def _line(p: Vec, step: Vec, n: int) -> Iterator[Vec]:
    for _ in range(n):
        yield p
        p = _add(p, step)


def _even_half(u: Vec) -> Vec:
    """Half of `u`, rounded so the first part has even length (keeps steps unit-sized)."""
    h = _half(u)
    if _length(h) % 2 and _length(u) > 2:
        h = _add(h, _unit(u))
    return h


def _gilbert2d(p: Vec, a: Vec, b: Vec) -> Iterator[Vec]:
    """Fill the rectangle spanned by major axis `a` and minor axis `b` from corner `p`."""
    w, h = _length(a), _length(b)
    da, db = _unit(a), _unit(b)
    if h == 1:
        yield from _line(p, da, w)
        return
    if w == 1:
        yield from _line(p, db, h)
        return
    if 2 * w > 3 * h:  # long rectangle: two halves along the major axis
        a2 = _even_half(a)
        yield from _gilbert2d(p, a2, b)
        yield from _gilbert2d(_add(p, a2), _sub(a, a2), b)
        return
    a2, b2 = _half(a), _even_half(b)  # up, across, down
    yield from _gilbert2d(p, b2, a2)
    yield from _gilbert2d(_add(p, b2), a, _sub(b, b2))
    corner = _add(p, _add(_sub(a, da), _sub(b2, db)))
    yield from _gilbert2d(corner, _neg(b2), _neg(_sub(a, a2)))


def _gilbert3d(p: Vec, a: Vec, b: Vec, c: Vec) -> Iterator[Vec]:
    """Fill the box spanned by `a` (longest), `b`, `c` from corner `p`."""
    w, h, d = _length(a), _length(b), _length(c)
    da, db, dc = _unit(a), _unit(b), _unit(c)
    if h == 1 and d == 1:
        yield from _line(p, da, w)
        return
    if w == 1 and d == 1:
        yield from _line(p, db, h)
        return
    if w == 1 and h == 1:
        yield from _line(p, dc, d)
        return
    a2, b2, c2 = _even_half(a), _even_half(b), _even_half(c)
    rest_a, rest_b, rest_c = _sub(a, a2), _sub(b, b2), _sub(c, c2)
    if 2 * w > 3 * h and 2 * w > 3 * d:  # split along a only
        yield from _gilbert3d(p, a2, b, c)
        yield from _gilbert3d(_add(p, a2), rest_a, b, c)
    elif 3 * h > 4 * d:  # split along a and b, keep c whole
        yield from _gilbert3d(p, b2, c, a2)
        yield from _gilbert3d(_add(p, b2), a, rest_b, c)
        corner = _add(p, _add(_sub(a, da), _sub(b2, db)))
        yield from _gilbert3d(corner, _neg(b2), c, _neg(rest_a))
    elif 3 * d > 4 * h:  # split along a and c, keep b whole
        yield from _gilbert3d(p, c2, a2, b)
        yield from _gilbert3d(_add(p, c2), a, b, rest_c)
        corner = _add(p, _add(_sub(a, da), _sub(c2, dc)))
        yield from _gilbert3d(corner, _neg(c2), _neg(rest_a), b)
    else:  # split along all three axes
        yield from _gilbert3d(p, b2, c2, a2)
        yield from _gilbert3d(_add(p, b2), c, a2, rest_b)
        q = _add(p, _add(_sub(b2, db), _sub(c, dc)))
        yield from _gilbert3d(q, a, _neg(b2), _neg(rest_c))
        q = _add(p, _add(_add(_sub(a, da), b2), _sub(c, dc)))
        yield from _gilbert3d(q, _neg(c), _neg(rest_a), rest_b)
        q = _add(p, _add(_sub(a, da), _sub(b2, db)))
        yield from _gilbert3d(q, _neg(b2), c2, _neg(rest_a))


def hilbert_2d(height: int, width: int) -> np.ndarray:
    """Generalized Hilbert curve over a height x width grid: [H*W, 2] (row, col) per step."""
    _check_sizes(height, width)
    if width >= height:
        cells = _gilbert2d((0, 0), (width, 0), (0, height))
    else:
        cells = _gilbert2d((0, 0), (0, height), (width, 0))
    xy = np.fromiter((v for cell in cells for v in cell), dtype=np.int64).reshape(-1, 2)
    return xy[:, ::-1].copy()


def hilbert_3d(frames: int, height: int, width: int) -> np.ndarray:
    """Generalized Hilbert curve over a frames x height x width box: [T*H*W, 3] (t, row, col)."""
    _check_sizes(frames, height, width)
    size = (width, height, frames)  # (x, y, z)
    axes = [tuple(n if i == j else 0 for j in range(3)) for i, n in enumerate(size)]
    # The recursion expects the longest side first; ties keep x, then y.
    major = max(range(3), key=lambda i: (size[i], -i))
    others = [i for i in range(3) if i != major]
    cells = _gilbert3d((0, 0, 0), axes[major], axes[others[0]], axes[others[1]])
    xyz = np.fromiter((v for cell in cells for v in cell), dtype=np.int64).reshape(-1, 3)
    return xyz[:, ::-1].copy()


def _check_sizes(*sizes: int) -> None:
    if any(int(n) != n or n < 1 for n in sizes):
        raise ValueError(f"grid sizes must be positive integers, got {sizes}")


@lru_cache(maxsize=64)
def raster_permutation(order: str, frames: int, height: int, width: int) -> np.ndarray:
    """For each position in `order`, the raster index (t*H*W + h*W + w) of the token there.

    `hilbert` is one 3-D curve over (frames, height, width); `hilbert-frame` is a 2-D curve per
    frame, walked forwards on even frames and backwards on odd ones so that the end of a frame
    meets the start of the next at the same place.
    """
    _check_sizes(frames, height, width)
    plane = height * width
    if order == "raster":
        perm = np.arange(frames * plane)
    elif order == "hilbert":
        tyx = hilbert_3d(frames, height, width)
        perm = tyx[:, 0] * plane + tyx[:, 1] * width + tyx[:, 2]
    elif order == "hilbert-frame":
        yx = hilbert_2d(height, width)
        curve = yx[:, 0] * width + yx[:, 1]
        perm = np.concatenate([t * plane + (curve if t % 2 == 0 else curve[::-1]) for t in range(frames)])
    else:
        raise ValueError(f"unknown token order {order!r}; choose one of {ORDERS}")
    perm.setflags(write=False)
    return perm
