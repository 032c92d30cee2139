"""`sparsediff search`, `merge` and `structure`: the offline head search and what it looks at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from sparsediff.cli.common import DeviceOption, DtypeOption, app, console, load_on, mb


@app.command("structure")
def structure_cmd(
    out: Annotated[Path, typer.Option(help="figure to write (.png)")] = Path("outputs/attention-structure.png"),
    model: Annotated[
        str | None, typer.Option(help="built-in name, local pipeline folder or diffusers model id")
    ] = None,
    prompt: Annotated[list[str], typer.Option(help="prompt; repeat for several")] = [],  # noqa: B006
    steps: Annotated[int | None, typer.Option(help="denoising steps (default: the model's)")] = None,
    num_frames: Annotated[int | None, typer.Option(help="frames (video models)")] = None,
    height: Annotated[int | None, typer.Option(help="height in pixels")] = None,
    width: Annotated[int | None, typer.Option(help="width in pixels")] = None,
    rows: Annotated[int, typer.Option(help="query rows sampled per attention call")] = 256,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per layer, one per line")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Where attention goes per layer and head: local 3-D, same place in other frames, text, first frame."""
    from sparsediff.generate import Request, check_request, given_or, shared_call_kwargs
    from sparsediff.pipelines.registry import default_model
    from sparsediff.search.structure import CATEGORIES, attention_structure, structure_figure

    try:
        loaded = load_on(model or default_model(), device, dtype)
        entry = loaded.entry
        size = entry.size(num_frames, height, width)
        request = Request(
            (prompt or ["a red circle moving right"])[0], size, given_or(steps, entry.steps), entry.guidance
        )
        check_request(loaded, request)
        kwargs = shared_call_kwargs(loaded, request)
        loaded.pipe.set_progress_bar_config(disable=True)
        n = request.steps
        sampled = sorted({round(i * (n - 1) / 3) for i in range(4)})
        found = attention_structure(loaded.pipe, prompt or [request.prompt], num_inference_steps=n,
                                    sample_steps=sampled, rows=rows, **kwargs)  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    for layer in found.counts:
        mass, share = found.mean_mass(layer), found.mean_share(layer)
        record = {"layer": layer, **{c: [round(float(x), 4) for x in mass[:, i]] for i, c in enumerate(CATEGORIES)},
                  "key_share": {c: round(float(share[i]), 4) for i, c in enumerate(CATEGORIES)}}  # fmt: skip
        if json_out:
            print(json.dumps(record), flush=True)
    path = structure_figure(found, out)
    if not json_out:
        console.print(f"attention structure of {entry.name} at {size}, steps {sampled}: {path}")


@app.command("search")
def search_cmd(
    out: Annotated[Path, typer.Option(help="where to write the searched config (JSON)")],
    model: Annotated[
        str | None, typer.Option(help="built-in name, local pipeline folder or diffusers model id")
    ] = None,
    prompt: Annotated[list[str], typer.Option(help="calibration prompt; repeat for several")] = [],  # noqa: B006
    prompts: Annotated[Path | None, typer.Option(help="file with one calibration prompt per line")] = None,
    max_error: Annotated[float | None, typer.Option(help="per-head relative L2 error bound")] = None,
    budget: Annotated[float | None, typer.Option(help="attention time budget, fraction of dense")] = None,
    min_psnr: Annotated[
        float | None, typer.Option(help="quality target: the fastest config whose outputs keep this PSNR (dB)")
    ] = None,
    min_ssim: Annotated[
        float | None, typer.Option(help="quality target: the fastest config whose outputs keep this SSIM")
    ] = None,
    validate: Annotated[
        int, typer.Option(help="with a target: then generate this many of the model's held-out prompts and report")
    ] = 0,
    validate_prompts: Annotated[
        Path | None, typer.Option(help="with a target: validation prompts, one per line (instead of held-out ones)")
    ] = None,
    with_cache: Annotated[
        str | None, typer.Option(help="with a target: search our half under this cache (magcache, fbcache, ...)")
    ] = None,
    evaluations: Annotated[int, typer.Option(help="with a target: budgets generated end to end, at most")] = 6,
    work: Annotated[
        Path, typer.Option(help="folder that keeps what a search computed; a rerun resumes from it")
    ] = Path("outputs/search-work"),
    steps: Annotated[int | None, typer.Option(help="denoising steps (default: the model's)")] = None,
    guidance: Annotated[float | None, typer.Option(help="guidance scale (default: the model's)")] = None,
    num_frames: Annotated[int | None, typer.Option(help="frames (video models)")] = None,
    height: Annotated[int | None, typer.Option(help="height in pixels")] = None,
    width: Annotated[int | None, typer.Option(help="width in pixels")] = None,
    size: Annotated[
        list[str],
        typer.Option(help="FRAMESxHEIGHTxWIDTH in pixels; repeat to search at several sizes (a bucket each)"),
    ] = [],  # noqa: B006
    calibration_steps: Annotated[int, typer.Option(help="steps scored per prompt")] = 4,
    rows: Annotated[int, typer.Option(help="query rows sampled per attention call")] = 128,
    block_size: Annotated[int, typer.Option(help="block size in tokens")] = 64,
    kv_block_size: Annotated[
        int | None, typer.Option(help="KV block size of static plans (default: --block-size)")
    ] = None,
    dense_fraction: Annotated[float, typer.Option(help="first fraction of steps kept dense")] = 0.0,
    dense_steps: Annotated[int, typer.Option(help="first steps kept dense (the larger of the two counts)")] = 0,
    cost_model: Annotated[Path | None, typer.Option(help="reuse the cost model of an earlier config")] = None,
    start_from: Annotated[
        Path | None,
        typer.Option(
            help="continue from an earlier single-size search: its cost model, refined error weights and, with a "
            "target, its budget as the first one tried"
        ),
    ] = None,
    max_extra_memory: Annotated[
        float | None, typer.Option(help="MB that skipped heads may keep between steps, at the calibration size")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the calibration runs and row sampling")] = 0,
    refine: Annotated[
        int | None,
        typer.Option(
            help="tune the choice end to end, at most this many generations of the prompts (default: 0 with "
            "--budget, 4 with a target)"
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="folder for the heatmap PNG and text table")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Offline head search: the cheapest pattern per layer and head, within an error bound or a budget,
    or the fastest config that keeps a quality target (--min-psnr / --min-ssim)."""
    from sparsediff.generate import Request, check_request, given_or, shared_call_kwargs
    from sparsediff.pipelines.registry import default_model
    from sparsediff.search import CostModel, QualityTarget, search, search_sizes
    from sparsediff.search.report import target_summary

    if threads:
        torch.set_num_threads(threads)
    try:
        texts = list(prompt) + (_read_prompts(prompts) if prompts else [])
        if not texts:
            raise ValueError("give calibration prompts: --prompt TEXT (repeatable) or --prompts FILE")
        if size and (num_frames, height, width) != (None, None, None):
            raise ValueError("give sizes either as --size FxHxW (repeatable) or as --num-frames/--height/--width")
        if size and (cost_model or start_from):
            raise ValueError(
                "--cost-model and --start-from hold timings at one size; a search at several sizes measures its own"
            )
        sizes = [_parse_size(s) for s in size] or [(num_frames, height, width)]
        aimed = min_psnr is not None or min_ssim is not None
        target = QualityTarget(min_psnr=min_psnr, min_ssim=min_ssim) if aimed else None
        if not aimed and (validate or validate_prompts or with_cache):
            raise ValueError(
                "--validate, --validate-prompts and --with-cache go with a target: --min-psnr or --min-ssim"
            )
        if validate < 0:
            raise ValueError(f"--validate is a number of held-out prompts, got {validate}")
        loaded = load_on(model or default_model(), device, dtype)
        entry = loaded.entry
        held_out = _validation_prompts(entry, validate, validate_prompts, texts)
        calls = []
        for frames, h, w in sizes:  # every size is checked before any search starts
            request = Request(texts[0], entry.size(frames, h, w), given_or(steps, entry.steps),
                              given_or(guidance, entry.guidance))  # fmt: skip
            check_request(loaded, request)
            calls.append(shared_call_kwargs(loaded, request))
        weights, start_budget = _start_point(start_from) if start_from else (None, None)
        timed = cost_model or start_from
        costs = CostModel.model_validate(_cost_model_json(timed)) if timed else None
        loaded.pipe.set_progress_bar_config(disable=True)
        settings = dict(
            max_error=max_error, num_inference_steps=request.steps, calibration_steps=calibration_steps, rows=rows,
            block_size=block_size, kv_block_size=kv_block_size, dense_fraction=dense_fraction, dense_steps=dense_steps,
            seed=seed, max_extra_memory_mb=max_extra_memory, target=target, evaluations=evaluations,
            validate=held_out, cache=with_cache, work=work, weights=weights, start_budget=start_budget,
            refine=(4 if aimed else 0) if refine is None else refine,
        )  # fmt: skip
        if size:
            own = ("num_frames", "height", "width")
            shared = {k: v for k, v in calls[0].items() if k not in own}
            per_size = [{k: v for k, v in c.items() if k in own} for c in calls]
            config, results = search_sizes(loaded.pipe, texts, per_size, budget=budget, **settings, **shared)
        else:
            results = [search(loaded.pipe, texts, budget=budget, cost_model=costs, **settings, **calls[0])]
            config = results[0].config
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    except KeyboardInterrupt:
        console.print(f"stopped; what was computed is kept in {work}: the same command resumes from it")
        raise typer.Exit(130) from None
    config.save(out)
    for result in results:
        grid = "x".join(map(str, result.layout.grid))
        console.print(result.table())
        console.print(
            f"latent grid {grid}: predicted {result.config.search['predicted']}, budget "
            f"{result.config.search['settings']['budget']}; search took {result.seconds:.1f} s, "
            f"peak memory {mb(result.peak_mem_mb)} MB"
        )
        refined = result.config.search.get("refinement")
        if refined:
            console.print(
                f"refined end to end: PSNR on the calibration prompts {refined['psnr_before']} -> "
                f"{refined['psnr_after']} dB in {refined['evaluations']} generations, weights {refined['weights']}"
            )
        aimed_at = result.config.search.get("target")
        if aimed_at:
            console.print(target_summary(aimed_at), markup=False)
        if report:
            for name, path in result.write_report(report / grid if size else report).items():
                console.print(f"{name}: {path}")
    use = f"--method {out}+{with_cache}" if with_cache else f"--config {out}"
    console.print(f"config: {out}  (use: sparsediff generate {use})")


def _validation_prompts(entry, count: int, path: Path | None, calibration: list[str]) -> list[str]:
    """The prompts a target search validates on: from `path` (none may be a calibration prompt),
    else `count` of the model's held-out prompts the calibration does not use."""
    if path is not None and count:
        raise ValueError("give --validate N (held-out prompts) or --validate-prompts FILE, not both")
    if path is None:
        return entry.validation_prompts(count, calibration) if count else []
    prompts = _read_prompts(path)
    seen = sorted(set(prompts) & set(calibration))
    if seen:
        raise ValueError(f"validation prompts must be new to the search; {seen} are calibration prompts too")
    return prompts


@app.command("merge")
def merge_cmd(
    configs: Annotated[list[Path], typer.Argument(help="searched configs of one model, at different sizes")],
    out: Annotated[Path, typer.Option(help="where to write the multi-size config (JSON)")],
) -> None:
    """Merge configs searched at different sizes into one with a size bucket each (a later one
    replaces an earlier one at the same size)."""
    from sparsediff.config import SparseConfig
    from sparsediff.search import merge_sizes

    try:
        merged = merge_sizes([SparseConfig.load(path) for path in configs])
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    merged.save(out)
    grids = ", ".join("x".join(map(str, b.grid)) for b in merged.sizes)
    console.print(f"config: {out}  (latent grids {grids}; use: sparsediff generate --config {out})")


def _parse_size(text: str) -> tuple[int, int, int]:
    """ "16x64x64" -> (frames, height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size {text!r} is not FRAMESxHEIGHTxWIDTH in pixels, e.g. 16x64x64")
    frames, height, width = (int(p) for p in parts)
    return frames, height, width


def _read_prompts(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as err:
        raise ValueError(f"cannot read --prompts {path}: {err.strerror or err}") from err


def _start_point(path: Path) -> tuple[dict[str, float], float | None]:
    """The error weights an earlier search's refinement kept (none when it was not refined) and
    the budget it ended at (its target search's answer, or the budget it was given)."""
    search = json.loads(path.read_text()).get("search")
    if not search:
        raise ValueError(f"--start-from {path}: give a config searched at one size (it has search settings)")
    weights = (search.get("refinement") or {}).get("weights", {})
    return weights, (search.get("target") or {}).get("budget") or search["settings"].get("budget")


def _cost_model_json(path: Path) -> dict:
    """A cost model from a saved config (its search.cost_model) or a bare cost model file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read --cost-model {path}: {err}") from err
    return (data.get("search") or {}).get("cost_model", data)
