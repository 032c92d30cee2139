"""What a search has computed, kept in a folder so that a stopped search resumes from it.

The folder is keyed by everything the calibration depends on (model, prompts, sizes, steps,
seed, rows, blocks), not by the target: a second search with another target or cache reuses
the dense runs, the calibration, the cost model and every config already generated. Each item
is written atomically once it is complete (a stop loses at most the generation in progress).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from sparsediff.records import append_line, read_lines, write_atomic


class SearchWork:
    """A resume folder (`root`/<key of `settings`>), or nothing kept when `root` is None."""

    def __init__(self, root: Path | None, settings: dict) -> None:
        text = json.dumps(settings, sort_keys=True, default=str)
        self.folder = None if root is None else Path(root) / hashlib.sha1(text.encode()).hexdigest()[:12]
        self._memory: dict[str, object] = {}
        self._evaluations: dict[str, dict] = {}  # every config generated so far: its key -> what was measured
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.folder / "settings.json", json.dumps(settings, indent=1, sort_keys=True, default=str))
            log = self.folder / "evaluations.jsonl"
            self._evaluations = {line["key"]: line["value"] for line in read_lines(log)} if log.exists() else {}

    def get(self, name: str):
        """An item saved by `put` (tensors, arrays, plain objects), or None."""
        if self.folder is None:
            return self._memory.get(name)
        path = self.folder / f"{name}.pt"
        return torch.load(path, weights_only=False) if path.exists() else None

    def put(self, name: str, value) -> None:
        if self.folder is None:
            self._memory[name] = value
            return
        path = self.folder / f"{name}.pt"
        partial = path.with_suffix(".pt.partial")
        torch.save(value, partial)
        os.replace(partial, path)

    def evaluation(self, key: str) -> dict | None:
        """What was measured for the config generated under `key`, or None."""
        return self._evaluations.get(key)

    def add_evaluation(self, key: str, value: dict) -> None:
        self._evaluations[key] = value
        if self.folder is not None:
            append_line(self.folder / "evaluations.jsonl", {"key": key, "value": value})


def choices_key(choices: dict[str, list[int]], cache: str | None) -> str:
    """One key per distinct configuration generated (the per-head picks and the stacked cache)."""
    text = json.dumps([sorted(choices.items()), cache])
    return hashlib.sha1(text.encode()).hexdigest()[:16]
