"""Never slower than dense: which kinds of call run sparse, decided by timing them once.

A sparse call pays a fixed cost (planning its blocks, gathering, launching per head group) that
dense attention does not; at short lengths or small batches it loses (shapes-t2v at 8 x 32 x 32:
0.93x of dense with the config searched at 16 x 64 x 64). So the runner asks `SpeedCheck` per
kind of call (what it runs: the plan's patterns or the method, the layout, shapes, dtype,
device, backend): the first `samples` calls of a kind run sparse (their output is the call's)
and are timed against the model's own dense attention on the same inputs (timed, then
dropped); from then on that kind runs sparse only if its best sparse time beat its best dense
time. Decisions are kept process-wide, so a second pipeline call, or a re-applied config,
times nothing. A `predict` function (call, key) -> (sparse ms, dense ms) replaces the timing
where a cost model is known (tests give a synthetic one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

from sparsediff.config import SparseConfig

ENV = "SPARSEDIFF_NEVER_SLOWER"
DENSE_REASON = "dense: sparse no faster here"


def never_slower(config: SparseConfig) -> bool:
    """Whether `config` runs calls dense where sparse measured no faster (its own setting, else
    the environment's SPARSEDIFF_NEVER_SLOWER, on unless it is "0")."""
    if config.never_slower is not None:
        return config.never_slower
    return os.environ.get(ENV, "1") != "0"


def _synchronized(fn: Callable, device: torch.device):
    """fn() and its wall time in ms, the device's queued work included."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, 1e3 * (time.perf_counter() - start)


@dataclass
class SpeedCheck:
    samples: int = 2
    predict: Callable[[object, Hashable], tuple[float, float]] | None = None
    decided: dict = field(default_factory=dict)  # key -> True (sparse pays) / False
    timings: dict = field(default_factory=dict)  # key -> ([sparse ms], [dense ms]) while undecided
    seconds: float = 0.0  # time spent in dense runs made only to time them

    def verdict(self, key: Hashable, call) -> bool | None:
        """True: run sparse; False: run dense; None: not decided yet (run `timed`)."""
        if key not in self.decided and self.predict is not None:
            sparse_ms, dense_ms = self.predict(call, key)
            self.decided[key] = sparse_ms < dense_ms
        return self.decided.get(key)

    def timed(self, key: Hashable, sparse: Callable, dense: Callable[[], torch.Tensor], device: torch.device):
        """sparse()'s result, timed beside one dense run on the same inputs; decides `key` after
        `samples` such calls."""
        result, sparse_ms = _synchronized(sparse, device)
        _, dense_ms = _synchronized(dense, device)
        self.seconds += dense_ms / 1e3
        sparse_times, dense_times = self.timings.setdefault(key, ([], []))
        sparse_times.append(sparse_ms)
        dense_times.append(dense_ms)
        if len(sparse_times) >= self.samples:
            self.decided[key] = min(sparse_times) < min(dense_times)
            del self.timings[key]
        return result


SPEED = SpeedCheck()  # the process-wide decisions every runner shares by default
