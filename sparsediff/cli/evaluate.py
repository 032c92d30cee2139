"""`sparsediff eval`: dense against SparseD on the diffusion LM's task."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from sparsediff.cli.common import (
    SPARSED_DEFAULTS,
    DeviceOption,
    DtypeOption,
    app,
    choice,
    console,
    load_on,
    shows_progress,
)


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="a diffusion LM trained on the needle task (built-in or folder)")] = (
        "tiny-dlm"
    ),
    samples: Annotated[int, typer.Option(help="held-out examples")] = 100,
    keep_ratio: Annotated[
        list[float], typer.Option(help="SparseD's share of KV blocks kept; repeat for a curve")
    ] = SPARSED_DEFAULTS["keep_ratio"],
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
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Exact accuracy of dense and SparseD decoding on held-out needle-retrieval examples, and the speedup."""
    from dataclasses import replace

    from sparsediff.pipelines.needles import evaluate_sparsed, level_of

    if threads:
        torch.set_num_threads(threads)
    try:
        for keep in keep_ratio:  # 0 would keep no block: refused before the model loads
            if not 0 < keep <= 1:
                raise ValueError(f"--keep-ratio {keep} must be in (0, 1]: the share of KV blocks SparseD keeps")
        loaded = load_on(model, device, dtype)
        if not loaded.entry.text:
            raise ValueError(f"--model {model} is not a diffusion language model; try --model tiny-dlm")
        trained = level_of(loaded.entry.folder)
        levels = [replace(trained, context=c) for c in context] if context else [trained]
        for m in mass:
            choice(m, ("exact", "rows", "pooled"), "mass")
        if plot is not None and plot.suffix.lower() != ".png":
            raise ValueError(f"--plot {plot}: use a .png file name")
        settings = [(d, f, m, False) for m in mass for f in dense_fraction for d in keep_ratio]
        if prefix_cache:
            settings += [(None, 0.0, "exact", True)] + [(d, f, m, True) for d, f, m, _ in settings]
        results = []
        for level in levels:  # shortest first: its figures arrive before the long runs
            found = evaluate_sparsed(loaded.pipe, loaded.tokenizer, level, samples, settings, batch=batch,
                                     progress=shows_progress(json_out))  # fmt: skip
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
