"""`sparsediff bench ...`: speed as ratios in one run, with quality and peak memory beside it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from sparsediff.attention import backend_choices
from sparsediff.cli.common import (
    SPARSED,
    DeviceOption,
    DtypeOption,
    bench_app,
    choice,
    console,
    load_on,
    mb,
    shows_progress,
)
from sparsediff.devices import DTYPES


@bench_app.command("attention")
def bench_attention_cmd(
    seq: Annotated[int, typer.Option(help="tokens per sequence (N)")] = 4096,
    heads: Annotated[int, typer.Option(help="attention heads (H)")] = 12,
    head_dim: Annotated[int, typer.Option(help="head dimension (D)")] = 64,
    density: Annotated[list[float], typer.Option(help="fraction of blocks kept; repeat for several")] = [0.1],  # noqa: B006
    backend: Annotated[list[str], typer.Option(help=f"one of {backend_choices()}; repeat for several")] = ["auto"],  # noqa: B006
    repeat: Annotated[int, typer.Option(help="timed repeats; the median is reported")] = 3,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    block: Annotated[int, typer.Option(help="block size in tokens")] = 64,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per result, one per line")] = False,
) -> None:
    """Dense SDPA vs sparse attention on a diagonal-band-plus-stripes plan (different per head)."""
    from sparsediff.bench import bench_attention

    for b in backend:
        choice(b, backend_choices(), "backend")
    choice(dtype, DTYPES, "dtype")
    if seq < 1 or heads < 1 or head_dim < 1 or repeat < 1 or block < 1:
        raise typer.BadParameter("--seq, --heads, --head-dim, --repeat and --block must be positive")
    for d in density:
        if not 0 < d <= 1:
            raise typer.BadParameter(f"--density must be in (0, 1], got {d}")
    if threads:
        torch.set_num_threads(threads)

    def show(result) -> None:
        if json_out:
            print(json.dumps(asdict(result)), flush=True)
        else:
            console.print(
                f"[dim]{result.backend} density={result.density:.3f}: {result.speedup:.2f}x "
                f"(max abs err {result.max_abs_err})[/dim]"
            )

    if not json_out:
        console.print(
            f"B=1 H={heads} N={seq} D={head_dim} {dtype}, {torch.get_num_threads()} threads: timing dense SDPA ..."
        )
    try:
        results = bench_attention(
            seq, heads, head_dim, density, backend, repeat, DTYPES[dtype], block, device, on_result=show
        )
    except (ValueError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if json_out:
        return
    table = Table(title=f"sparse attention, B=1 H={heads} N={seq} D={head_dim} {dtype}, median of {repeat}")
    for col in ("backend", "density", "dense ms", "sparse ms", "speedup", "first call ms", "max abs err"):
        table.add_column(col, justify="right")
    for r in results:
        err = "-" if r.max_abs_err is None else f"{r.max_abs_err:.1e}"
        table.add_row(
            r.backend,
            f"{r.density:.3f}",
            f"{r.dense_ms:.1f}",
            f"{r.sparse_ms:.1f}",
            f"{r.speedup:.2f}x",
            f"{r.first_call_ms:.0f}",
            err,
        )
    console.print(table)


@bench_app.command("transformer")
def bench_transformer_cmd(
    family: Annotated[list[str], typer.Option(help="tiny model family; repeat for several (default: all)")] = [],  # noqa: B006
    density: Annotated[float, typer.Option(help="local density")] = 0.25,
    repeat: Annotated[int, typer.Option(help="timed repeats; the median is reported")] = 3,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per family, one per line")] = False,
    shape: Annotated[
        str | None, typer.Option(help="a published model at its size instead: wan2.1-480p, wan2.1-720p, hunyuan-720p")
    ] = None,
    device: Annotated[str, typer.Option(help="with --shape: cpu or cuda")] = "cpu",
    dtype: Annotated[str, typer.Option(help="with --shape: float32, bfloat16 or float16")] = "float32",
    scale: Annotated[int, typer.Option(help="with --shape: 1 block of each kind and the latent / scale")] = 1,
    method: Annotated[list[str], typer.Option(help="with --shape: preset or config; repeat")] = ["local"],  # noqa: B006
) -> None:
    """Tiny transformer forwards at >= 8k tokens: native vs `dense` preset (overhead) vs `local`; with
    --shape, a published transformer (random weights) at its real sequence length, per method."""
    from sparsediff.bench import bench_transformer
    from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

    if shape is not None:
        _bench_shape(shape, method, device, dtype, scale, repeat, threads, json_out)
        return

    for f in family:
        choice(f, TINY_TRANSFORMERS, "family")
    if threads:
        torch.set_num_threads(threads)
    table = Table(title=f"tiny transformers (random weights), local density {density}, median of {repeat}")
    for col in (
        "family",
        "tokens",
        "native ms",
        "dense preset ms",
        "overhead",
        "local ms",
        "speedup",
        "density",
        "rel err",
        "peak MB native / local",
    ):
        table.add_column(col, justify="right")
    for f in family or list(TINY_TRANSFORMERS):
        r = bench_transformer(f, density, repeat=repeat)
        if json_out:
            print(json.dumps(asdict(r)), flush=True)
            continue
        console.print(f"[dim]{f}: {r.speedup:.2f}x, overhead {r.overhead_pct:+.1f}%[/dim]")
        table.add_row(
            f,
            str(r.tokens),
            f"{r.native_ms:.0f}",
            f"{r.dense_preset_ms:.0f}",
            f"{r.overhead_pct:+.1f}%",
            f"{r.sparse_ms:.0f}",
            f"{r.speedup:.2f}x",
            f"{r.density:.3f}",
            f"{r.rel_err:.3f}",
            f"{mb(r.peak_mem_dense_mb)} / {mb(r.peak_mem_sparse_mb)}",
        )
    if not json_out:
        console.print(table)
        console.print(f"[dim]peak memory: {r.peak_mem_source}[/dim]")


def _bench_shape(shape, methods, device, dtype, scale, repeat, threads, json_out) -> None:
    from sparsediff.bench import bench_shape

    choice(dtype, DTYPES, "dtype")
    if threads:
        torch.set_num_threads(threads)
    try:
        r = bench_shape(shape, methods, device, DTYPES[dtype], scale, repeat)
    except (ValueError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if json_out:
        print(json.dumps(asdict(r)), flush=True)
        return
    table = Table(title=f"{r.description}: {r.tokens} tokens on {r.device}, scale {r.scale}, native {r.native_ms} ms")
    for col in ("method", "ms", "measured speedup", "attention FLOP ratio", "density"):
        table.add_column(col, justify="right")
    for row in r.methods:
        table.add_row(row["method"], str(row["ms"]), f"{row['measured_ratio']}x", str(row["attention_flop_ratio"]),
                      str(row["density"]))  # fmt: skip
    console.print(table)


@bench_app.command("dllm")
def bench_dllm_cmd(
    context: Annotated[list[int], typer.Option(help="sequence length (prompt + answer); repeat for a curve")] = [8192],  # noqa: B006
    steps: Annotated[int, typer.Option(help="denoising steps")] = 64,
    gen_length: Annotated[int, typer.Option(help="answer tokens")] = 64,
    keep_ratio: Annotated[float, typer.Option(help="SparseD's share of KV blocks kept")] = SPARSED["keep_ratio"],
    dense_fraction: Annotated[float, typer.Option(help="first fraction of steps kept dense")] = SPARSED["schedule"][
        "dense_fraction"
    ],
    mass: Annotated[str, typer.Option(help="pattern step's block mass: exact, rows or pooled")] = SPARSED["mass"],
    hidden: Annotated[int, typer.Option(help="model width")] = 512,
    heads: Annotated[int, typer.Option(help="attention heads")] = 8,
    layers: Annotated[int, typer.Option(help="transformer layers")] = 1,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per context, one per line")] = False,
) -> None:
    """Masked-diffusion decoding, dense vs SparseD, on a random-weight bidirectional Llama."""
    from sparsediff.bench import bench_dllm

    choice(mass, ("exact", "rows", "pooled"), "mass")
    if threads:
        torch.set_num_threads(threads)
    table = Table(title=f"dLLM decoding, {steps} steps, {gen_length} answer tokens (random weights: time only)")
    columns = ("context", "dense s", "sparse s", "speedup", "density", "attention FLOP share", "agreement", "peak MB")
    for col in columns:
        table.add_column(col, justify="right")
    for n in context:
        try:
            r = bench_dllm(n, steps, gen_length, hidden, heads, layers, keep_ratio, dense_fraction,
                           progress=shows_progress(json_out), mass=mass)  # fmt: skip
        except ValueError as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2) from err
        if json_out:
            print(json.dumps(asdict(r)), flush=True)
            continue
        table.add_row(str(n), f"{r.dense_s:.1f}", f"{r.sparse_s:.1f}", f"{r.speedup:.2f}x", f"{r.density:.3f}",
                      f"{r.attention_flop_share:.2f}", f"{r.token_agreement:.2f}",
                      f"{r.dense_peak_mb} / {r.sparse_peak_mb}")  # fmt: skip
    if not json_out:
        console.print(table)
        console.print(f"model: {r.model}; random weights, so the timings are real and the answers are not")


@bench_app.command("memory")
def bench_memory_cmd(
    shape: Annotated[str, typer.Option(help="wan2.1-14b-720p, wan2.1-1.3b-480p or hunyuan-720p")],
    config: Annotated[str, typer.Option(help="sparse config (preset or JSON file)")] = "assets/shapes-t2v/sparse.json",
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """On paper: what a config's skipped heads keep at a published model's shape, beside its weights."""
    from sparsediff.bench import bench_memory

    try:
        r = bench_memory(shape, config)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if json_out:
        print(json.dumps(asdict(r)), flush=True)
        return
    table = Table(show_header=False, title=f"{r.shape}: {r.description}")
    for key, value in asdict(r).items():
        if key not in ("shape", "description"):
            table.add_row(key.replace("_", " "), str(value))
    console.print(table)


@bench_app.command("permutation")
def bench_permutation_cmd(
    frames: Annotated[int, typer.Option(help="latent frames")] = 16,
    height: Annotated[int, typer.Option(help="latent rows")] = 16,
    width: Annotated[int, typer.Option(help="latent columns")] = 16,
    text: Annotated[int, typer.Option(help="text tokens before the video")] = 8,
    batch: Annotated[int, typer.Option(help="batch (2 with classifier-free guidance)")] = 2,
    heads: Annotated[int, typer.Option(help="attention heads")] = 4,
    head_dim: Annotated[int, typer.Option(help="head dimension")] = 32,
    layers: Annotated[int, typer.Option(help="self/joint attention calls per transformer forward")] = 4,
    order: Annotated[str, typer.Option(help="hilbert or hilbert-frame")] = "hilbert",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="the result as one JSON object")] = False,
) -> None:
    """The Hilbert permutation per attention call vs once per transformer forward (the most it saves)."""
    from sparsediff.bench import bench_permutation

    choice(order, ["hilbert", "hilbert-frame"], "order")
    if threads:
        torch.set_num_threads(threads)
    r = bench_permutation(frames, height, width, text, batch, heads, head_dim, layers, order=order)
    if json_out:
        print(json.dumps(asdict(r)))
        return
    console.print(
        f"{r.tokens} tokens, {r.order}: one hilbert call {r.method_ms:.2f} ms, of which the per-call permutation "
        f"{r.per_call_permute_ms:.3f} ms ({100 * r.per_call_share:.1f}%); permuting once per forward would cost "
        f"{r.per_forward_permute_ms:.3f} ms and save {r.saving_per_forward_ms:.3f} ms per forward of "
        f"{r.attention_calls_per_forward} attention calls"
    )


@bench_app.command("methods")
def bench_methods_cmd(
    model: Annotated[
        str | None, typer.Option(help="built-in name, local pipeline folder or diffusers model id")
    ] = None,
    method: Annotated[
        list[str],
        typer.Option(help="preset, config JSON, peer (fbcache[:threshold=0.1]) or ours+peer; repeat"),
    ] = [],  # noqa: B006
    density: Annotated[
        float | None,
        typer.Option(
            help="the density every method targets (default: each preset's own; refused for searched configs)"
        ),
    ] = None,
    prompt: Annotated[list[str], typer.Option(help="prompt; repeat for several (same seeds for every method)")] = [],  # noqa: B006
    held_out: Annotated[
        int | None, typer.Option(help="use this many of the model's held-out prompts, spread evenly (shapes-t2v)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps (default: the model's)")] = None,
    num_frames: Annotated[int | None, typer.Option(help="frames (video models)")] = None,
    height: Annotated[int | None, typer.Option(help="height in pixels")] = None,
    width: Annotated[int | None, typer.Option(help="width in pixels")] = None,
    dense_steps: Annotated[
        int | None, typer.Option(help="first steps kept dense for every method (default: each config's own)")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="one JSON object per method, one per line, then a summary object")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="write a speedup vs PSNR Pareto plot (.png)")] = None,
    record: Annotated[
        Path | None,
        typer.Option(help="append each prompt's figures to this .jsonl as it finishes; rerun to resume"),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Methods side by side on the same seeds: ours (presets, configs), diffusers' caches (pab,
    fastercache, fbcache, taylorseer, magcache, seacache; `name:key=value`) and stacks (`ours+peer`)."""
    from sparsediff.figures import pareto_figure
    from sparsediff.generate import Request, compare_methods, given_or
    from sparsediff.pipelines.registry import default_model

    if threads:
        torch.set_num_threads(threads)
    try:
        if plot is not None and plot.suffix.lower() != ".png":
            raise ValueError(f"--plot {plot}: use a .png file name")
        if prompt and held_out is not None:
            raise ValueError("give --prompt or --held-out, not both")
        loaded = load_on(model or default_model(), device, dtype)
        entry = loaded.entry
        size = entry.size(num_frames, height, width)
        prompts = prompt or (
            entry.held_out_prompts(held_out) if held_out is not None else ["a red circle moving right"]
        )
        requests = [
            Request(p, size, given_or(steps, entry.steps), entry.guidance, seed=i) for i, p in enumerate(prompts)
        ]
        loaded.pipe.set_progress_bar_config(disable=True)
        methods = method or ["local", "topk", "pyramid", "raster-window", "hilbert"]
        overrides = {} if dense_steps is None else {"schedule": {"dense_steps": dense_steps}}
        dense_s, rows = compare_methods(loaded, requests, methods, density, progress=shows_progress(json_out),
                                        record=record, **overrides)  # fmt: skip
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if plot is not None:
        pareto_figure(rows, plot, title=f"{entry.name} {size}, {len(requests)} prompt(s)")
    if json_out:
        for r in rows:
            print(json.dumps({**asdict(r), "dense_s": dense_s, "model": entry.name, "size": str(size)}), flush=True)
        keys = ("method", "seconds", "speedup", "psnr", "ssim", "judge", "density", "peak_mem_mb", "error")
        summary = {"model": entry.name, "size": str(size), "prompts": prompts, "dense_s": dense_s,
                   "methods": [{k: getattr(r, k) for k in keys} for r in rows]}  # fmt: skip
        print(json.dumps(summary), flush=True)
        return
    table = Table(
        title=f"{entry.name} {size}, {requests[0].steps} steps, {len(requests)} prompt(s), dense {dense_s:.2f} s"
    )
    for col in ("method", "density", "sparse s", "speedup", "PSNR dB", "SSIM", "judge", "peak MB"):
        table.add_column(col, justify="right")
    for r in rows:
        if r.error is not None:
            table.add_row(r.method, "-", "-", "-", "-", "-", "-", "-")
            continue
        judge = "-" if r.judge is None else f"{r.judge['colour_and_direction']:.2f}"
        psnr_text = "reference" if r.method == "dense" else "identical" if r.psnr is None else f"{r.psnr:.2f}"
        density_text = "-" if r.density is None else f"{r.density:.3f}"  # peers: no attention density
        table.add_row(r.method, density_text, f"{r.seconds:.2f}", f"{r.speedup:.2f}x", psnr_text,
                      f"{r.ssim:.4f}", judge, mb(r.peak_mem_mb))  # fmt: skip
    console.print(table)
    for r in rows:
        if r.error is not None:
            console.print(f"[yellow]{r.method}: {r.error}[/yellow]")
    if plot is not None:
        console.print(f"Pareto plot: {plot}")


@bench_app.command("list")
def bench_list_cmd() -> None:
    """The benchmark specs: what each measures, its command, and its published record's date."""
    from sparsediff.benchmarks import load_record, load_specs

    table = Table(title="benchmark specs (assets/benchmarks)")
    for col in ("name", "measures", "published", "took"):
        table.add_column(col)
    for name, spec in load_specs().items():
        record = load_record(name)
        published = "-" if record is None else f"{record['environment']['date']}, {record['environment']['hardware']}"
        took = "-" if record is None else f"{record['seconds'] / 60:.1f} min"
        table.add_row(name, spec.title, published, took)
    console.print(table)


@bench_app.command("run")
def bench_run_cmd(
    name: Annotated[list[str], typer.Argument(help="spec names (sparsediff bench list)")] = [],  # noqa: B006
    run_all: Annotated[bool, typer.Option("--all", help="every spec, one after another")] = False,
    out: Annotated[Path, typer.Option(help="folder for the records (and what a rerun resumes from)")] = Path(
        "outputs/bench"
    ),
    publish: Annotated[
        bool, typer.Option(help="write the records as the published ones (assets/benchmarks/records)")
    ] = False,
) -> None:
    """Run benchmark specs and write their records; each table is shown beside the published one."""
    from sparsediff.benchmarks import PUBLISHED, load_record, load_specs, render, run_spec, save_record, spec_named

    try:
        if run_all == bool(name):
            raise ValueError("name one or more specs, or --all")
        specs = list(load_specs().values()) if run_all else [spec_named(n) for n in name]
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    for spec in specs:
        console.print(f"[bold]{spec.name}[/bold]: {spec.title}\n[dim]{spec.command()}[/dim]")
        try:
            record = run_spec(spec, out)
        except RuntimeError as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(1) from err
        path = save_record(record, PUBLISHED if publish else out)
        console.print(f"[green]this machine[/green] ({path}):\n{render(record)}")
        published = load_record(spec.name)
        if published is not None and not publish:
            console.print(f"[cyan]published[/cyan]:\n{render(published)}")


@bench_app.command("report")
def bench_report_cmd(
    check: Annotated[bool, typer.Option(help="only compare: exit 1 when a published table differs")] = False,
) -> None:
    """Render the tables and plots of README.md and docs/ from the published records."""
    from sparsediff.benchmarks import render_plots, update_docs

    try:
        changed = update_docs(check=check)
        if not check:
            for path in render_plots():
                console.print(f"plot: {path}")
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    for block in changed:
        console.print(f"{'differs' if check else 'rewritten'}: {block}")
    if check and changed:
        console.print("run `sparsediff bench report` to render them from the records")
        raise typer.Exit(1)
