"""What the search chose, as a picture (layers x heads heatmap) and a text table."""

from __future__ import annotations

import colorsys
from pathlib import Path

from PIL import Image, ImageDraw

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
)

# Hue per strategy; lightness per density (darker = denser).
HUES = {
    "full": 0.0,
    "skip": None,
    "diagonal": 0.33,
    "multi_diagonal": 0.6,
    "stripe": 0.12,
    "window": 0.8,
    "union": 0.48,
    "pyramid": 0.9,
    "hilbert-window": 0.7,
}


def short_name(p: Pattern) -> str:
    if isinstance(p, Full):
        return "F"
    if isinstance(p, Skip):
        return f"S{p.every}"
    if isinstance(p, Pyramid):
        return f"P{p.budget:g}"
    if isinstance(p, HilbertWindow):
        return f"H{p.density:g}" + ("" if p.order == "hilbert-frame" else "3d")
    if isinstance(p, Diagonal):
        return f"D{p.radius}" + (f"t{p.temporal_radius}" if p.temporal_radius else "")
    if isinstance(p, MultiDiagonal):
        return f"M{p.radius}"
    if isinstance(p, Stripe):
        return "St" + ("0" if p.frames == (0,) else "") + (f"c{len(p.positions)}" if p.positions else "")
    if isinstance(p, Window):
        return f"W{p.radius}"
    if isinstance(p, AnyOf):
        return "|".join(short_name(q) for q in p.parts)
    return p.kind


_EXAMPLES = {
    "full": Full(),
    "diagonal": Diagonal(radius=1),
    "multi_diagonal": MultiDiagonal(radius=1, frame_offsets=(1,)),
    "stripe": Stripe(frames=(0,)),
    "union": Diagonal(radius=1) | Stripe(frames=(0,)),
    "skip": Skip(),
    "pyramid": Pyramid(budget=0.25),
    "hilbert-window": HilbertWindow(density=0.25),
}


def _colour(p: Pattern, density: float) -> tuple[int, int, int]:
    kind = p.kind
    if kind == "skip":
        return (235, 235, 235)
    hue = HUES.get(kind, 0.9)
    light = 0.85 - 0.55 * min(max(density, 0.0), 1.0)
    r, g, b = colorsys.hls_to_rgb(hue, light, 0.65)
    return int(r * 255), int(g * 255), int(b * 255)


def heatmap(layers: list[str], patterns: list[list[Pattern]], densities: list[list[float]], path: Path) -> Path:
    """PNG: one row per layer, one cell per head, coloured by pattern and shaded by density."""
    heads = max(len(row) for row in patterns)
    cell, label_w, top = 44, max(90, 7 * max(len(n) for n in layers)), 8
    legend_y = top + len(layers) * cell + 8
    width = max(label_w + heads * cell + 10, 8 * 80)
    image = Image.new("RGB", (width, legend_y + 46), "white")
    draw = ImageDraw.Draw(image)
    for i, (name, row, dens) in enumerate(zip(layers, patterns, densities, strict=True)):
        y = top + i * cell
        draw.text((4, y + cell // 2 - 6), name, fill="black")
        for h, (p, d) in enumerate(zip(row, dens, strict=True)):
            x = label_w + h * cell
            draw.rectangle((x, y, x + cell - 2, y + cell - 2), fill=_colour(p, d))
            draw.text((x + 3, y + 4), short_name(p)[:7], fill="black")
            draw.text((x + 3, y + cell - 16), f"{d:.2f}", fill="black")
    x = 4
    labels = {"full": "full", "diagonal": "diagonal", "multi_diagonal": "multi-diag", "stripe": "stripe",
              "union": "union", "pyramid": "pyramid", "hilbert-window": "hilbert", "skip": "skip"}  # fmt: skip
    for kind, label in labels.items():
        draw.rectangle((x, legend_y, x + 14, legend_y + 14), fill=_colour(_EXAMPLES[kind], 0.5))
        draw.text((x + 18, legend_y + 2), label, fill="black")
        x += 80
    draw.text((4, legend_y + 24), "columns: heads; cell: pattern and density (darker = denser)", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def target_summary(found: dict) -> str:
    """A target search's result as text (`config.search["target"]`): the target, what the chosen
    config reached on the calibration prompts and on validation, and the front it evaluated."""
    target = " and ".join(f"{k.removeprefix('min_').upper()} >= {v:g}" for k in ("min_psnr", "min_ssim")
                          if (v := found[k]) is not None)  # fmt: skip
    stack = f" with {found['cache']}" if found["cache"] else ""
    cal = found["calibration"]
    lines = [f"target {target}{stack}: budget {found['budget']:g}, on the calibration prompts "
             f"{cal['psnr']:.2f} dB, SSIM {cal['ssim']:.4f}"]  # fmt: skip
    checked = found.get("validation")
    if checked:
        verdict = "meets the target" if checked["met"] else "MISSES the target"
        lines.append(
            f"on {len(checked['prompts'])} prompts it never saw: {checked['psnr']:.2f} dB, SSIM {checked['ssim']:.4f}, "
            f"speedup {checked['speedup']:.2f}x over dense ({verdict})"
        )
    lines += ["front (calibration prompts; no other evaluated config is both faster and closer to dense):",
              f"{'budget':>8} {'PSNR dB':>8} {'SSIM':>7} {'s/gen':>7} {'speedup':>8}  meets"]  # fmt: skip
    for p in found["front"]:
        speedup = f"{p['speedup']:.2f}x" if "speedup" in p else "-"
        lines.append(f"{p['budget']:>8g} {p['psnr']:>8.2f} {p['ssim']:>7.4f} {p['seconds']:>7.2f} {speedup:>8}  "
                     f"{'yes' if p['met'] else 'no'}")  # fmt: skip
    return "\n".join(lines)
