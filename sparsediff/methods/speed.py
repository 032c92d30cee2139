"""Never slower than dense: which kinds of call run sparse, from a speed profile measured once.

A sparse call pays fixed costs (planning its blocks, gathering, launching per head group) that
dense attention does not; at short lengths or small batches it loses (shapes-t2v at 8 x 32 x 32:
0.93x of dense with the config searched at 16 x 64 x 64). So the runner asks `SpeedCheck` about
each kind of call, keyed by everything that changes the answer: what it runs (the plan's
patterns or the method and its settings), the layout, block sizes, backend, shapes, dtype, the
device and its name, torch's thread count, and the torch and sparsediff versions.

The answer comes from a `SpeedProfile`, a JSON file of per-kind measurements and verdicts. A kind
the profile does not hold is measured when it is first met: `repeats` interleaved sparse and
dense runs on the call's own inputs, and it runs sparse only if its best time beats dense's best
by `margin` (noise near break-even cannot flip it). The verdict is stored at once and never
measured again on that machine, and the call returns the output of the verdict, which is what
every later call of that kind returns, in this process or another: the same seed, model,
config and profile give the same output. The check does change which calls run sparse; turn it
off with `never_slower: false` in the config (or SPARSEDIFF_NEVER_SLOWER=0), or pin a profile.

Where the profile lives: `speed_profile` in the config (a pinned profile, shipped beside the
config: read, never written; kinds it lacks are measured for the process only), else
$SPARSEDIFF_SPEED_PROFILE, else `$XDG_CACHE_HOME/sparsediff/speed-profile.json` (default
`~/.cache/...`). `sparsediff profile` measures a model's kinds and shows the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sparsediff.config import SparseConfig

ENV = "SPARSEDIFF_NEVER_SLOWER"
PROFILE_ENV = "SPARSEDIFF_SPEED_PROFILE"
DENSE_REASON = "dense: sparse no faster here"
PROFILE_VERSION = 1


def never_slower(config: SparseConfig) -> bool:
    """Whether `config` runs calls dense where sparse measured no faster (its own setting, else
    the environment's SPARSEDIFF_NEVER_SLOWER, on unless it is "0")."""
    if config.never_slower is not None:
        return config.never_slower
    return os.environ.get(ENV, "1") != "0"


def default_profile_path() -> Path:
    if os.environ.get(PROFILE_ENV):
        return Path(os.environ[PROFILE_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "sparsediff" / "speed-profile.json"


@functools.cache
def device_name(device: torch.device) -> str:
    """What the device is, not only its type: two GPUs of one machine can differ, CPUs do."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment_key(device: torch.device) -> str:
    """The part of every key that says where a measurement holds."""
    from sparsediff import __version__

    index = device.index if device.type == "cuda" and device.index is not None else ""
    threads = torch.get_num_threads() if device.type == "cpu" else ""
    versions = f"torch={torch.__version__}|sparsediff={__version__}"
    return f"{device.type}{index}|{device_name(device)}|threads={threads}|{versions}"


def _synchronized(fn: Callable, device: torch.device):
    """fn() and its wall time in ms, the device's queued work included."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, 1e3 * (time.perf_counter() - start)


@dataclass
class SpeedProfile:
    """Per-kind sparse and dense times and verdicts, kept in a JSON file shared by processes."""

    path: Path | None = None  # None: this process only
    pinned: bool = False  # a profile shipped beside a config: read, never written
    entries: dict[str, dict] = field(default_factory=dict)
    _loaded: bool = False

    def load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.path is not None and self.path.is_file():
            self.entries = {**self._read(), **self.entries}

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}  # a damaged cache is measured anew, never trusted
        return data.get("kinds", {}) if data.get("version") == PROFILE_VERSION else {}

    def get(self, key: str) -> dict | None:
        self.load()
        return self.entries.get(key)

    def add(self, key: str, entry: dict) -> dict:
        """Store `entry` for `key` unless another process stored one first; the entry that holds."""
        self.load()
        if self.path is None or self.pinned:
            return self.entries.setdefault(key, entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # read, merge and write as one step across processes
            self.entries = {**self.entries, **self._read()}
            held = self.entries.setdefault(key, entry)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as f:
                json.dump({"version": PROFILE_VERSION, "kinds": self.entries}, f, indent=1, sort_keys=True)
            os.replace(f.name, self.path)
        return held


@dataclass
class SpeedCheck:
    """Verdicts per kind of call, read from a profile or measured once and stored there."""

    profile: SpeedProfile | None = None  # None: the default profile file, opened at first use
    repeats: int = 3
    margin: float = 0.05  # sparse must beat dense by 5%
    predict: Callable[[object, str], tuple[float, float]] | None = None  # a cost model instead of timing
    seconds: float = 0.0  # time spent measuring
    measured: int = 0  # kinds measured by this check (the rest came from the profile)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _profile(self) -> SpeedProfile:
        if self.profile is None:
            self.profile = SpeedProfile(default_profile_path())
        return self.profile

    def verdict(self, key: str) -> bool | None:
        """True: run sparse; False: run dense; None: not measured yet (call `decide`)."""
        with self._lock:
            entry = self._profile().get(key)
        return None if entry is None else entry["sparse"]

    def decide(
        self, key: str, label: str, call, sparse: Callable, dense: Callable[[], torch.Tensor], device: torch.device
    ):
        """Measure `key` on this call (or ask the cost model) and store the verdict: (verdict, the
        verdict's output: sparse()'s result or dense()'s; None where a cost model decided)."""
        start = time.perf_counter()
        if self.predict is not None:
            sparse_ms, dense_ms = self.predict(call, key)
            sparse_result = dense_result = None
        else:
            sparse_times, dense_times = [], []
            for _ in range(self.repeats):  # interleaved, so a slow moment of the machine hits both
                sparse_result, ms = _synchronized(sparse, device)
                sparse_times.append(ms)
                dense_result, ms = _synchronized(dense, device)
                dense_times.append(ms)
            sparse_ms, dense_ms = min(sparse_times), min(dense_times)
        entry = {"call": label, "sparse": sparse_ms * (1 + self.margin) < dense_ms, "sparse_ms": round(sparse_ms, 4),
                 "dense_ms": round(dense_ms, 4), "measured": time.strftime("%Y-%m-%d")}  # fmt: skip
        with self._lock:
            held = self._profile().add(key, entry)
            self.measured += 1
            self.seconds += time.perf_counter() - start
        _count_measurement()
        if sparse_result is None:
            return held["sparse"], None
        return held["sparse"], sparse_result if held["sparse"] else dense_result


class _DefaultCheck:
    """The process-wide check every runner shares unless given its own; created at first use, so
    that importing sparsediff touches no file."""

    def __init__(self) -> None:
        self.check: SpeedCheck | None = None

    def get(self) -> SpeedCheck:
        if self.check is None:
            self.check = SpeedCheck()
        return self.check


SPEED = _DefaultCheck()
_MEASUREMENTS = [0]  # kinds measured by any check of this process
_MEASUREMENTS_LOCK = threading.Lock()


def _count_measurement() -> None:
    with _MEASUREMENTS_LOCK:
        _MEASUREMENTS[0] += 1


def measurements() -> int:
    """How many kinds of call any check of this process has measured so far: a timed run during
    which this changed paid for measuring, and is run again (`generate.unmeasured`)."""
    return _MEASUREMENTS[0]


def check_for(config: SparseConfig) -> SpeedCheck:
    """The check a runner of `config` asks: its pinned profile's, else the process-wide one."""
    return pinned_check(config.speed_profile) if config.speed_profile else SPEED.get()


@functools.cache
def pinned_check(path: str) -> SpeedCheck:
    """A check that reads the profile at `path` and never writes it (shipped beside a config)."""
    if not Path(path).is_file():
        raise ValueError(f"speed profile {path!r} does not exist; write one with `sparsediff profile --out {path}`")
    return SpeedCheck(SpeedProfile(Path(path), pinned=True))
