"""Reads a generated clip and says which caption it shows: colour, motion direction, shape.

Foreground is every pixel brighter than half scale (the background is black). Colour is the
palette entry nearest the mean foreground colour; direction is the slope of a least-squares line
through the per-frame centroids, snapped to 8 directions or `still`; shape is the fill ratio
of the foreground's bounding box (square ~1, circle ~0.79, triangle ~0.5).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from sparsediff.pipelines.shapes.data import COLOURS, DIRECTIONS, Caption

STILL_PX_PER_FRAME = 0.75  # moving shapes move >= 2 px per frame on each moving axis
AXIS_RATIO = math.tan(math.radians(22.5))  # an axis counts when its speed is this share of the other's


@dataclass(frozen=True)
class Verdict:
    colour: str | None
    direction: str | None
    shape: str | None

    def correct(self, caption: Caption) -> dict[str, bool]:
        both = self.colour == caption.colour and self.direction == caption.direction
        return {
            "colour": self.colour == caption.colour,
            "direction": self.direction == caption.direction,
            "shape": self.shape == caption.shape,
            "colour_and_direction": both,
        }


def _direction(velocity: np.ndarray) -> str:
    vx, vy = velocity
    fastest = max(abs(vx), abs(vy))
    if fastest < STILL_PX_PER_FRAME:
        return "still"
    step = tuple(int(np.sign(v)) if abs(v) >= AXIS_RATIO * fastest else 0 for v in (vx, vy))
    return next(name for name, unit in DIRECTIONS.items() if unit == step)


def _shape(masks: np.ndarray) -> str | None:
    fills = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(ys) >= 4:
            area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            fills.append(len(ys) / area)
    if not fills:
        return None
    fill = float(np.median(fills))
    return "triangle" if fill < 0.64 else "circle" if fill < 0.9 else "square"


def judge_clip(clip: np.ndarray) -> Verdict:
    """clip: (frames, height, width, 3) with values in [0, 1]."""
    clip = np.asarray(clip, dtype=np.float32)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"judge_clip expects (frames, height, width, 3) in [0, 1], got shape {clip.shape}")
    masks = clip.max(axis=-1) > 0.5
    if not masks.any():
        return Verdict(None, None, None)
    mean = clip[masks].mean(axis=0)
    colour = min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - mean) ** 2)))
    times, centres = [], []
    for t, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(ys) >= 3:
            times.append(t)
            centres.append((xs.mean(), ys.mean()))
    direction = None
    if len(times) >= 2:
        velocity = np.polyfit(np.array(times, dtype=np.float64), np.array(centres), 1)[0]
        direction = _direction(velocity)
    return Verdict(colour, direction, _shape(masks))


def prompt_accuracy(clips: Iterable[np.ndarray], captions: Iterable[Caption]) -> dict[str, float]:
    """Share of clips whose colour, direction, shape (and colour and direction together) are right."""
    scores = [judge_clip(clip).correct(caption) for clip, caption in zip(clips, captions, strict=True)]
    if not scores:
        raise ValueError("prompt_accuracy needs at least one clip")
    return {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}


def judge_prompt(clip: np.ndarray, prompt: str) -> dict | None:
    """The judge's reading of a generated clip and whether it matches the prompt (None: prompt not judgeable)."""
    try:
        caption = Caption.parse(prompt)
    except ValueError:
        return None
    verdict = judge_clip(clip)
    return {"seen": asdict(verdict), **verdict.correct(caption)}
