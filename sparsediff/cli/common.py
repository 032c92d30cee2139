"""What every command group shares: the Typer apps, the console, option parsing and printing."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sparsediff.config import PRESETS
from sparsediff.devices import DEVICE_HELP, DTYPE_HELP, resolve_device, resolve_dtype

app = typer.Typer(
    help="Sparse attention for diffusion transformers.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
bench_app = typer.Typer(help="Speed benchmarks: dense vs sparse, side by side in one process.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()


def shows_progress(json_out: bool) -> bool:
    """Progress bars go to stderr: shown unless `--json` output is read by a program rather than a
    person at a terminal (`bench run` reads stdout and leaves stderr on the terminal)."""
    return not json_out or sys.stderr.isatty()


DeviceOption = Annotated[str, typer.Option(help=f"device: {DEVICE_HELP}")]
DtypeOption = Annotated[str, typer.Option(help=f"dtype: {DTYPE_HELP}")]
SPARSED = PRESETS["sparsed"]  # eval's and bench dllm's defaults
SPARSED_DEFAULTS = {  # eval repeats each option for a curve
    "keep_ratio": [SPARSED["keep_ratio"]],
    "dense_fraction": [SPARSED["schedule"]["dense_fraction"]],
    "mass": [SPARSED["mass"]],
}


def load_on(model: str, device: str, dtype: str):
    """`load_model` on the device and in the dtype the options ask for (ValueError, before any
    loading, where they do not exist)."""
    from sparsediff.pipelines.registry import load_model

    where = resolve_device(device)
    return load_model(model, resolve_dtype(dtype, where), where)


def choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


@app.callback()
def main() -> None:
    """sparsediff: compute only the attention that matters."""


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_summary(summary: dict) -> None:
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
