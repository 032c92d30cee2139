"""Writing generated frames: mp4 (imageio-ffmpeg), gif or png, always atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import imageio
import imageio.v3 as iio
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".gif")
IMAGE_SUFFIXES = (".png",)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def frames_of(output) -> np.ndarray:
    """(F, H, W, 3) in [0, 1] from a pipeline output (video `.frames` or image `.images`)."""
    data = getattr(output, "frames", None)
    if data is None:
        data = output.images
    data = np.asarray(data[0] if isinstance(data, list) else data, dtype=np.float32)
    if data.ndim == 5:
        data = data[0]
    if data.ndim == 3:  # one image
        data = data[None]
    return data


def check_writable(path: Path) -> None:
    """Fail before generating, not after: the folder must exist (or be creatable) and accept files."""
    if path.suffix.lower() not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        raise ValueError(f"--out {path}: use a .mp4, .gif or .png file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".sparsediff-check-"):
            pass
    except OSError as err:
        raise ValueError(f"--out {path}: cannot write to {path.parent} ({err.strerror or err})") from err


def write_frames(frames: np.ndarray, path: Path, fps: int = 8) -> Path:
    """frames (F, H, W, 3) in [0, 1] -> mp4/gif (video) or png (first frame, or a strip of all frames)."""
    data = to_uint8(frames)
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    if suffix == ".mp4":
        # H.264 in yuv420p needs even sides: pad by repeating the last row/column, never resize.
        data = np.pad(data, ((0, 0), (0, data.shape[1] % 2), (0, data.shape[2] % 2), (0, 0)), mode="edge")
        imageio.mimwrite(tmp, list(data), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    elif suffix == ".gif":
        iio.imwrite(tmp, data, extension=".gif", duration=1000 / fps, loop=0)
    else:
        iio.imwrite(tmp, np.concatenate(list(data), axis=1), extension=".png")
    os.replace(tmp, path)
    return path


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two clips next to each other with a white gap."""
    white = np.ones((*left.shape[:2], gap, left.shape[3]), dtype=left.dtype)
    return np.concatenate([left, white, right], axis=2)
