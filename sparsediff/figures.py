"""Plots of benchmark results as PNG files, drawn with Pillow (already a dependency through
diffusers): the speed-quality Pareto plot of `bench methods` and the speedup-vs-context curve of
`eval`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GREY, DARK, RED = (120, 120, 120), (30, 30, 30), (220, 80, 40)
PALETTE = [(60, 90, 160), RED, (40, 150, 90), (150, 60, 160), (200, 150, 30), (90, 90, 90)]
LABEL_HEIGHT = 12  # px of Pillow's default font
Box = tuple[float, float, float, float]  # left, top, right, bottom


def boxes_overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class Chart:
    """A plot area with linear or log-2 axes; points are given in data coordinates."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], *, log_x: bool = False,
                 log_y: bool = False, width: int = 900, height: int = 600, margin: int = 70) -> None:  # fmt: skip
        self.width, self.height, self.margin, self.log_x, self.log_y = width, height, margin, log_x, log_y
        self.x0, self.x1 = (math.log2(v) for v in x_range) if log_x else x_range
        self.y0, self.y1 = (math.log2(v) for v in y_range) if log_y else y_range
        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.markers: list[Box] = []  # every point's dot
        self.labels: list[tuple[str, Box]] = []  # placed when the chart is saved, clear of dots and each other
        self._pending: list[tuple[float, float, str]] = []

    def at(self, x: float, y: float) -> tuple[float, float]:
        x = math.log2(x) if self.log_x else x
        y = math.log2(y) if self.log_y else y
        inner_w, inner_h = self.width - 2 * self.margin, self.height - 2 * self.margin
        return (self.margin + (x - self.x0) / (self.x1 - self.x0) * inner_w,
                self.height - self.margin - (y - self.y0) / (self.y1 - self.y0) * inner_h)  # fmt: skip

    def line(self, points: Sequence[tuple[float, float]], colour, width: int = 2) -> None:
        if len(points) > 1:
            self.draw.line([self.at(x, y) for x, y in points], fill=colour, width=width)

    def point(self, x: float, y: float, colour, label: str = "") -> None:
        cx, cy = self.at(x, y)
        self.draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour)
        self.markers.append((cx - 5, cy - 5, cx + 5, cy + 5))
        if label:
            self._pending.append((cx, cy, label))

    def _inside(self, box: Box) -> bool:
        return box[0] >= 2 and box[1] >= 2 and box[2] <= self.width - 2 and box[3] <= self.height - 2

    def _place_labels(self) -> None:
        """Each label right of its dot, else left, above or below: the first spot inside the image
        that covers no dot and no label placed before it (the first spot inside, when none is free)."""
        for cx, cy, text in self._pending:
            w, h = self.draw.textlength(text), LABEL_HEIGHT
            spots = [(cx + 8, cy - h / 2), (cx - 8 - w, cy - h / 2), (cx + 8, cy - h - 6), (cx + 8, cy + 6),
                     (cx - 8 - w, cy - h - 6), (cx - 8 - w, cy + 6)]  # fmt: skip
            boxes = [(x, y, x + w, y + h) for x, y in spots]
            inside = [b for b in boxes if self._inside(b)]
            taken = self.markers + [box for _, box in self.labels]
            free = [b for b in inside if not any(boxes_overlap(b, t) for t in taken)]
            box = (free or inside or boxes)[0]
            self.labels.append((text, box))
            self.draw.text(box[:2], text, fill=DARK)
        self._pending.clear()

    def axes(self, x_ticks: Sequence[float], x_format: Callable[[float], str], y_format: Callable[[float], str],
             title: str) -> None:  # fmt: skip
        bottom = self.height - self.margin + 8
        for value in x_ticks:
            self.draw.text((self.at(value, self.y_value(self.y0))[0] - 10, bottom), x_format(value), fill=GREY)
        for value in map(self.y_value, np.linspace(self.y0, self.y1, 5)):
            self.draw.text((8, self.at(self.x_value(self.x0), value)[1] - 6), y_format(value), fill=GREY)
        self.draw.rectangle([self.margin, self.margin, self.width - self.margin, self.height - self.margin],
                            outline=GREY)  # fmt: skip
        self.draw.text((self.margin, 20), title, fill=(0, 0, 0))

    def x_value(self, axis_x: float) -> float:
        return 2**axis_x if self.log_x else axis_x

    def y_value(self, axis_y: float) -> float:
        return 2**axis_y if self.log_y else axis_y

    def save(self, path) -> Path:
        self._place_labels()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.image.save(path)
        return path


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points no other point beats on both speedup and PSNR (label, speedup, psnr), by speedup."""
    front = [
        p for p in points if not any(q[1] >= p[1] and q[2] >= p[2] and (q[1], q[2]) != (p[1], p[2]) for q in points)
    ]
    return sorted(front, key=lambda p: p[1])


def pareto_figure(rows, path, title: str = "") -> Path:
    """Speedup (x) against PSNR (y), one labelled point per method, the Pareto front drawn through
    the points no other beats on both; dense is the reference and identical outputs have no PSNR."""
    points = [(r.method, r.speedup, r.psnr) for r in rows if r.error is None and r.psnr is not None]
    xs, ys = [p[1] for p in points] + [1.0], [p[2] for p in points] or [0.0]
    chart = Chart((min(xs) * 0.95, max(xs) * 1.05), (min(ys) - 1, max(ys) + 1))
    chart.line([(1.0, chart.y0), (1.0, chart.y1)], (200, 200, 200), width=1)  # dense speed
    front = pareto_front(points)
    chart.line([(p[1], p[2]) for p in front], RED)
    for label, x, y in points:
        short = "+".join(Path(part).name for part in label.split("+"))  # config files by their name
        chart.point(x, y, RED if (label, x, y) in front else PALETTE[0], f"{short} ({x:.2f}x, {y:.1f} dB)")
    chart.axes(np.linspace(chart.x0, chart.x1, 5), lambda v: f"{v:.2f}x", lambda v: f"{v:.1f} dB",
               f"speedup vs PSNR (vs dense), Pareto front in red  {title}")  # fmt: skip
    return chart.save(path)


def context_figure(results, path, title: str = "") -> Path:
    """Speedup (y) against prompt tokens (x, log scale), one line per SparseD setting, each point
    labelled with SparseD's and dense's exact accuracy."""
    series: dict[str, list] = {}
    for r in results:
        name = f"SparseD {r.mass} mass, keep {r.keep_ratio}, dense {r.dense_fraction}" if r.keep_ratio else "dense"
        series.setdefault(name + (" + prefix cache" if r.prefix_cache else ""), []).append(r)
    contexts = sorted({r.context_tokens for r in results})
    speeds = [r.speedup for r in results] + [1.0]
    chart = Chart((contexts[0] / 1.3, contexts[-1] * 1.3), (min(speeds) / 1.3, max(speeds) * 1.3), log_x=True,
                  log_y=True)  # fmt: skip
    chart.line([(chart.x_value(chart.x0), 1.0), (chart.x_value(chart.x1), 1.0)], (200, 200, 200), width=1)  # dense
    for i, (name, rows) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        rows = sorted(rows, key=lambda r: r.context_tokens)
        chart.line([(r.context_tokens, r.speedup) for r in rows], colour)
        for r in rows:
            label = f"{r.speedup:.2f}x {r.accuracy_sparse:.0%}/{r.accuracy_dense:.0%}"
            chart.point(r.context_tokens, r.speedup, colour, label)
        chart.draw.text((chart.margin + 10, chart.margin + 10 + 16 * i), name, fill=colour)  # legend, top left
    chart.axes(contexts, lambda v: f"{v:,.0f}", lambda v: f"{v:.2f}x",
               f"SparseD speedup vs tokens (labels: accuracy sparse/dense)  {title}")  # fmt: skip
    return chart.save(path)
