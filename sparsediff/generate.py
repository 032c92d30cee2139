"""Generate with a pipeline, dense and sparse from the same seed, and tell the truth about both.

`compare` runs the pipeline dense, then with sparse attention, on the same seed; it reports wall
time of each run as a user pays it, after one-off costs reported apart (model load, a two-step
warm-up run of each, and plan building: plans are cached process-wide per layer and layout, so
the warm-up builds them and the timed run builds none), PSNR and SSIM of sparse vs dense,
density over all the run's attention work (dense steps included) and over its sparse calls, and
the model's judge verdicts where it has a judge.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sparsediff import peers
from sparsediff.config import SparseConfig
from sparsediff.integrations import sparse
from sparsediff.integrations.diffusers import attention_processors
from sparsediff.media import VIDEO_SUFFIXES, check_writable, frames_of, side_by_side, write_frames
from sparsediff.memory import PeakMemory
from sparsediff.methods import speed
from sparsediff.metrics import psnr, ssim
from sparsediff.peers import PEERS, Peer, parse_peer
from sparsediff.pipelines.registry import LoadedModel, ModelEntry, Size, check_size
from sparsediff.records import append_line, read_lines


@dataclass(frozen=True)
class Request:
    prompt: str
    size: Size
    steps: int
    guidance: float
    seed: int = 0
    negative_prompt: str | None = None


MAX_STEPS = 1000


def request_problems(loaded: LoadedModel, request: Request) -> list[str]:
    """What is wrong with one generation request for this model (empty: nothing). The one place
    `generate`, `batch`, `search`, `bench`, `structure` and the Python API check requests."""
    problems = []
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        problems.append("the prompt is empty")
    if not 1 <= request.steps <= MAX_STEPS:
        problems.append(f"--steps {request.steps} must be in 1..{MAX_STEPS}")
    if not (math.isfinite(request.guidance) and request.guidance >= 0):
        problems.append(f"--guidance {request.guidance} must be a number >= 0 (1 turns guidance off)")
    if not 0 <= request.seed < 2**63:
        problems.append(f"--seed {request.seed} must be in 0..2**63-1")
    try:
        check_size(loaded, request.size)
    except ValueError as err:
        problems.append(str(err))
    return problems


def check_request(loaded: LoadedModel, request: Request) -> None:
    """Refuse a bad request before any work, with every problem at once."""
    problems = request_problems(loaded, request)
    if problems:
        raise ValueError("; ".join(problems))


@dataclass
class Run:
    frames: np.ndarray  # (F, H, W, 3) in [0, 1]
    seconds: float  # wall time of the pipeline call, everything included
    plan_s: float = 0.0  # of which plan building (sparse runs; zero once the layout was planned)
    density: float | None = None  # share of the run's self/joint attention work computed
    sparse_density: float | None = None  # the same over the calls that ran sparse
    calls: dict = field(default_factory=dict)
    peak_mem_mb: float | None = None  # of this pipeline call alone (`memory.PeakMemory`)
    peak_mem_source: str = ""


def resolve_config(entry: ModelEntry, method: str | None, config: str | None, density: float | None) -> SparseConfig:
    """--config, else --method, else the model's shipped config, else `local` (`sparsed` for text)."""
    if method and config:
        raise ValueError("give --method or --config, not both")
    source = config or method
    if source is None:
        shipped = entry.config is not None and entry.config.exists()
        source = str(entry.config) if shipped else "sparsed" if entry.text else "local"
    loaded = SparseConfig.load(source)
    return loaded if density is None else with_density(loaded, density, source)


def resolve_method(entry: ModelEntry, method: str | None, config: str | None, density: float | None) -> Method:
    """`resolve_config`, or a peer or a stack given as --method (`taylorseer`, `local+fbcache`)."""
    if method is not None and config is None and any(parse_peer(part) for part in method.split("+")):
        return parse_method(method, density)
    return as_method(resolve_config(entry, method, config, density))


def with_density(config: SparseConfig, density: float, source: str) -> SparseConfig:
    """`config` at another density; refused where density means nothing (a searched per-head config)."""
    if config.method == "sparsed":
        raise ValueError(
            f"--density does not apply to {source!r}: SparseD keeps a share of each query block's KV blocks, "
            "which is its keep ratio (--keep-ratio), not a share of the work"
        )
    if config.method in ("pattern", "dense"):
        raise ValueError(
            f"--density does not apply to {source!r} (method {config.method!r}): its density is fixed by "
            "its patterns. Search again with `sparsediff search --budget ...`, or pick a method that takes a "
            "density (local, pyramid, topk, hilbert, raster-window)"
        )
    return SparseConfig.load(config, density=density)


def call_kwargs(pipe, entry: ModelEntry, request: Request, steps: int) -> dict:
    params = inspect.signature(type(pipe).__call__).parameters
    wanted = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "num_inference_steps": steps,
        "guidance_scale": request.guidance,
        "height": request.size.height,
        "width": request.size.width,
        "num_frames": request.size.frames if entry.video else None,
        "generator": torch.Generator().manual_seed(request.seed),
        "output_type": "np",
        **entry.call_kwargs,
    }
    return {k: v for k, v in wanted.items() if k in params and v is not None}


def given_or(value, default):
    """An option's value, or the default when it was not given (a given 0 stays 0, for the checks to refuse)."""
    return default if value is None else value


def shared_call_kwargs(loaded: LoadedModel, request: Request) -> dict:
    """`call_kwargs` without prompt, steps and generator: for runners that set those per prompt."""
    kwargs = call_kwargs(loaded.pipe, loaded.entry, request, request.steps)
    for own in ("prompt", "num_inference_steps", "generator"):
        kwargs.pop(own, None)
    return kwargs


def run(loaded: LoadedModel, request: Request, steps: int | None = None, label: str = "run") -> Run:
    """One pipeline call; a NaN or infinite output is an error, not a picture."""
    kwargs = call_kwargs(loaded.pipe, loaded.entry, request, steps or request.steps)
    with PeakMemory(loaded.pipe.device) as peak:
        start = time.perf_counter()
        frames = frames_of(loaded.pipe(**kwargs))
        seconds = time.perf_counter() - start
    if not np.isfinite(frames).all():
        raise FloatingPointError(
            f"the {label} output of {loaded.entry.name} holds NaN or infinite values; try --dtype float32, "
            "fewer dense-to-sparse changes, or another seed"
        )
    return Run(frames, seconds, peak_mem_mb=peak.mb, peak_mem_source=peak.source)


def unmeasured(timed: Callable[[], Run]) -> Run:
    """timed()'s run, run again when the speed check measured a kind of call during it: a timed
    figure holds no one-off measuring. The rerun reads the verdicts just stored, so it computes
    exactly what the first did."""
    before = speed.measurements()
    got = timed()
    return timed() if speed.measurements() != before else got


def measure_speed(loaded: LoadedModel, request: Request, config: SparseConfig) -> int:
    """Meet every kind of call `config` makes on `request` once with the speed check on, so each
    is measured and stored in the speed profile; how many kinds were new."""
    before = speed.measurements()
    run_method(loaded, request, as_method(SparseConfig.load(config, never_slower=True)))
    return speed.measurements() - before


def warm_up(
    loaded: LoadedModel, request: Request, method: Method | None = None, mag_ratios: list[float] | None = None
) -> Run:
    """A short run that pays one-off costs first (two steps: some multistep schedulers cannot run one);
    with `method`, under it (its first video paid thread-pool and buffer set-up otherwise)."""
    short = replace(request, steps=min(2, request.steps))
    return run(loaded, short, label="warm-up") if method is None else run_method(loaded, short, method, mag_ratios)


@dataclass(frozen=True)
class Method:
    """One method to run: one of ours (a preset or config), one of diffusers' caches (a peer), or
    both stacked (`local+fbcache`: our sparse attention inside the cache's skipping)."""

    label: str
    config: SparseConfig | None
    peer: Peer | None


def parse_method(text: str, density: float | None = None, **overrides) -> Method:
    """`preset`, `config.json`, `peer[:key=value,...]` or one of ours + one peer."""
    parts = text.split("+")
    if len(parts) > 2:
        raise ValueError(f"{text!r}: stack one of ours with one peer at most, e.g. local+fbcache")
    config, peer = None, None
    for part in parts:
        found = parse_peer(part)
        if found is not None:
            if peer is not None:
                raise ValueError(f"{text!r} stacks two peers; stack one of ours with one peer")
            peer = found
            continue
        if config is not None:
            raise ValueError(f"{text!r} stacks two of ours; stack one of ours with one peer")
        try:
            config = SparseConfig.load(part, **overrides)
        except ValueError as err:
            raise ValueError(f"{err}; or a peer: {', '.join(PEERS)}") from err
        config = config if density is None else with_density(config, density, part)
    return Method(text, config, peer)


@contextlib.contextmanager
def ours_under(pipe, method: Method):
    """Our half of `method` applied (None when it has none), with no reused outputs where its peer
    probes; removed on exit."""
    if method.config is None:
        yield None
        return
    with sparse(pipe, method.config) as state:
        if method.peer is not None:
            layers = [n.removesuffix(".processor") for n in attention_processors(pipe.transformer)]
            state.runner.fresh_layers = set(peers.probe_layers(pipe.transformer, method.peer, layers))
        yield state


@contextlib.contextmanager
def applied(pipe, method: Method, steps: int, mag_ratios: list[float] | None = None):
    """Both halves of `method` on the pipeline for the block (our state, or None); removed on exit."""
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(ours_under(pipe, method))
        if method.peer is not None:
            stack.enter_context(peers.enabled(pipe, method.peer, steps, mag_ratios))
        yield state


def run_method(loaded: LoadedModel, request: Request, method: Method, mag_ratios: list[float] | None = None) -> Run:
    """One pipeline call under `method`; ours and the peer are removed after it."""
    with applied(loaded.pipe, method, request.steps, mag_ratios) as state:
        result = run(loaded, request, label=method.label)
    if state is not None:
        result.plan_s = state.plan_seconds
        result.density = state.density()
        result.sparse_density = state.sparse_density()
        result.calls = dict(state.calls)
    return result


@dataclass
class Comparison:
    model: str
    prompt: str
    size: str
    steps: int
    seed: int
    method: str
    density: float | None  # over all the run's self/joint attention work, dense steps included
    sparse_density: float | None  # over the calls that ran sparse only
    dense_s: float
    sparse_s: float
    speedup: float
    psnr: float | None
    ssim: float
    outputs: dict
    load_s: float
    warmup_s: float  # the dense and sparse warm-up runs, plan building included
    plan_s: float  # plan building, paid once per layout (in the warm-up); the timed run's share is in sparse_s
    peak_mem_dense_mb: float | None  # each run's own peak (see peak_mem_source)
    peak_mem_sparse_mb: float | None
    peak_mem_source: str
    random_weights: bool
    attention_calls: dict
    judge_dense: dict | None = None
    judge_sparse: dict | None = None

    def as_json(self) -> dict:
        data = asdict(self)
        data["psnr"] = None if self.psnr is None or math.isinf(self.psnr) else self.psnr
        if self.judge_dense is None:
            data.pop("judge_dense")
            data.pop("judge_sparse")
        return data


def check_out(entry: ModelEntry, out: Path) -> None:
    if not entry.video and out.suffix.lower() in VIDEO_SUFFIXES:
        raise ValueError(f"--out {out}: {entry.name} makes images; use a .png file name")


def compare_paths(out: Path) -> dict[str, Path]:
    """`out` holds the side-by-side; dense and sparse go next to it."""
    return {
        "compare": out,
        "dense": out.with_name(f"{out.stem}.dense{out.suffix}"),
        "sparse": out.with_name(f"{out.stem}.sparse{out.suffix}"),
    }


def as_method(config: SparseConfig | Method) -> Method:
    return config if isinstance(config, Method) else Method(config.method, config, None)


def calibrate(loaded: LoadedModel, request: Request, method: Method) -> list[float] | None:
    """What a peer must measure on the model before it runs (MagCache's ratios), else None."""
    run_once = functools.partial(run, loaded, request, label="calibration")
    return peer_calibration(loaded.pipe, method, request.steps, run_once)


def peer_calibration(pipe, method: Method, steps: int, run_once: Callable[[], object]) -> list[float] | None:
    """MagCache's ratios measured by `run_once` (one pipeline call) when `method`'s peer needs them,
    else None. In a stack it measures the model as it will run, under our half of the method."""
    if method.peer is None or method.peer.name != "magcache":
        return None
    with ours_under(pipe, method):
        return peers.magcache_ratios(pipe, steps, run_once)


def compare(
    loaded: LoadedModel, request: Request, config: SparseConfig | Method, out: Path, warm_up_runs: bool = True
) -> Comparison:
    """Dense and sparse (or a peer, or a stack: a `Method`) from the same seed; writes both and a
    side-by-side next to `out`.

    `warm_up_runs` False skips the two short warm-up runs (a batch warms up on its first item)."""
    check_request(loaded, request)
    check_out(loaded.entry, out)
    paths = compare_paths(out)
    for path in paths.values():
        check_writable(path)
    method = as_method(config)
    start = time.perf_counter()
    ratios = calibrate(loaded, request, method)
    calibration_s = time.perf_counter() - start
    warmup_s, warm_plan_s = calibration_s, 0.0
    if warm_up_runs:
        sparse_warm_up = warm_up(loaded, request, method, ratios)
        warmup_s += warm_up(loaded, request).seconds + sparse_warm_up.seconds
        warm_plan_s = sparse_warm_up.plan_s
    dense = run(loaded, request, label="dense")
    sparse_run = unmeasured(lambda: run_method(loaded, request, method, ratios))
    write_frames(dense.frames, paths["dense"])
    write_frames(sparse_run.frames, paths["sparse"])
    write_frames(side_by_side(dense.frames, sparse_run.frames), paths["compare"])
    judge = loaded.entry.judge
    quality = psnr(dense.frames, sparse_run.frames)
    return Comparison(
        model=loaded.entry.name,
        prompt=request.prompt,
        size=str(request.size),
        steps=request.steps,
        seed=request.seed,
        method=method.label,
        density=sparse_run.density,
        sparse_density=sparse_run.sparse_density,
        dense_s=dense.seconds,
        sparse_s=sparse_run.seconds,
        speedup=dense.seconds / sparse_run.seconds,
        psnr=quality,
        ssim=ssim(dense.frames, sparse_run.frames),
        outputs={k: str(v) for k, v in paths.items()},
        load_s=loaded.load_s,
        warmup_s=warmup_s,
        plan_s=warm_plan_s + sparse_run.plan_s,
        peak_mem_dense_mb=dense.peak_mem_mb,
        peak_mem_sparse_mb=sparse_run.peak_mem_mb,
        peak_mem_source=sparse_run.peak_mem_source,
        random_weights=loaded.entry.random_weights,
        attention_calls=sparse_run.calls,
        judge_dense=judge(dense.frames, request.prompt) if judge else None,
        judge_sparse=judge(sparse_run.frames, request.prompt) if judge else None,
    )


def generate_one(loaded: LoadedModel, request: Request, config: SparseConfig | Method, out: Path) -> dict:
    """One sparse generation written to `out`; returns what `--json` prints."""
    check_request(loaded, request)
    check_out(loaded.entry, out)
    check_writable(out)
    method = as_method(config)
    result = run_method(loaded, request, method, calibrate(loaded, request, method))
    write_frames(result.frames, out)
    summary = {
        "model": loaded.entry.name,
        "prompt": request.prompt,
        "size": str(request.size),
        "method": method.label,
        "density": result.density,
        "sparse_density": result.sparse_density,
        "sparse_s": result.seconds,
        "plan_s": result.plan_s,
        "peak_mem_sparse_mb": result.peak_mem_mb,
        "peak_mem_source": result.peak_mem_source,
        "load_s": loaded.load_s,
        "outputs": {"sparse": str(out)},
        "random_weights": loaded.entry.random_weights,
        "attention_calls": result.calls,
    }
    if loaded.entry.judge is not None:
        summary["judge_sparse"] = loaded.entry.judge(result.frames, request.prompt)
    return summary


@dataclass(frozen=True)
class TextRequest:
    prompt: str
    gen_length: int
    steps: int
    block_length: int
    seed: int = 0
    prefix_cache: bool = False  # Fast-dLLM's prompt KV cache, for dense and sparse alike


def _decode_text(loaded: LoadedModel, request: TextRequest) -> tuple[str, torch.Tensor, float]:
    from sparsediff.pipelines.dllm import masked_diffusion_generate

    tokenizer = loaded.tokenizer
    if tokenizer.mask_token_id is None:
        raise ValueError(f"{loaded.entry.name}'s tokenizer has no mask token; masked diffusion needs one")
    ids = tokenizer(request.prompt, add_special_tokens=False).input_ids
    start = time.perf_counter()
    out = masked_diffusion_generate(
        loaded.pipe, [ids], mask_id=tokenizer.mask_token_id, pad_id=tokenizer.pad_token_id or 0,
        gen_length=request.gen_length, steps=request.steps, block_length=request.block_length, seed=request.seed,
        prefix_cache=request.prefix_cache,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    answer = out[0, -request.gen_length :]
    return tokenizer.decode(answer, skip_special_tokens=True), answer, seconds


def compare_text(loaded: LoadedModel, request: TextRequest, config: SparseConfig) -> dict:
    """Dense and SparseD decoding of one prompt; what `--json` prints for text models."""
    with torch.no_grad():  # warm-up forward at the full length, untimed
        ids = loaded.tokenizer(request.prompt, add_special_tokens=False).input_ids
        loaded.pipe(input_ids=torch.tensor([ids + [loaded.tokenizer.mask_token_id] * request.gen_length]))
    dense_text, dense_ids, dense_s = _decode_text(loaded, request)
    summary, sparse_ids = generate_text_one(loaded, request, config)
    return {
        **summary,
        "answer_dense": dense_text,
        "dense_s": dense_s,
        "speedup": dense_s / summary["sparse_s"],
        "token_agreement": float((dense_ids == sparse_ids).float().mean()),
        "context_tokens": len(ids) + request.gen_length,
    }


def generate_text_one(loaded: LoadedModel, request: TextRequest, config: SparseConfig) -> tuple[dict, torch.Tensor]:
    """One SparseD decoding: (what `--json` prints, the answer's token ids)."""
    with sparse(loaded.pipe, config) as state:
        text, answer_ids, seconds = _decode_text(loaded, request)
    summary = {
        "model": loaded.entry.name,
        "prompt": request.prompt,
        "answer_sparse": text,
        "sparse_s": seconds,
        "density": state.density(),
        "sparse_density": state.sparse_density(),
        "method": config.method,
        "steps": request.steps,
        "load_s": loaded.load_s,
        "random_weights": loaded.entry.random_weights,
        "attention_calls": dict(state.calls),
        "pattern_computations": state.pattern_computations,
    }
    return summary, answer_ids


@dataclass
class MethodResult:
    method: str
    density: float | None  # mean over the prompts, all attention work of each run
    sparse_density: float | None  # mean over the prompts, sparse calls only
    densities: list  # per prompt (density over all work)
    seconds: float | None  # None (and speedup, ssim) for a peer that could not run: see `error`
    speedup: float | None
    psnr: float | None
    ssim: float | None
    judge: dict | None
    peak_mem_mb: float | None = None  # the largest of its runs' own peaks
    error: str | None = None  # why a peer could not run on this model


def compare_methods(
    loaded: LoadedModel, requests: list[Request], methods: list[str], density: float | None, progress: bool = False,
    record: Path | None = None, **overrides,
) -> tuple[float, list[MethodResult]]:  # fmt: skip
    """Dense and every method on the same seeds: (dense seconds, one row per method).

    Per request, dense runs and then each method, so the slow spells of a shared machine fall on
    all of them alike (running each method's requests back to back let them land on one); each
    config is warmed up first, as dense is. The first row is dense itself, so its judge score
    stands beside the methods'. PSNR/SSIM and seconds are averaged over the requests; the judge's
    score is the share of requests whose colour and direction it reads right (where the model has
    a judge).

    `record`: a JSON-lines file that gets each request's figures as soon as they are measured; a
    rerun with the same file and settings measures only the requests it does not hold yet.
    """
    for request in requests:
        check_request(loaded, request)
    parsed = {method: parse_method(method, density, **overrides) for method in methods}
    settings = {"model": loaded.entry.name, "requests": [asdict(r) for r in requests], "methods": methods,
                "density": density, "overrides": overrides}  # fmt: skip
    measured = _recorded(record, settings) if record is not None else []
    warm_up(loaded, requests[0])
    failed: dict[str, str] = {}  # a peer that cannot run on this model: its reason; the bench goes on
    ratios: dict[str, list[float] | None] = {}  # MagCache's calibration, once per method
    for label, method in parsed.items():
        try:
            ratios[label] = calibrate(loaded, requests[0], method)
            warm_up(loaded, requests[0], method, ratios[label])
        except peers.PeerError as err:
            failed[label] = str(err)
    pending = requests[len(measured) :]
    with tqdm(total=len(pending) * (1 + len(methods) - len(failed)), unit="video", disable=not progress) as bar:
        for request in pending:
            bar.set_description("dense")
            dense = run(loaded, request, label="dense")
            figures = {"dense": _figures(loaded, request, dense), "methods": {}}
            bar.update()
            for label in [m for m in methods if m not in failed]:
                bar.set_description(label)
                try:
                    timed = functools.partial(run_method, loaded, request, parsed[label], ratios.get(label))
                    got = unmeasured(timed)
                    figures["methods"][label] = _figures(loaded, request, got, dense)
                except peers.PeerError as err:
                    failed[label] = str(err)
                bar.update()
            if record is not None:
                append_line(record, figures)
            measured.append(figures)
    return _method_rows(measured, methods, failed)


def _figures(loaded: LoadedModel, request: Request, got: Run, dense: Run | None = None) -> dict:
    """One run's figures for the comparison (beside `dense`'s frames when given)."""
    verdict = loaded.entry.judge(got.frames, request.prompt) if loaded.entry.judge is not None else None
    figures = {"seconds": got.seconds, "judge": None if verdict is None else verdict["colour_and_direction"],
               "density": got.density, "sparse_density": got.sparse_density,
               "peak_mem_mb": got.peak_mem_mb}  # fmt: skip
    if dense is not None:
        value = psnr(dense.frames, got.frames)
        figures |= {"psnr": value if math.isfinite(value) else None, "ssim": ssim(dense.frames, got.frames)}
    return figures


def _recorded(record: Path, settings: dict) -> list[dict]:
    """The requests' figures `record` already holds; a new record starts with the settings."""
    lines = read_lines(record) if record.exists() else []
    if not lines:
        record.parent.mkdir(parents=True, exist_ok=True)
        append_line(record, {"settings": settings})
        return []
    if lines[0].get("settings") != json.loads(json.dumps(settings, default=str)):
        raise ValueError(f"--record {record} holds a comparison with other settings; use another file")
    return lines[1:]


def _method_rows(measured: list[dict], methods: list[str], failed: dict[str, str]) -> tuple[float, list]:
    def mean(values: list) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    def judged(runs: list[dict]) -> dict | None:
        share = mean([r["judge"] for r in runs])
        return None if share is None else {"colour_and_direction": share}

    dense = [m["dense"] for m in measured]
    dense_s = mean([d["seconds"] for d in dense])
    peak = max((d["peak_mem_mb"] for d in dense if d["peak_mem_mb"] is not None), default=None)
    rows = [MethodResult("dense", 1.0, 1.0, [1.0] * len(dense), dense_s, 1.0, None, 1.0, judged(dense), peak)]
    for method in methods:
        runs = [m["methods"].get(method) for m in measured]
        if method in failed or None in runs:
            reason = failed.get(method, "no figures for every request (it failed in an earlier, recorded run)")
            rows.append(MethodResult(method, None, None, [], None, None, None, None, None, error=reason))
            continue
        seconds = mean([r["seconds"] for r in runs])
        rows.append(
            MethodResult(
                method=method,
                density=mean([r["density"] for r in runs]),
                sparse_density=mean([r["sparse_density"] for r in runs]),
                densities=[r["density"] for r in runs],
                seconds=seconds,
                speedup=dense_s / seconds,
                psnr=mean([r["psnr"] for r in runs]),
                ssim=mean([r["ssim"] for r in runs]),
                judge=judged(runs),
                peak_mem_mb=max((r["peak_mem_mb"] for r in runs if r["peak_mem_mb"] is not None), default=None),
            )
        )
    return dense_s, rows
