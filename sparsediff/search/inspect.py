"""One head up close: where its attention goes, which blocks a config computes for it, and the error.

During one dense run, the query, key and value of a chosen layer at a chosen step are kept; the
head's attention mass is pooled to blocks (what sparse attention decides on), the config's plan
for that head is drawn on the same block grid, and the head's relative L2 error under that plan
is measured against the exact output. Pictures, because a heatmap beside a mask says at a
glance what a table of numbers does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sparsediff.config import SparseConfig
from sparsediff.kernels import expand_kv
from sparsediff.layout import TokenLayout
from sparsediff.methods import layer_patterns
from sparsediff.methods.sparsed import block_mass_reference
from sparsediff.patterns import PER_CALL, Skip, aligned_plan
from sparsediff.search.calibrate import DenseWatcher, watched_dense_runs


@dataclass
class HeadView:
    layer: str
    head: int
    step: int
    layout: TokenLayout
    block: int
    mass: torch.Tensor  # [Qb, Kb] attention mass per block (rows sum to 1)
    mask: torch.Tensor | None  # [Qb, Kb] blocks the config computes for this head (None: planned per call)
    pattern: str
    error: float | None  # relative L2 error of the head's output under the config's plan
    density: float | None


class _Capture(DenseWatcher):
    wanted: tuple[str, int]  # (layer, step)
    found: dict

    def watch(self, layer, query, key, value, out, layout, scale) -> None:
        if (layer, self.tracker.step) == self.wanted and "q" not in self.found:
            self.found.update(q=query[:1].clone(), k=key[:1].clone(), v=value[:1].clone(), layout=layout, scale=scale)


def inspect_head(
    pipe, prompt: str, config: SparseConfig, layer: str, head: int, step: int, *, num_inference_steps: int,
    block: int = 64, seed: int = 0, **call_kwargs,
) -> HeadView:  # fmt: skip
    """Run `pipe` densely on `prompt` and look at one head of `layer` at denoising `step`."""
    if not 0 <= step < num_inference_steps:
        raise ValueError(f"step {step} is not one of the run's steps 0..{num_inference_steps - 1}")
    found: dict = {}
    state_class = type("BoundCapture", (_Capture,), {"wanted": (layer, step), "found": found})
    watched_dense_runs(pipe, state_class, [prompt], block, seed, num_inference_steps, **call_kwargs)
    if "q" not in found:
        raise ValueError(f"{layer!r} has no self/joint attention call with a known layout at step {step}")
    q, layout, scale = found["q"], found["layout"], found["scale"]
    heads = q.shape[1]
    if not 0 <= head < heads:
        raise ValueError(f"head {head} is not one of {layer!r}'s heads 0..{heads - 1}")
    k, v = expand_kv(found["k"], heads)[:, [head]], expand_kv(found["v"], heads)[:, [head]]
    q = q[:, [head]]
    mass = block_mass_reference(q, k, scale, block)[0]
    static = config.method in ("dense", "local", "pattern")
    pattern = layer_patterns(config, layer, layout.block_aligned(*config.plan_blocks), heads)[head] if static else None
    if pattern is None or isinstance(pattern, (*PER_CALL, Skip)):
        what = f"method {config.method}" if pattern is None else str(pattern)
        return HeadView(layer, head, step, layout, block, mass, None, f"{what}: planned per call", None, None)
    plan = aligned_plan(layout, pattern, config.plan_blocks)
    aligned = layout.block_aligned(*config.plan_blocks)
    keys = plan.to_token_mask()[0]
    keys = aligned.move_to(aligned.move_to(keys, layout, 0), layout, 1)  # [N, N] in the caller's token order
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)
    approx = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=keys, scale=scale)
    error = float((approx - exact).norm() / exact.norm())
    return HeadView(layer, head, step, layout, block, mass, _pool_mask(keys, block), str(pattern), error, plan.density)


def _pool_mask(keys: torch.Tensor, block: int) -> torch.Tensor:
    n = keys.shape[0]
    padded = -(-n // block) * block
    grid = F.pad(keys.float(), (0, padded - n, 0, padded - n))
    return grid.view(padded // block, block, padded // block, block).amax((1, 3)) > 0


def head_images(view: HeadView, size: int = 384) -> tuple[Image.Image, Image.Image]:
    """(attention mass per block as a heatmap, the config's block mask), same grid and size."""
    mass = view.mass.clamp_min(1e-6).log10().numpy()  # mass spans orders of magnitude
    low, high = float(mass.min()), float(mass.max())
    scaled = (mass - low) / max(high - low, 1e-9)
    heat = np.stack([scaled, scaled**2, 0.3 * (1 - scaled)], -1)  # dark blue -> yellow
    mask = view.mask.numpy() if view.mask is not None else np.zeros_like(scaled, dtype=bool)
    blocks = np.where(mask[..., None], np.array([0.95, 0.95, 0.95]), np.array([0.1, 0.1, 0.12]))
    return tuple(
        Image.fromarray((a * 255).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
        for a in (heat, blocks)
    )
