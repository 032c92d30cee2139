"""End-to-end quality of a config: generate prompts under it (a peer cache stacked, if any) and
compare with their dense outputs; the quality target a search must meet."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from sparsediff.config import SparseConfig
from sparsediff.generate import Method, applied, peer_calibration
from sparsediff.metrics import psnr, ssim
from sparsediff.peers import parse_peer
from sparsediff.search.calibrate import seeded_frames

IDENTICAL_DB = 99.0  # what an output identical to dense counts for, so that means stay finite
SSIM_DB = 100.0  # a margin in SSIM counts this many dB per unit (0.01 SSIM below target = 1 dB)


@dataclass(frozen=True)
class Quality:
    """Mean PSNR (dB) and SSIM of generated outputs against dense, and seconds per generation."""

    psnr: float
    ssim: float
    seconds: float

    def as_json(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


class QualityTarget(BaseModel):
    """What a config must keep against dense, as a mean over prompts: PSNR and/or SSIM."""

    model_config = ConfigDict(frozen=True)
    min_psnr: float | None = None
    min_ssim: float | None = None

    @model_validator(mode="after")
    def _check(self) -> QualityTarget:
        if self.min_psnr is None and self.min_ssim is None:
            raise ValueError("a quality target needs min_psnr (dB) or min_ssim")
        if self.min_psnr is not None and not 0 < self.min_psnr < IDENTICAL_DB:
            raise ValueError(f"min_psnr is in dB against dense, in (0, {IDENTICAL_DB:g}); got {self.min_psnr}")
        if self.min_ssim is not None and not 0 < self.min_ssim < 1:
            raise ValueError(f"min_ssim is an SSIM against dense, in (0, 1); got {self.min_ssim}")
        return self

    def margin(self, quality: Quality) -> float:
        """How far `quality` is above the target, in dB (the worse of its two parts; < 0: missed)."""
        margins = []
        if self.min_psnr is not None:
            margins.append(quality.psnr - self.min_psnr)
        if self.min_ssim is not None:
            margins.append((quality.ssim - self.min_ssim) * SSIM_DB)
        return min(margins)

    def met(self, quality: Quality) -> bool:
        return self.margin(quality) >= 0

    def __str__(self) -> str:
        parts = [f"PSNR >= {self.min_psnr:g} dB" if self.min_psnr is not None else "",
                 f"SSIM >= {self.min_ssim:g}" if self.min_ssim is not None else ""]  # fmt: skip
        return " and ".join(p for p in parts if p)


def stack_of(config: SparseConfig, cache: str | None) -> Method:
    """`config` as the search evaluates it: our half as searched (the speed check off: it would
    measure each new set of patterns and run some calls dense), under `cache` (a peer) if given."""
    peer = parse_peer(cache) if cache else None
    if cache and peer is None:
        raise ValueError(f"--with-cache {cache!r} is not one of diffusers' caches we stack with (see bench methods)")
    ours = config.model_copy(update={"never_slower": False})
    return Method(f"{config.method}+{cache}" if cache else config.method, ours, peer)


def generated_quality(
    pipe,
    method: Method,
    prompts: Sequence[str],
    references: Sequence[np.ndarray],
    seed: int,
    num_inference_steps: int,
    **call_kwargs,
) -> Quality:
    """Quality of the prompts generated under `method` (prompt i with seed `seed + i`, as the
    calibration ran them) against `references`, their dense outputs. A peer that measures the
    model first (MagCache) measures it once, on the first prompt, under our half."""
    steps = num_inference_steps
    first = lambda: seeded_frames(pipe, prompts[0], seed, steps, **call_kwargs)  # noqa: E731
    ratios = peer_calibration(pipe, method, steps, first)
    psnrs, ssims, seconds = [], [], []
    with applied(pipe, method, steps, ratios):
        for i, (prompt, reference) in enumerate(zip(prompts, references, strict=True)):
            start = time.perf_counter()
            frames = seeded_frames(pipe, prompt, seed + i, steps, **call_kwargs)
            seconds.append(time.perf_counter() - start)
            psnrs.append(min(psnr(reference, frames), IDENTICAL_DB))
            ssims.append(ssim(reference, frames))
    return Quality(float(np.mean(psnrs)), float(np.mean(ssims)), float(np.mean(seconds)))
