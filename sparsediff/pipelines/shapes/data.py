"""Procedural text-to-video data: one coloured shape moving in a straight line on black.

Unlimited and seeded: `sample_batch(n, frames, height, width, seed)` renders clips and captions
such as "a red circle moving up left". Motion is 1.75-2.5 px per frame on each moving axis, so over
8 frames a shape travels 3-4 tokens of a 4-px patch grid: direction is visible at the token
scale. Some (colour, shape, direction) triples never appear in training (`held_out`); every
word still does, so held-out prompts test composition, not vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.25, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
SHAPES = ("circle", "square", "triangle")
# Unit steps per frame in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "still": (0, 0),
    "right": (1, 0),
    "left": (-1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up right": (1, -1),
    "up left": (-1, -1),
    "down right": (1, 1),
    "down left": (-1, 1),
}
SPEED_PX = (2.0, 2.5)  # per frame, on each moving axis
RADIUS_PX = (3.5, 5.5)
PATH_JITTER_PX = 1.5  # the path's midpoint lies this close to the frame centre on each axis
EXTENT = {"circle": 1.0, "square": 0.886, "triangle": 1.35}  # half size, in radii (about equal areas)
WORDS = ("a", *COLOURS, *SHAPES, "moving", "staying", *sorted({w for d in DIRECTIONS for w in d.split()}))


@dataclass(frozen=True)
class Caption:
    colour: str
    shape: str
    direction: str

    def __str__(self) -> str:
        motion = "staying still" if self.direction == "still" else f"moving {self.direction}"
        return f"a {self.colour} {self.shape} {motion}"

    @classmethod
    def parse(cls, text: str) -> Caption:
        """The caption a prompt asks for; a prompt outside the grammar is a ValueError."""
        words = text.lower().split()
        if len(words) >= 4 and words[0] == "a" and words[3] in ("moving", "staying"):
            direction = " ".join(words[4:])
            caption = cls(words[1], words[2], direction)
            if (
                words[1] in COLOURS
                and words[2] in SHAPES
                and direction in DIRECTIONS
                and str(caption) == " ".join(words)
            ):
                return caption
        raise ValueError(
            f"prompt {text!r} is outside the shapes grammar: 'a <colour> <shape> moving <direction>' or "
            f"'a <colour> <shape> staying still', colours {', '.join(COLOURS)}, shapes {', '.join(SHAPES)}, "
            f"directions {', '.join(d for d in DIRECTIONS if d != 'still')}"
        )


ALL_CAPTIONS = tuple(Caption(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS)


def is_held_out(caption: Caption) -> bool:
    """One triple in six, spread so every colour, shape and direction still appears in training."""
    c, s, d = (
        list(COLOURS).index(caption.colour),
        SHAPES.index(caption.shape),
        list(DIRECTIONS).index(caption.direction),
    )
    return (c + 2 * s + d) % 6 == 0


HELD_OUT = tuple(c for c in ALL_CAPTIONS if is_held_out(c))
TRAIN = tuple(c for c in ALL_CAPTIONS if not is_held_out(c))


def _coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Inside test of sub-pixel offsets from the shape's centre (about equal areas)."""
    if shape == "circle":
        return dx.square() + dy.square() <= r.square()
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) <= EXTENT["square"] * r
    t = EXTENT["triangle"] * r  # triangle pointing up, apex at -t, base at +t
    return (dy >= -t) & (dy <= t) & (dx.abs() <= (dy + t) / 2)


def render(
    caption: Caption, frames: int, height: int, width: int, radius: float, speed: float, start: tuple[float, float]
) -> torch.Tensor:
    """One clip (frames, 3, height, width) in [-1, 1]; anti-aliased by 4x4 supersampling."""
    ux, uy = DIRECTIONS[caption.direction]
    t = torch.arange(frames, dtype=torch.float32)
    cx, cy = start[0] + ux * speed * t, start[1] + uy * speed * t  # (F,)
    sub = (torch.arange(4, dtype=torch.float32) + 0.5) / 4
    ys = (torch.arange(height, dtype=torch.float32)[:, None] + sub[None, :]).reshape(-1)  # (H*4,)
    xs = (torch.arange(width, dtype=torch.float32)[:, None] + sub[None, :]).reshape(-1)
    dx = xs[None, None, :] - cx[:, None, None]
    dy = ys[None, :, None] - cy[:, None, None]
    inside = _coverage(caption.shape, dx, dy, torch.tensor(radius)).float()  # (F, 4H, 4W)
    alpha = inside.reshape(frames, height, 4, width, 4).mean(dim=(2, 4))
    colour = torch.tensor(COLOURS[caption.colour])
    return (alpha[:, None] * colour[None, :, None, None]) * 2 - 1


def random_motion(
    caption: Caption, frames: int, height: int, width: int, gen: torch.Generator
) -> tuple[float, float, tuple[float, float]]:
    """Radius, speed and a start point: the path's midpoint lies within PATH_JITTER_PX of the centre.

    Centred paths make the caption predict where the shape is on every frame (a moving shape starts
    on the side it moves away from), so even at high noise the denoiser must follow the direction
    word; with uniformly random starts the direction only shows once the shape is visible.
    """

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    radius = uniform(*RADIUS_PX)
    ux, uy = DIRECTIONS[caption.direction]
    margin = EXTENT[caption.shape] * radius + 1
    room = min([size - 2 * margin for u, size in ((ux, width), (uy, height)) if u] or [float("inf")])
    speed = min(uniform(*SPEED_PX), room / max(frames - 1, 1))
    start = []
    for u, size in ((ux, width), (uy, height)):
        half_travel = abs(u) * speed * (frames - 1) / 2
        lo, hi = margin + half_travel, size - margin - half_travel  # where the midpoint may lie
        if hi < lo - 1e-6:
            raise ValueError(f"a {frames}-frame clip of {width}x{height} px is too small for this motion")
        mid = uniform(max(lo, size / 2 - PATH_JITTER_PX), max(lo, min(hi, size / 2 + PATH_JITTER_PX)))
        start.append(mid - u * speed * (frames - 1) / 2)
    return radius, speed, (start[0], start[1])


def sample_batch(
    n: int, frames: int, height: int, width: int, seed: int, captions: tuple[Caption, ...] = TRAIN
) -> tuple[torch.Tensor, list[Caption]]:
    """n clips (n, 3, frames, height, width) in [-1, 1] and their captions; same seed, same batch."""
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(captions), (n,), generator=gen).tolist()
    chosen = [captions[i] for i in picks]
    clips = [render(c, frames, height, width, *random_motion(c, frames, height, width, gen)) for c in chosen]
    return torch.stack(clips).permute(0, 2, 1, 3, 4).contiguous(), chosen
