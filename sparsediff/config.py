"""SparseConfig: a versioned JSON document saying which attention to compute, and when.

A config is what `sparsediff.apply` takes and what the offline search writes. It holds a method
and its parameters, optional per-layer/per-head patterns, a step schedule and the signature of
the model it was made for (so loading it on another model is an error, not a wrong result).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparsediff.attention import backend_choices
from sparsediff.patterns import PatternSpec

CONFIG_VERSION = 2  # 2 added `sizes` (per-size buckets) and `never_slower`; version 1 files load unchanged


class Schedule(BaseModel):
    """When attention runs dense: the first steps (a count or a fraction) and chosen layers.

    `dense_layers` holds attention module names (`blocks.0.attn1`) or attention-layer indices in
    module order; negative indices count from the end (`[0, -1]`: first and last layer).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dense_steps: int = Field(default=0, ge=0)
    dense_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    dense_layers: tuple[int | str, ...] = ()

    def dense_step_count(self, total_steps: int | None) -> int:
        by_fraction = round(self.dense_fraction * total_steps) if total_steps else 0
        return max(self.dense_steps, by_fraction)


class ModelSignature(BaseModel):
    """What a config was made for; checked when the config is applied."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_class: str
    attention_layers: int
    heads: int
    head_dim: int


class SizeBucket(BaseModel):
    """Per-head patterns searched at one size: `grid` is the latent grid of the visual tokens
    (frames, height, width after patchify), `heads` as `SparseConfig.heads`, `search` what the
    search recorded there."""

    model_config = ConfigDict(extra="forbid")

    grid: tuple[int, int, int]
    heads: dict[str, list[PatternSpec]] = Field(default_factory=dict)
    search: dict | None = None

    def distance(self, grid: tuple[int, int, int]) -> float:
        """How far `grid` is from this bucket's: the summed log ratios of frames, height, width."""
        return sum(abs(math.log(a / b)) for a, b in zip(grid, self.grid, strict=True))


class SparseConfig(BaseModel):
    """Which sparse attention to run.

    method:
        `dense`: every self/joint attention goes through sparsediff but computes all blocks
        (the parity check). `local`: a local 3-D neighbourhood (one `Diagonal`) plus text stripes sized per layout to
        `density`. `pattern`: `pattern` everywhere, or per-layer per-head `heads` (search output).
        `sparsed` (diffusion LMs): dense until the switch step (`schedule`), then per-head block
        patterns taken from that step's attention, keeping `keep_ratio` of each query block's KV blocks.
        Per call, from pooled scores: `pyramid` (PSA levels full, /2, /4, /8, dropped, costing
        `density` of dense) and `topk` (binary blocks). `hilbert`: windows in Hilbert order plus
        coarse global tokens; `raster-window`: the same without the permutation.
    """

    model_config = ConfigDict(extra="forbid")

    version: Literal[1, 2] = CONFIG_VERSION
    method: Literal["dense", "local", "pattern", "sparsed", "pyramid", "topk", "hilbert", "raster-window"] = "local"
    # The share of dense attention work to compute: the target local, pyramid, topk, hilbert and
    # raster-window size themselves to. SparseD's keep ratio is another quantity (`keep_ratio`).
    density: float = Field(default=0.25, gt=0.0, le=1.0)
    keep_ratio: float = Field(default=0.3, gt=0.0, le=1.0)  # sparsed: share of KV blocks each query block keeps
    pattern: PatternSpec | None = None
    heads: dict[str, list[PatternSpec]] = Field(default_factory=dict)
    # `pattern` configs searched at several sizes: each call uses the bucket nearest its grid
    # (`size_bucket`); then `heads` is empty.
    sizes: list[SizeBucket] = Field(default_factory=list)
    block_size: int = Field(default=64, ge=1)
    # Static plans (local, pattern) only: KV blocks of another size than query blocks (None: the
    # same). Smaller KV blocks follow a local band more closely; the search prices either.
    kv_block_size: int | None = Field(default=None, ge=1)
    recompute_every: int = Field(default=0, ge=0)  # sparsed: recompute patterns every k sparse steps (0: never)
    # sparsed: how the pattern step measures block attention mass. "exact": every query row (about
    # one dense attention, whose output it also returns); "rows": `mass_rows` evenly spaced rows per
    # query block; "pooled": each query block's mean query. The estimates cost rows / block (1 / block)
    # of a dense attention, and the pattern step then runs sparse.
    mass: Literal["exact", "rows", "pooled"] = "exact"
    mass_rows: int = Field(default=4, ge=1)
    # hilbert: a 2-D curve per frame (default: it beat raster windows at densities 0.1 and 0.25 on
    # shapes-t2v, the 3-D curve only at 0.1; README), or one 3-D curve through the video.
    order: Literal["hilbert-frame", "hilbert"] = "hilbert-frame"
    coarse_pool: int = Field(default=16, ge=2)  # hilbert / raster-window: tokens per coarse global token
    backend: str = "auto"
    schedule: Schedule = Schedule()
    # Run a call dense where its sparse form measured no faster than dense attention (timed once
    # per kind of call, layout, batch and device; `methods.speed`). None: on, unless the
    # environment sets SPARSEDIFF_NEVER_SLOWER=0 (tests of tiny models, where nothing pays).
    never_slower: bool | None = None
    # A speed profile shipped beside the config (`sparsediff profile --out`): its verdicts decide,
    # and it is never written. None: the machine's own profile (`methods.speed`).
    speed_profile: str | None = None
    model: ModelSignature | None = None
    search: dict | None = None  # what the offline search recorded: settings, predictions, cost model

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data):
        """Configs written before the renames load, with a warning naming the new name."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("method") in RENAMED_METHODS:
            old, data["method"] = data["method"], RENAMED_METHODS[data["method"]]
            _renamed(f"method {old!r}", f"method {data['method']!r}")
        if data.get("method") == "sparsed" and "density" in data and "keep_ratio" not in data:
            data["keep_ratio"] = data.pop("density")
            _renamed("`density` of a sparsed config", "`keep_ratio`")
        return data

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in backend_choices():
            raise ValueError(f"unknown backend {value!r}; choose one of {', '.join(backend_choices())}")
        return value

    @model_validator(mode="after")
    def _pattern_method_has_patterns(self) -> SparseConfig:
        if self.method == "pattern" and self.pattern is None and not self.heads and not self.sizes:
            raise ValueError("method 'pattern' needs `pattern` (all layers) or `heads` (per layer and head)")
        if self.sizes:
            if self.method != "pattern" or self.heads:
                raise ValueError(
                    "`sizes` holds the heads of a `pattern` config searched at several sizes; "
                    "such a config has method 'pattern' and no top-level `heads`"
                )
            grids = [b.grid for b in self.sizes]
            if len(set(grids)) != len(grids):
                raise ValueError(f"`sizes` has a grid more than once: {grids}")
            if self.version < 2:
                raise ValueError("`sizes` needs config version 2")
        return self

    def head_tables(self) -> list[dict[str, list[PatternSpec]]]:
        """Every layer -> per-head patterns table the config holds (one per size bucket)."""
        return [b.heads for b in self.sizes] if self.sizes else [self.heads]

    def size_bucket(self, grid: tuple[int, int, int]) -> tuple[SizeBucket, bool]:
        """The bucket searched nearest to `grid`, and whether `grid` lies within what was searched
        (a searched grid, or between the smallest and largest searched in frames, height and width)."""
        if not self.sizes:
            raise ValueError("this config holds one set of heads, not size buckets")
        nearest = min(self.sizes, key=lambda b: b.distance(grid))
        inside = all(min(b.grid[d] for b in self.sizes) <= grid[d] <= max(b.grid[d] for b in self.sizes)
                     for d in range(3))  # fmt: skip
        return nearest, inside

    @property
    def plan_blocks(self) -> tuple[int, int]:
        """(query, KV) block sizes of static plans."""
        return self.block_size, self.kv_block_size or self.block_size

    @classmethod
    def load(cls, source: SparseConfig | dict | str | os.PathLike, **overrides) -> SparseConfig:
        """A config from an object, a dict, a preset name (`dense`, `local`) or a JSON file."""
        if isinstance(source, SparseConfig):  # overrides are validated like any other field
            return _validate(_merged(source.model_dump(), overrides), "config") if overrides else source
        if isinstance(source, dict):
            return _validate(_merged(source, overrides), "dict")
        if isinstance(source, str) and source in RENAMED_METHODS:
            _renamed(f"preset {source!r}", f"preset {RENAMED_METHODS[source]!r}")
            source = RENAMED_METHODS[source]
        if isinstance(source, str) and source in PRESETS:
            return _validate(_merged(PRESETS[source], overrides), f"preset {source!r}")
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"config {str(source)!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
        if data.get("version", CONFIG_VERSION) not in (1, CONFIG_VERSION):
            raise ValueError(
                f"config file {path} has version {data['version']}; this sparsediff reads versions 1 to "
                f"{CONFIG_VERSION} (upgrade sparsediff to read it)"
            )
        if isinstance(data.get("speed_profile"), str):  # a shipped profile sits beside its config
            data["speed_profile"] = str(path.parent / data["speed_profile"])
        return _validate(_merged(data, overrides), str(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a crash never leaves a half-written config)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(self.model_dump_json(indent=2))
        os.replace(f.name, path)
        return path


PRESETS: dict[str, dict] = {
    "dense": {"method": "dense"},
    "local": {"method": "local", "density": 0.25},
    # 32-token blocks: with 64, a query block's mass is averaged over twice the rows and a
    # needle's block fell out of the kept ones (tiny-dlm: 6 of 16 right vs 15 of 16 at 32).
    # Block mass from 4 query rows per block: the same answers as the exact mass on tiny-dlm from
    # 528 to 4,112 tokens, and 1.1-1.3x faster (docs/diffusion-lms.md).
    "sparsed": {
        "method": "sparsed",
        "keep_ratio": 0.3,
        "schedule": {"dense_fraction": 0.2},
        "block_size": 32,
        "mass": "rows",
    },
    **{name: {"method": name, "density": 0.25} for name in ("pyramid", "topk", "hilbert", "raster-window")},
    "hilbert-3d": {"method": "hilbert", "order": "hilbert", "density": 0.25},
}

# Old name -> new name of a method and its preset (configs and commands that use the old name keep
# working, with a warning).
RENAMED_METHODS = {"window": "local"}


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"sparsediff: {old} is renamed {new}; the old name will stop loading", FutureWarning, stacklevel=4)


def _merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` on top; an override of `density` on a sparsed config is its old
    name for `keep_ratio`."""
    method = RENAMED_METHODS.get(m := overrides.get("method", base.get("method")), m)
    if method == "sparsed" and "density" in overrides and "keep_ratio" not in overrides:
        _renamed("`density` of a sparsed config", "`keep_ratio`")
        overrides = {**overrides, "keep_ratio": overrides["density"]}
        del overrides["density"]
    return {**base, **overrides}


def _validate(data: dict, origin: str) -> SparseConfig:
    try:
        return SparseConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError(f"invalid sparsediff config ({origin}):\n{err}") from err
