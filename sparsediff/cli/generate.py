"""`sparsediff generate`, `batch` and `ui`: making images, videos and text."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from sparsediff.cli.common import DeviceOption, DtypeOption, app, console, load_on, print_summary


@app.command("generate")
def generate_cmd(
    prompt: Annotated[str, typer.Option(help="what to generate")] = "a red circle moving right",
    negative_prompt: Annotated[str | None, typer.Option(help="what to steer away from")] = None,
    model: Annotated[
        str | None, typer.Option(help="built-in name, local pipeline folder or diffusers model id")
    ] = None,
    method: Annotated[str | None, typer.Option(help="sparse method or preset: dense, local, sparsed (text)")] = None,
    config: Annotated[str | None, typer.Option(help="sparse config: preset name or JSON file")] = None,
    density: Annotated[
        float | None, typer.Option(help="fraction of attention kept (methods that take one; not searched configs)")
    ] = None,
    keep_ratio: Annotated[
        float | None, typer.Option(help="SparseD's share of KV blocks kept (text models, method sparsed)")
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
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object on the last line of stdout")] = False,
) -> None:
    """Generate an image or video with sparse attention; --compare puts it beside dense."""
    from sparsediff.generate import Request, generate_one, given_or, resolve_method
    from sparsediff.generate import compare as run_compare
    from sparsediff.pipelines.registry import default_model

    if threads:
        torch.set_num_threads(threads)
    model = model or default_model()
    try:
        loaded = load_on(model, device, dtype)
        entry = loaded.entry
        if entry.text:
            _generate_text(loaded, prompt, steps, gen_length, block_length, seed, method, config, density, compare,
                           json_out, prefix_cache, keep_ratio)  # fmt: skip
            return
        if keep_ratio is not None:
            raise ValueError(
                f"--keep-ratio is SparseD's, for diffusion language models; {entry.name} makes images or video"
            )
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
    print_summary(summary)
    if compare and method is None and config is None and density is None and entry.config is not None:
        from sparsediff.benchmarks import published_for
        from sparsediff.devices import resolve_device
        from sparsediff.methods.speed import device_name

        published = published_for(entry.name, prompt, entry.config) if request == Request(
            prompt, entry.size(None, None, None), entry.steps, entry.guidance, 0) else None  # fmt: skip
        if published:
            console.print(
                f"published for this run: {published}; this machine: {summary['speedup']:.2f}x at "
                f"{summary['psnr']:.2f} dB on {device_name(resolve_device(device))}, {torch.get_num_threads()} threads"
            )


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
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    threads: Annotated[int | None, typer.Option(help="torch threads per process (default: 1 with --processes)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="the summary as one JSON object")] = False,
) -> None:
    """Generate every row of a prompt file: checked first, resumable, over one or many processes."""
    import os

    from sparsediff.pipelines.batch import (
        BatchDefaults,
        BatchError,
        BatchLocked,
        check_settings,
        plan_items,
        run_batch,
    )
    from sparsediff.pipelines.registry import default_model

    worker = "RANK" in os.environ  # started by torch.distributed.run (or accelerate launch)
    if threads or (processes > 1 or worker):
        torch.set_num_threads(threads or 1)
    defaults = BatchDefaults(config, method, density, seeds, seed, steps, guidance, num_frames, height, width,
                             output_format, compare)  # fmt: skip
    try:
        if processes < 1:
            raise ValueError(f"--processes {processes} must be at least 1")
        loaded = load_on(model or default_model(), device, dtype)
        items, problems = plan_items(loaded, prompts, defaults, out)
        if problems and not skip_invalid:
            raise BatchError(prompts, problems)
        settings = {"model": loaded.entry.name, "config": config, "method": method, "density": density,
                    "format": output_format, "compare": compare, "dtype": dtype, "seeds": seeds, "seed": seed,
                    "steps": steps, "guidance": guidance, "num_frames": num_frames, "height": height,
                    "width": width}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        check_settings(out, settings, force)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if processes > 1 and not worker:
        raise typer.Exit(_launch_workers(processes, _batch_argv(ctx.params)))
    loaded.pipe.set_progress_bar_config(disable=json_out)
    try:
        summary = run_batch(loaded, items, out, with_dense=compare, progress=not json_out, invalid=problems)
    except BatchLocked as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
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


def _generate_text(loaded, prompt, steps, gen_length, block_length, seed, method, config, density, compare,
                   json_out, prefix_cache, keep_ratio) -> None:  # fmt: skip
    """`generate` for a diffusion language model: print the answer, timings and (with --compare) agreement."""
    from sparsediff.config import SparseConfig
    from sparsediff.generate import TextRequest, compare_text, generate_text_one, given_or, resolve_config

    entry = loaded.entry
    gen = gen_length or entry.call_kwargs.get("gen_length", 64)
    request = TextRequest(prompt, gen, given_or(steps, entry.steps), block_length or min(gen, entry.call_kwargs.get(
        "block_length", gen)), seed, prefix_cache)  # fmt: skip
    sparse_config = resolve_config(entry, method, config, density)
    if keep_ratio is not None:
        if sparse_config.method != "sparsed":
            raise ValueError(f"--keep-ratio is SparseD's; the config's method is {sparse_config.method!r}")
        sparse_config = SparseConfig.load(sparse_config, keep_ratio=keep_ratio)
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


@app.command("profile")
def profile_cmd(
    model: Annotated[
        str | None, typer.Option(help="built-in name, local pipeline folder or diffusers model id")
    ] = None,
    method: Annotated[str | None, typer.Option(help="sparse method or preset")] = None,
    config: Annotated[str | None, typer.Option(help="sparse config: preset name or JSON file")] = None,
    prompt: Annotated[str, typer.Option(help="prompt of the measuring generation")] = "a red circle moving right",
    steps: Annotated[int | None, typer.Option(help="denoising steps (default: the model's)")] = None,
    num_frames: Annotated[int | None, typer.Option(help="frames (video models)")] = None,
    height: Annotated[int | None, typer.Option(help="height in pixels")] = None,
    width: Annotated[int | None, typer.Option(help="width in pixels")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    threads: Annotated[int | None, typer.Option(help="torch threads (the profile is per thread count)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="profile file to write (default: this machine's cache; ship it beside a config)")
    ] = None,
    show: Annotated[bool, typer.Option("--show", help="only show the profile, measure nothing")] = False,
) -> None:
    """Measure which kinds of call run sparse on this machine (the never-slower check) and show them."""
    from sparsediff.generate import Request, given_or, measure_speed, resolve_config
    from sparsediff.methods import speed
    from sparsediff.pipelines.registry import default_model

    if threads:
        torch.set_num_threads(threads)
    path = out or speed.default_profile_path()
    speed.SPEED.check = speed.SpeedCheck(speed.SpeedProfile(path))
    try:
        if not show:
            loaded = load_on(model or default_model(), device, dtype)
            entry = loaded.entry
            if entry.text:
                raise ValueError(f"{entry.name} is a language model; profile an image or video model")
            size = entry.size(num_frames, height, width)
            request = Request(prompt, size, given_or(steps, entry.steps), entry.guidance, 0)
            new = measure_speed(loaded, request, resolve_config(entry, method, config, None))
            console.print(f"{new} kind(s) of call measured on {entry.name} at {size}, {request.steps} steps")
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    kinds = speed.SpeedProfile(path)
    kinds.load()
    table = Table(title=f"speed profile {path}: {len(kinds.entries)} kind(s) of call")
    for col in ("call", "sparse ms", "dense ms", "runs"):
        table.add_column(col, justify="left" if col == "call" else "right")
    for entry in sorted(kinds.entries.values(), key=lambda e: e.get("call", "")):
        table.add_row(entry.get("call", "?"), f"{entry['sparse_ms']:.2f}", f"{entry['dense_ms']:.2f}",
                      "sparse" if entry["sparse"] else "dense")  # fmt: skip
    console.print(table)


@app.command("ui")
def ui_cmd(
    model: Annotated[str | None, typer.Option(help="model shown first (default: the embedded model)")] = None,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 7860,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    allow_local_folders: Annotated[
        bool | None,
        typer.Option(
            "--allow-local-folders/--no-local-folders",
            help="let the page load local pipeline folders and hub ids (default: only on a loopback --host)",
        ),
    ] = None,
) -> None:
    """The Gradio app: compare dense and sparse, search, inspect a head, decode text with SparseD."""
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        console.print("[red]error:[/red] the app needs gradio: pip install 'sparsediff[ui]'")
        raise typer.Exit(2) from err
    from sparsediff.devices import resolve_device, resolve_dtype
    from sparsediff.ui.app import launch

    try:
        where = resolve_device(device)
        precision = resolve_dtype(dtype, where)
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    console.print(f"sparsediff ui: serving on http://{host}:{port}, models on {where} in {precision} (Ctrl-C stops it)")
    launch(model, host, port, block=True, allow_local_folders=allow_local_folders, device=where, dtype=precision)
