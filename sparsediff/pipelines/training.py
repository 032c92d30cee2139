"""What every training script here shares: atomic checkpoints, a JSONL log, saving on `kill`."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint `save_atomic` wrote: state dicts, numbers and strings only, so it loads with
    `weights_only=True` (unpickling arbitrary objects from a file is never needed)."""
    return torch.load(path, weights_only=True)


def log(run: Path, record: dict) -> None:
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def save_on_sigterm() -> None:
    """`kill` raises KeyboardInterrupt like Ctrl-C, so the loop's `finally` saves finished steps."""
    signal.signal(signal.SIGTERM, _interrupt)
