"""Where and in what precision a way in runs: `--device` and `--dtype`, resolved once.

`auto` means what our users run on: a CUDA GPU when there is one (under a launcher, the one of
this process's local rank), else the CPU; bf16 on CUDA, fp32 on the CPU. Asking for CUDA where
there is none is refused before any work, with what is there instead.
"""

from __future__ import annotations

import os

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_HELP = "auto (CUDA when present, else cpu), cpu, cuda or cuda:N"
DTYPE_HELP = "auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16 or float16"


def resolve_device(name: str = "auto") -> torch.device:
    """The device `name` asks for; refused (ValueError) where it does not exist."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a device; give {DEVICE_HELP}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: this machine has no CUDA GPU (torch {torch.__version__}); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: sparsediff runs on {DEVICE_HELP}")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype `name` asks for on `device` (`auto`: bf16 on CUDA, fp32 elsewhere)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: choose {DTYPE_HELP}")
    return DTYPES[name]
