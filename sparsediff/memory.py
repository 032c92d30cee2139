"""Peak memory of one run, measured so that an earlier run's peak cannot hide a later one's.

CUDA: the caching allocator's peak (`torch.cuda.max_memory_allocated`) after
`reset_peak_memory_stats`. CPU: the process's peak resident set (VmHWM in /proc/self/status),
reset before the run by writing 5 to /proc/self/clear_refs (Linux >= 4.0), after returning the
C allocator's free pages to the system (`malloc_trim`), so the reset starts from what is really
in use. Where neither works (another OS), the peak since the process started: a lower bound
that an earlier, larger run hides, and `source` says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@cache
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _rss_peak_mb() -> float | None:
    try:
        found = re.search(r"VmHWM:\s+(\d+)\s+kB", STATUS.read_text())
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def _reset_rss_peak() -> bool:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.mb` (MB) and `peak.source` (what it measured)."""

    device: torch.device | str = "cpu"
    mb: float | None = None
    source: str = ""

    def __enter__(self) -> PeakMemory:
        device = torch.device(self.device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.source = "CUDA allocator peak (reset per run)"
        elif _reset_rss_peak():
            self.source = "process peak resident set (VmHWM, reset per run)"
        else:
            self.source = "process peak resident set since start (not resettable here: a lower bound)"
        return self

    def __exit__(self, *exc) -> bool:
        device = torch.device(self.device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self.mb = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            self.mb = _rss_peak_mb()
        return False
