"""One small adapter per diffusers model family: where text sits and the latent grid.

The transformer's forward arguments give the visual grid after patchify; where text tokens
sit inside self/joint attention is a property of the family (../shared/notes/diffusers-0.42.md):

| family | text inside self/joint attention |
|---|---|
| Wan 2.1/2.2, LTX-Video, PixArt | none (separate cross-attention) |
| CogVideoX, Flux, QwenImage | prefix |
| HunyuanVideo (and 1.5), SD3, Mochi (per sample, its valid text) | suffix |

A model class not listed uses the generic adapter: a 5-D (B, C, F, H, W) or 4-D (B, C, H, W)
latent divided by the config's patch sizes, text position unknown (calls that hold text then
run dense, with a warning).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class Family:
    name: str
    text: str  # "none", "prefix", "suffix" or "unknown"
    grid: Callable[[Any, dict], Grid | None]
    text_only: tuple[str, ...] = ()  # module-name prefixes of attention over text alone (HunyuanVideo's refiner)

    def role(self, name: str, module) -> str:
        """What an attention module computes: "cross" (queries attend to text keys), "text" (attention
        among text tokens alone) or "self" (over the visual tokens, with text inside when the family
        puts it there). Taken from the model, never from sequence lengths: at some sizes the text is
        exactly as long as the visual sequence (Wan: 512 text tokens, 512 latent tokens)."""
        if name.startswith(self.text_only):
            return "text"
        if getattr(module, "is_cross_attention", False) or name.rsplit(".", 1)[-1] == "attn2":
            return "cross"  # diffusers names cross-attention `attn2` in every block that has one (LTX, PixArt, Wan)
        return "self"


def patch_sizes(config) -> tuple[int, int, int]:
    """(frames, height, width) patch of a diffusers transformer config: `patch_size` is an int or a
    (t, h, w) tuple (Wan); `patch_size_t` where the family has one; a missing size is 1."""
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        return int(patch[0]), int(patch[-2]), int(patch[-1])
    spatial = 1 if patch is None else int(patch)
    temporal = getattr(config, "patch_size_t", None)
    return 1 if temporal is None else int(temporal), spatial, spatial


def _channels_first_grid(model, args: dict) -> Grid | None:
    """(B, C, F, H, W) or (B, C, H, W) latents, patchified by the config's patch sizes."""
    x = args.get("hidden_states")
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
        return None
    pt, ph, pw = patch_sizes(model.config)
    frames = x.shape[2] if x.dim() == 5 else 1
    return math.ceil(frames / pt), x.shape[-2] // ph, x.shape[-1] // pw


def _cogvideox_grid(model, args: dict) -> Grid | None:
    x = args.get("hidden_states")  # (B, F, C, H, W)
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        return None
    pt, ph, pw = patch_sizes(model.config)
    return math.ceil(x.shape[1] / pt), x.shape[-2] // ph, x.shape[-1] // pw


def _ltx_grid(model, args: dict) -> Grid | None:
    if args.get("num_frames") is None:
        return None
    pt, ph, pw = patch_sizes(model.config)
    return int(args["num_frames"]) // pt, int(args["height"]) // ph, int(args["width"]) // pw


def _flux_grid(model, args: dict) -> Grid | None:
    ids = args.get("img_ids")  # (N, 3) rows of (index, h, w)
    if not isinstance(ids, torch.Tensor):
        return None
    ids = ids[0] if ids.dim() == 3 else ids
    h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    return (1, h, w) if h * w == ids.shape[0] else None  # extra reference images: unknown layout


def _qwen_grid(model, args: dict) -> Grid | None:
    shapes = args.get("img_shapes")
    if not shapes:
        return None
    per_sample = shapes[0]
    if isinstance(per_sample, list):
        if len(per_sample) != 1:
            return None  # several images in one sequence (editing): unknown layout
        per_sample = per_sample[0]
    return tuple(int(s) for s in per_sample)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("WanTransformer3DModel", "none", _channels_first_grid),
        Family("WanVACETransformer3DModel", "none", _channels_first_grid),
        Family("CogVideoXTransformer3DModel", "prefix", _cogvideox_grid),
        Family("HunyuanVideoTransformer3DModel", "suffix", _channels_first_grid, ("context_embedder.",)),
        Family("HunyuanVideo15Transformer3DModel", "suffix", _channels_first_grid, ("context_embedder.",)),
        Family("LTXVideoTransformer3DModel", "none", _ltx_grid),
        # Mochi attends per sample over [visual; that sample's valid text]: a suffix of its own length
        Family("MochiTransformer3DModel", "suffix", _channels_first_grid),
        Family("FluxTransformer2DModel", "prefix", _flux_grid),
        Family("SD3Transformer2DModel", "suffix", _channels_first_grid),
        Family("PixArtTransformer2DModel", "none", _channels_first_grid),
        Family("QwenImageTransformer2DModel", "prefix", _qwen_grid),
    )
}
GENERIC = Family("generic", "unknown", _channels_first_grid)


def family_of(model) -> Family:
    return FAMILIES.get(type(model).__name__, GENERIC)
