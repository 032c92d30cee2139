"""Quality of a sparse output against the dense one from the same seed: PSNR and SSIM.

Both take frames (frames, height, width, channels) with values in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _check(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"compare frames of equal shape (frames, height, width, channels); got {a.shape} and {b.shape}"
        )
    return torch.as_tensor(np.asarray(a, dtype=np.float64)), torch.as_tensor(np.asarray(b, dtype=np.float64))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all frames (inf when identical)."""
    x, y = _check(a, b)
    mse = float((x - y).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004: Gaussian window, K1=0.01, K2=0.03) over frames and channels."""
    x, y = _check(a, b)
    x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)  # (F, C, H, W)
    channels = x.shape[1]
    size = min(window, x.shape[-2], x.shape[-1])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())
