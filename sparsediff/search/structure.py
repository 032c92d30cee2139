"""Where attention goes, per layer and head: the structure sparse methods exploit.

During dense runs, sampled visual query rows of every self/joint attention call measure the
attention mass on four key sets (Sparse-vDiT's strategies): the local 3-D neighbourhood
(|dt| <= 1, |dh|, |dw| <= 1), the same position in other frames, text tokens, and the first
frame. Each is compared with its share of the keys, the mass uniform attention would give it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from sparsediff.kernels import expand_kv
from sparsediff.layout import TokenLayout
from sparsediff.search.calibrate import DenseWatcher, sample_rows, watched_dense_runs

CATEGORIES = ("local 3-D", "same place, other frames", "text", "first frame")


@dataclass
class Structure:
    rows: int
    seed: int
    sample_steps: frozenset[int]
    mass: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [heads, categories] summed mass
    share: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [categories] summed key share
    counts: dict[str, int] = field(default_factory=dict)  # layer -> rows measured

    def mean_mass(self, layer: str) -> torch.Tensor:
        return self.mass[layer] / self.counts[layer]

    def mean_share(self, layer: str) -> torch.Tensor:
        return self.share[layer] / self.counts[layer]


def _category_masks(layout: TokenLayout, rows: torch.Tensor) -> torch.Tensor:
    """[categories, rows, N] bool."""
    coords, text = layout.coords, layout.is_text
    q, k = coords[rows][:, None, :], coords[None, :, :]
    visual = ~text[rows][:, None] & ~text[None, :]
    d = (q - k).abs()
    local = visual & (d[..., 0] <= 1) & (d[..., 1:].amax(-1) <= 1)
    same = visual & (d[..., 1:].amax(-1) == 0) & (d[..., 0] > 0)
    first = visual & (k[..., 0] == 0) & (q[..., 0] > 0)
    return torch.stack([local, same, text[None, :].expand(len(rows), -1), first])


class StructureState(DenseWatcher):
    structure: Structure

    def watch(self, layer, query, key, value, out, layout: TokenLayout, scale: float) -> None:
        if self.tracker.step in self.structure.sample_steps:
            self._measure(layer, query, key, layout, scale)

    def _measure(self, layer, query, key, layout: TokenLayout, scale: float) -> None:
        s = self.structure
        rows = sample_rows(layout, s.rows, s.seed)
        count = rows.numel()
        key = expand_kv(key, query.shape[1])
        probs = (query[:, :, rows].float() @ key.float().transpose(-1, -2) * scale).softmax(-1)  # [B, H, R, N]
        masks = _category_masks(layout, rows).float()  # [C, R, N]
        mass = torch.einsum("bhrn,crn->hc", probs, masks) / probs.shape[0]
        share = masks.sum(-1).sum(-1) / layout.num_tokens
        s.mass[layer] = s.mass.get(layer, 0) + mass.double()
        s.share[layer] = s.share.get(layer, 0) + share.double()
        s.counts[layer] = s.counts.get(layer, 0) + count


def attention_structure(pipe, prompts, *, num_inference_steps: int = 20, sample_steps=(0, 5, 10, 15), rows: int = 256,
                        seed: int = 0, **call_kwargs) -> Structure:  # fmt: skip
    """Run the pipeline densely on `prompts` and measure where attention mass goes."""
    structure = Structure(rows=rows, seed=seed, sample_steps=frozenset(sample_steps))
    state_class = type("BoundStructureState", (StructureState,), {"structure": structure})
    watched_dense_runs(pipe, state_class, prompts, 64, seed, num_inference_steps, **call_kwargs)
    if not structure.counts:
        raise ValueError("no self/joint attention call with a known layout ran at the sampled steps")
    return structure


def structure_figure(structure: Structure, path: str | Path) -> Path:
    """PNG: one panel per key set, layers x heads, cell = mass (and x uniform share)."""
    layers = list(structure.counts)
    heads = structure.mass[layers[0]].shape[0]
    cell_w, cell_h, gap = 60, 30, 24
    label_w = 8 + 7 * max(len(name) for name in layers)
    panel_w = label_w + heads * cell_w
    image = Image.new("RGB", (len(CATEGORIES) * (panel_w + gap), 40 + len(layers) * cell_h + 30), "white")
    draw = ImageDraw.Draw(image)
    for c, name in enumerate(CATEGORIES):
        x0 = c * (panel_w + gap)
        draw.text((x0 + 4, 6), f"{name}: attention mass (x uniform)", fill="black")
        for i, layer in enumerate(layers):
            y = 40 + i * cell_h
            draw.text((x0 + 4, y + 8), layer, fill="black")
            mass, share = structure.mean_mass(layer)[:, c], structure.mean_share(layer)[c]
            for h in range(heads):
                m = float(mass[h])
                ratio = m / float(share) if share > 0 else 0.0
                strength = min(max(math.log10(max(ratio, 1e-9)) / math.log10(30), 0.0), 1.0)  # x1 white .. x30 dark
                shade = int(255 * (1 - 0.8 * strength))
                x = x0 + label_w + h * cell_w
                draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill=(shade, shade, 255))
                ink = "black" if strength < 0.6 else "white"
                draw.text((x + 3, y + 2), f"{m:.2f}", fill=ink)
                draw.text((x + 3, y + 14), f"x{ratio:.1f}", fill=ink)
    note = "columns: heads; cell: mass and mass / uniform share; darker: more concentrated (x30 darkest)"
    draw.text((4, 40 + len(layers) * cell_h + 8), note, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path
