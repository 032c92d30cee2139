"""The `sparsediff` command line (typer); output goes through rich."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from sparsediff.attention import backend_choices
from sparsediff.config import PRESETS

app = typer.Typer(
    help="Sparse attention for diffusion transformers.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
bench_app = typer.Typer(help="Speed benchmarks: dense vs sparse, side by side in one process.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPARSED = PRESETS["sparsed"]  # eval's and bench dllm's defaults
SPARSED_DEFAULTS = {  # eval repeats each option for a curve
    "density": [SPARSED["density"]],
    "dense_fraction": [SPARSED["schedule"]["dense_fraction"]],
    "mass": [SPARSED["mass"]],
}


def _choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


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
        _choice(b, backend_choices(), "backend")
    _choice(dtype, DTYPES, "dtype")
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
    density: Annotated[float, typer.Option(help="window density")] = 0.25,
    repeat: Annotated[int, typer.Option(help="timed repeats; the median is reported")] = 3,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per family, one per line")] = False,
    shape: Annotated[
        str | None, typer.Option(help="a published model at its size instead: wan2.1-480p, wan2.1-720p, hunyuan-720p")
    ] = None,
    device: Annotated[str, typer.Option(help="with --shape: cpu or cuda")] = "cpu",
    dtype: Annotated[str, typer.Option(help="with --shape: float32, bfloat16 or float16")] = "float32",
    scale: Annotated[int, typer.Option(help="with --shape: 1 block of each kind and the latent / scale")] = 1,
    method: Annotated[list[str], typer.Option(help="with --shape: preset or config; repeat")] = ["window"],  # noqa: B006
) -> None:
    """Tiny transformer forwards at >= 8k tokens: native vs `dense` preset (overhead) vs `window`; with
    --shape, a published transformer (random weights) at its real sequence length, per method."""
    from sparsediff.bench import bench_transformer
    from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

    if shape is not None:
        _bench_shape(shape, method, device, dtype, scale, repeat, threads, json_out)
        return

    for f in family:
        _choice(f, TINY_TRANSFORMERS, "family")
    if threads:
        torch.set_num_threads(threads)
    table = Table(title=f"tiny transformers (random weights), window density {density}, median of {repeat}")
    for col in (
        "family",
        "tokens",
        "native ms",
        "dense preset ms",
        "overhead",
        "window ms",
        "speedup",
        "density",
        "rel err",
        "peak MB native / window",
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
            f"{_mb(r.peak_mem_dense_mb)} / {_mb(r.peak_mem_sparse_mb)}",
        )
    if not json_out:
        console.print(table)
        console.print(f"[dim]peak memory: {r.peak_mem_source}[/dim]")


def _bench_shape(shape, methods, device, dtype, scale, repeat, threads, json_out) -> None:
    from sparsediff.bench import bench_shape

    _choice(dtype, DTYPES, "dtype")
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
    density: Annotated[float, typer.Option(help="SparseD keep ratio of KV blocks")] = SPARSED["density"],
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

    _choice(mass, ("exact", "rows", "pooled"), "mass")
    if threads:
        torch.set_num_threads(threads)
    table = Table(title=f"dLLM decoding, {steps} steps, {gen_length} answer tokens (random weights: time only)")
    columns = ("context", "dense s", "sparse s", "speedup", "density", "attention FLOP share", "agreement", "peak MB")
    for col in columns:
        table.add_column(col, justify="right")
    for n in context:
        try:
            r = bench_dllm(n, steps, gen_length, hidden, heads, layers, density, dense_fraction,
                           progress=not json_out, mass=mass)  # fmt: skip
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

    _choice(order, ["hilbert", "hilbert-frame"], "order")
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
) -> None:
    """Methods side by side on the same seeds: ours (presets, configs), diffusers' caches (pab,
    fastercache, fbcache, taylorseer, magcache, seacache; `name:key=value`) and stacks (`ours+peer`)."""
    from sparsediff.figures import pareto_figure
    from sparsediff.generate import Request, compare_methods, given_or
    from sparsediff.pipelines.registry import default_model, load_model

    if threads:
        torch.set_num_threads(threads)
    try:
        if plot is not None and plot.suffix.lower() != ".png":
            raise ValueError(f"--plot {plot}: use a .png file name")
        if prompt and held_out is not None:
            raise ValueError("give --prompt or --held-out, not both")
        loaded = load_model(model or default_model())
        entry = loaded.entry
        size = entry.size(num_frames, height, width)
        prompts = prompt or (
            entry.held_out_prompts(held_out) if held_out is not None else ["a red circle moving right"]
        )
        requests = [
            Request(p, size, given_or(steps, entry.steps), entry.guidance, seed=i) for i, p in enumerate(prompts)
        ]
        loaded.pipe.set_progress_bar_config(disable=True)
        methods = method or ["window", "topk", "pyramid", "raster-window", "hilbert"]
        overrides = {} if dense_steps is None else {"schedule": {"dense_steps": dense_steps}}
        dense_s, rows = compare_methods(loaded, requests, methods, density, progress=not json_out, record=record,
                                        **overrides)  # fmt: skip
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
                      f"{r.ssim:.4f}", judge, _mb(r.peak_mem_mb))  # fmt: skip
    console.print(table)
    for r in rows:
        if r.error is not None:
            console.print(f"[yellow]{r.method}: {r.error}[/yellow]")
    if plot is not None:
        console.print(f"Pareto plot: {plot}")


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
) -> None:
    """Where attention goes per layer and head: local 3-D, same place in other frames, text, first frame."""
    from sparsediff.generate import Request, check_request, given_or, shared_call_kwargs
    from sparsediff.pipelines.registry import default_model, load_model
    from sparsediff.search.structure import CATEGORIES, attention_structure, structure_figure

    try:
        loaded = load_model(model or default_model())
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


@app.command("generate")
def generate_cmd(
    prompt: Annotated[str, typer.Option(help="what to generate")] = "a red circle moving right",
    negative_prompt: Annotated[str | None, typer.Option(help="what to steer away from")] = None,
    model: Annotated[
        str | None, typer.Option(help="built-in name, local pipeline folder or diffusers model id")
    ] = None,
    method: Annotated[str | None, typer.Option(help="sparse method or preset: dense, window, sparsed (text)")] = None,
    config: Annotated[str | None, typer.Option(help="sparse config: preset name or JSON file")] = None,
    density: Annotated[
        float | None, typer.Option(help="fraction of attention kept (methods that take one; not searched configs)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps (default: the model's)")] = None,
    guidance: Annotated[float | None, typer.Option(help="guidance scale (default: the model's)")] = None,
    seed: Annotated[int, typer.Option(help="random seed (dense and sparse share it)")] = 0,
    num_frames: Annotated[int | None, typer.Option(help="frames (video models)")] = None,
    height: Annotated[int | None, typer.Option(help="height in pixels")] = None,
    width: Annotated[int | None, typer.Option(help="width in pixels")] = None,
    out: Annotated[Path | None, typer.Option(help="output file: .mp4, .gif or .png")] = None,
    gen_length: Annotated[int | None, typer.Option(help="answer tokens (text models)")] = None,
    block_length: Annotated[int | None, typer.Option(help="semi-autoregressive block (text models)")] = None,
    prefix_cache: Annotated[
        bool, typer.Option(help="keep the prompt's keys and values between a block's steps (text models)")
    ] = False,
    compare: Annotated[bool, typer.Option("--compare", help="also run dense; report speedup and quality")] = False,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object on the last line of stdout")] = False,
) -> None:
    """Generate an image or video with sparse attention; --compare puts it beside dense."""
    from sparsediff.generate import Request, generate_one, given_or, resolve_method
    from sparsediff.generate import compare as run_compare
    from sparsediff.pipelines.registry import default_model, load_model

    _choice(dtype, DTYPES, "dtype")
    if threads:
        torch.set_num_threads(threads)
    model = model or default_model()
    try:
        loaded = load_model(model, DTYPES[dtype])
        entry = loaded.entry
        if entry.text:
            _generate_text(loaded, prompt, steps, gen_length, block_length, seed, method, config, density, compare,
                           json_out, prefix_cache)  # fmt: skip
            return
        if prefix_cache:
            raise ValueError(f"--prefix-cache is for diffusion language models; {entry.name} makes images or video")
        size = entry.size(num_frames, height, width)
        request = Request(
            prompt, size, given_or(steps, entry.steps), given_or(guidance, entry.guidance), seed, negative_prompt
        )
        sparse_config = resolve_method(entry, method, config, density)
        suffix = ".mp4" if entry.video else ".png"
        out = out or Path("outputs") / f"{Path(model).name}-seed{seed}{suffix}"
        if not json_out:
            note = " (random weights: the output is noise-like)" if entry.random_weights else ""
            console.print(
                f"{entry.name}{note}: {size} (frames x height x width), {request.steps} steps, "
                f"method {sparse_config.label}, loaded in {loaded.load_s:.1f} s"
            )
        if compare:
            result = run_compare(loaded, request, sparse_config, out)
            summary = result.as_json()
        else:
            summary = generate_one(loaded, request, sparse_config, out)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if json_out:
        print(json.dumps(summary), flush=True)
        return
    _print_summary(summary)


@app.command("batch")
def batch_cmd(
    ctx: typer.Context,
    prompts: Annotated[Path, typer.Argument(help="prompt file: .txt (one a line), .jsonl or .csv")],
    out: Annotated[Path, typer.Option(help="folder for the outputs, manifest.jsonl and batch.json")],
    model: Annotated[
        str | None, typer.Option(help="built-in name, local pipeline folder or diffusers model id")
    ] = None,
    method: Annotated[str | None, typer.Option(help="default sparse method or preset for every row")] = None,
    config: Annotated[str | None, typer.Option(help="default sparse config (preset or JSON file)")] = None,
    density: Annotated[float | None, typer.Option(help="default density (methods that take one)")] = None,
    seeds: Annotated[int, typer.Option(help="items per row, with seeds seed, seed + 1, ...")] = 1,
    seed: Annotated[int, typer.Option(help="first seed of rows that set none")] = 0,
    steps: Annotated[int | None, typer.Option(help="denoising steps (default: the model's)")] = None,
    guidance: Annotated[float | None, typer.Option(help="guidance scale (default: the model's)")] = None,
    num_frames: Annotated[int | None, typer.Option(help="frames (video models)")] = None,
    height: Annotated[int | None, typer.Option(help="height in pixels")] = None,
    width: Annotated[int | None, typer.Option(help="width in pixels")] = None,
    output_format: Annotated[str, typer.Option("--format", help="mp4, gif or png")] = "mp4",
    compare: Annotated[bool, typer.Option("--compare", help="also run dense: speedup, PSNR, SSIM per item")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="run the valid rows, record the rest")] = False,
    force: Annotated[bool, typer.Option("--force", help="add to a folder made with other settings")] = False,
    processes: Annotated[int, typer.Option(help="worker processes (torch.distributed.run, gloo on CPU)")] = 1,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    threads: Annotated[int | None, typer.Option(help="torch threads per process (default: 1 with --processes)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="the summary as one JSON object")] = False,
) -> None:
    """Generate every row of a prompt file: checked first, resumable, over one or many processes."""
    import os

    from sparsediff.pipelines.batch import BatchDefaults, BatchError, check_settings, plan_items, run_batch
    from sparsediff.pipelines.registry import default_model, load_model

    _choice(dtype, DTYPES, "dtype")
    worker = "RANK" in os.environ  # started by torch.distributed.run (or accelerate launch)
    if threads or (processes > 1 or worker):
        torch.set_num_threads(threads or 1)
    defaults = BatchDefaults(config, method, density, seeds, seed, steps, guidance, num_frames, height, width,
                             output_format, compare)  # fmt: skip
    try:
        if processes < 1:
            raise ValueError(f"--processes {processes} must be at least 1")
        loaded = load_model(model or default_model(), DTYPES[dtype])
        items, problems = plan_items(loaded, prompts, defaults, out)
        if problems and not skip_invalid:
            raise BatchError(prompts, problems)
        settings = {"model": loaded.entry.name, "config": config, "method": method, "density": density,
                    "format": output_format, "compare": compare, "dtype": dtype}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        check_settings(out, settings, force)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if processes > 1 and not worker:
        raise typer.Exit(_launch_workers(processes, _batch_argv(ctx.params)))
    loaded.pipe.set_progress_bar_config(disable=json_out)
    summary = run_batch(loaded, items, out, with_dense=compare, progress=not json_out, invalid=problems)
    if summary is None:  # not the main process
        return
    if json_out:
        print(json.dumps(asdict(summary)), flush=True)
    else:
        table = Table(show_header=False, title=f"sparsediff batch: {prompts} -> {out}")
        for key, value in asdict(summary).items():
            if key != "failures" and value is not None:
                table.add_row(key.replace("_", " "), str(value))
        console.print(table)
        for failure in summary.failures:
            console.print(f"[red]failed:[/red] {failure}")
    if summary.failed:
        raise typer.Exit(1)


def _batch_argv(params: dict) -> list[str]:
    """The same batch command for each worker (without --processes)."""
    argv = ["batch", str(params["prompts"])]
    flags = {"compare": "--compare", "skip_invalid": "--skip-invalid", "force": "--force", "json_out": "--json"}
    names = {"output_format": "--format"}
    for name, value in params.items():
        if name in ("prompts", "processes") or value is None or value is False:
            continue
        if name in flags:
            argv.append(flags[name])
        else:
            argv += [names.get(name, "--" + name.replace("_", "-")), str(value)]
    return argv


def _launch_workers(processes: int, argv: list[str]) -> int:
    """Start `processes` workers with torch's launcher on this machine; their exit code."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "sparsediff.cli", *argv]  # fmt: skip
    return subprocess.call(command)


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
    max_extra_memory: Annotated[
        float | None, typer.Option(help="MB that skipped heads may keep between steps, at the calibration size")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the calibration runs and row sampling")] = 0,
    refine: Annotated[
        int,
        typer.Option(help="with --budget: tune the choice end to end, at most this many generations of the prompts"),
    ] = 0,
    report: Annotated[Path | None, typer.Option(help="folder for the heatmap PNG and text table")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
) -> None:
    """Offline head search: the cheapest pattern per layer and head, within an error bound or a budget."""
    from sparsediff.generate import Request, check_request, given_or, shared_call_kwargs
    from sparsediff.pipelines.registry import default_model, load_model
    from sparsediff.search import CostModel, search, search_sizes

    if threads:
        torch.set_num_threads(threads)
    try:
        texts = list(prompt) + (_read_prompts(prompts) if prompts else [])
        if not texts:
            raise ValueError("give calibration prompts: --prompt TEXT (repeatable) or --prompts FILE")
        if size and (num_frames, height, width) != (None, None, None):
            raise ValueError("give sizes either as --size FxHxW (repeatable) or as --num-frames/--height/--width")
        if size and cost_model:
            raise ValueError("--cost-model holds timings at one size; a search at several sizes measures its own")
        sizes = [_parse_size(s) for s in size] or [(num_frames, height, width)]
        loaded = load_model(model or default_model())
        entry = loaded.entry
        calls = []
        for frames, h, w in sizes:  # every size is checked before any search starts
            request = Request(texts[0], entry.size(frames, h, w), given_or(steps, entry.steps),
                              given_or(guidance, entry.guidance))  # fmt: skip
            check_request(loaded, request)
            calls.append(shared_call_kwargs(loaded, request))
        costs = CostModel.model_validate(_cost_model_json(cost_model)) if cost_model else None
        loaded.pipe.set_progress_bar_config(disable=True)
        settings = dict(
            max_error=max_error, num_inference_steps=request.steps, calibration_steps=calibration_steps, rows=rows,
            block_size=block_size, kv_block_size=kv_block_size, dense_fraction=dense_fraction, dense_steps=dense_steps,
            seed=seed, max_extra_memory_mb=max_extra_memory, refine=refine,
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
    config.save(out)
    for result in results:
        grid = "x".join(map(str, result.layout.grid))
        console.print(result.table())
        console.print(
            f"latent grid {grid}: predicted {result.config.search['predicted']}, budget "
            f"{result.config.search['settings']['budget']}; search took {result.seconds:.1f} s, "
            f"peak memory {_mb(result.peak_mem_mb)} MB"
        )
        refined = result.config.search.get("refinement")
        if refined:
            console.print(
                f"refined end to end: PSNR on the calibration prompts {refined['psnr_before']} -> "
                f"{refined['psnr_after']} dB in {refined['evaluations']} generations, weights {refined['weights']}"
            )
        if report:
            for name, path in result.write_report(report / grid if size else report).items():
                console.print(f"{name}: {path}")
    console.print(f"config: {out}  (use: sparsediff generate --config {out})")


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


def _cost_model_json(path: Path) -> dict:
    """A cost model from a saved config (its search.cost_model) or a bare cost model file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read --cost-model {path}: {err}") from err
    return (data.get("search") or {}).get("cost_model", data)


def _generate_text(loaded, prompt, steps, gen_length, block_length, seed, method, config, density, compare,
                   json_out, prefix_cache) -> None:  # fmt: skip
    """`generate` for a diffusion language model: print the answer, timings and (with --compare) agreement."""
    from sparsediff.generate import TextRequest, compare_text, generate_text_one, given_or, resolve_config

    entry = loaded.entry
    gen = gen_length or entry.call_kwargs.get("gen_length", 64)
    request = TextRequest(prompt, gen, given_or(steps, entry.steps), block_length or min(gen, entry.call_kwargs.get(
        "block_length", gen)), seed, prefix_cache)  # fmt: skip
    sparse_config = resolve_config(entry, method, config, density)
    summary = compare_text(loaded, request, sparse_config) if compare else generate_text_one(
        loaded, request, sparse_config)[0]  # fmt: skip
    if json_out:
        print(json.dumps(summary), flush=True)
        return
    table = Table(show_header=False, title=f"sparsediff generate ({entry.name})")
    for key, value in summary.items():
        if key != "attention_calls":
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    if entry.random_weights:
        console.print("[yellow]random weights: the answers are noise; timings and agreement are still real[/yellow]")


def _print_summary(summary: dict) -> None:
    table = Table(show_header=False, title="sparsediff generate")
    rows = [
        ("dense", "dense_s", "{:.2f} s"),
        ("sparse", "sparse_s", "{:.2f} s"),
        ("speedup", "speedup", "{:.2f}x"),
        ("PSNR vs dense", "psnr", "{:.2f} dB"),
        ("SSIM vs dense", "ssim", "{:.4f}"),
        ("density, all attention work", "density", "{:.3f}"),
        ("density, sparse calls only", "sparse_density", "{:.3f}"),
        ("load (one-off)", "load_s", "{:.1f} s"),
        ("warm-up, dense + sparse (one-off)", "warmup_s", "{:.2f} s"),
        ("plan building (one-off, in the warm-up)", "plan_s", "{:.2f} s"),
        ("peak memory, dense run", "peak_mem_dense_mb", "{:.0f} MB"),
        ("peak memory, sparse run", "peak_mem_sparse_mb", "{:.0f} MB"),
    ]
    for label, key, fmt in rows:
        if key in summary:
            value = summary[key]
            table.add_row(
                label, "identical" if key == "psnr" and value is None else "-" if value is None else fmt.format(value)
            )
    for key in ("judge_dense", "judge_sparse"):
        if summary.get(key) is not None:
            verdict = summary[key]
            table.add_row(
                key.replace("_", " "),
                f"{verdict['seen']}, colour and direction right: {verdict['colour_and_direction']}",
            )
    for name, path in summary["outputs"].items():
        table.add_row(f"output ({name})", path)
    console.print(table)
    if summary.get("random_weights"):
        console.print("[yellow]random weights: the outputs are noise-like; timings and PSNR are still real[/yellow]")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="a diffusion LM trained on the needle task (built-in or folder)")] = (
        "tiny-dlm"
    ),
    samples: Annotated[int, typer.Option(help="held-out examples")] = 100,
    density: Annotated[
        list[float], typer.Option(help="SparseD keep ratio of KV blocks; repeat for a curve")
    ] = SPARSED_DEFAULTS["density"],
    dense_fraction: Annotated[
        list[float], typer.Option(help="share of steps decoded dense before the switch; repeat for a curve")
    ] = SPARSED_DEFAULTS["dense_fraction"],
    context: Annotated[
        list[int] | None,
        typer.Option(help="prompt tokens (default: the level the model was trained at); repeat for a curve"),
    ] = None,
    mass: Annotated[
        list[str], typer.Option(help="pattern step's block mass: exact, rows or pooled; repeat for a curve")
    ] = SPARSED_DEFAULTS["mass"],
    batch: Annotated[int, typer.Option(help="examples decoded together")] = 32,
    prefix_cache: Annotated[
        bool, typer.Option(help="also decode with Fast-dLLM's prompt KV cache: alone, and under each SparseD setting")
    ] = False,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per setting, one per line")] = False,
    plot: Annotated[Path | None, typer.Option(help="write a speedup vs context plot (.png)")] = None,
) -> None:
    """Exact accuracy of dense and SparseD decoding on held-out needle-retrieval examples, and the speedup."""
    from dataclasses import replace

    from sparsediff.pipelines.needles import evaluate_sparsed, level_of
    from sparsediff.pipelines.registry import load_model

    if threads:
        torch.set_num_threads(threads)
    try:
        loaded = load_model(model)
        if not loaded.entry.text:
            raise ValueError(f"--model {model} is not a diffusion language model; try --model tiny-dlm")
        trained = level_of(loaded.entry.folder)
        levels = [replace(trained, context=c) for c in context] if context else [trained]
        for m in mass:
            _choice(m, ("exact", "rows", "pooled"), "mass")
        if plot is not None and plot.suffix.lower() != ".png":
            raise ValueError(f"--plot {plot}: use a .png file name")
        settings = [(d, f, m, False) for m in mass for f in dense_fraction for d in density]
        if prefix_cache:
            settings += [(None, 0.0, "exact", True)] + [(d, f, m, True) for d, f, m, _ in settings]
        results = []
        for level in levels:  # shortest first: its figures arrive before the long runs
            found = evaluate_sparsed(loaded.pipe, loaded.tokenizer, level, samples, settings, batch=batch,
                                     progress=not json_out)  # fmt: skip
            results += found
            if json_out:
                for r in found:
                    print(json.dumps(asdict(r)), flush=True)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if plot is not None:
        from sparsediff.figures import context_figure

        context_figure(results, plot, title=f"{model}, {samples} examples")
    if json_out:
        return
    table = Table(title=f"{model}: needle retrieval, {trained.needles} needle(s), {samples} held-out examples")
    for col in ("tokens", "method", "mass", "dense fraction", "keep ratio", "density", "dense acc", "acc",
                "tokens as dense", "speedup", "peak MB"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in results:
        method = ("SparseD" if r.keep_ratio else "dense") + (" + prefix cache" if r.prefix_cache else "")
        keep = "-" if r.keep_ratio is None else f"{r.keep_ratio:.2f}"
        table.add_row(f"{r.context_tokens:,}", method, r.mass, f"{r.dense_fraction:.2f}", keep, f"{r.density}",
                      f"{r.accuracy_dense:.3f}", f"{r.accuracy_sparse:.3f}", f"{r.token_agreement:.3f}",
                      f"{r.speedup:.2f}x", f"{r.dense_peak_mb} / {r.sparse_peak_mb}")  # fmt: skip
    console.print(table)
    if plot is not None:
        console.print(f"speedup vs context plot: {plot}")


@app.command("ui")
def ui_cmd(
    model: Annotated[str | None, typer.Option(help="model shown first (default: the embedded model)")] = None,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 7860,
) -> None:
    """The Gradio app: compare dense and sparse, search, inspect a head, decode text with SparseD."""
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        console.print("[red]error:[/red] the app needs gradio: pip install 'sparsediff[ui]'")
        raise typer.Exit(2) from err
    from sparsediff.ui.app import launch

    console.print(f"sparsediff ui: serving on http://{host}:{port} (Ctrl-C stops it)")
    launch(model, host, port, block=True)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@app.callback()
def main() -> None:
    """sparsediff: compute only the attention that matters."""


if __name__ == "__main__":
    app()
