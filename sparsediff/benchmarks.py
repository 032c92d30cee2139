"""Benchmarks as data: every published measurement is a named spec, run by one command, kept as a
record with its environment, and rendered into the docs' tables.

A spec (`assets/benchmarks/NAME.json`) names a `sparsediff bench` command and its options: model,
size, prompts or held-out count, methods, repeats, threads. `run_spec` runs it (resumable where
the bench is: `bench methods` keeps each finished prompt) and returns a record: the spec, every
figure the bench printed, the environment (CPU or GPU, threads, library versions, commit, date)
and how long it took. The records of the published runs sit in `assets/benchmarks/records/`;
`render` turns a record into the markdown table the README and docs/results.md hold between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, and `update_docs` rewrites (or, checking,
compares) those blocks, so a published table is always what its record says.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from sparsediff.methods.speed import device_name
from sparsediff.pipelines.registry import ASSETS
from sparsediff.records import write_atomic

SPECS = ASSETS / "benchmarks"
PUBLISHED = SPECS / "records"
ROOT = ASSETS.parent
DOCS = tuple(ROOT / p for p in ("README.md", "docs/results.md", "docs/diffusion-lms.md", "docs/embedded-models.md"))
# Records whose plot the docs show (methods: speedup against PSNR; eval: speedup against context).
PLOTS = {
    "peers": ROOT / "docs" / "figures" / "pareto-peers.png",
    "default": ROOT / "docs" / "figures" / "pareto-default.png",
    "dlm-context": ROOT / "docs" / "figures" / "dllm-context.png",
}
# A block names one record, or several of the same bench joined by commas (one table, a row group each).
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w,-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


class BenchSpec(BaseModel):
    """One published measurement: `sparsediff bench BENCH --OPTION VALUE ...` (`sparsediff eval`
    for the diffusion LM's accuracy; a list repeats its option), what it answers, and the readable
    name of each method in its table."""

    name: str
    title: str
    bench: Literal["methods", "attention", "dllm", "transformer", "eval"]
    options: dict[str, Any]
    labels: dict[str, str] = Field(default_factory=dict)

    def argv(self) -> list[str]:
        argv = [self.bench] if self.bench == "eval" else ["bench", self.bench]
        for option, value in self.options.items():
            for item in value if isinstance(value, list) else [value]:
                argv += [f"--{option}"] if item is True else [f"--{option}", str(item)]
        return [*argv, "--json"]

    def command(self) -> str:
        """The spec as a user would type it."""
        return "sparsediff " + " ".join(a if re.fullmatch(r"[\w./:=+-]+", a) else json.dumps(a) for a in self.argv())


def load_specs(folder: Path | None = None) -> dict[str, BenchSpec]:
    specs = {}
    for path in sorted((folder or SPECS).glob("*.json")):
        specs[path.stem] = BenchSpec.model_validate({**json.loads(path.read_text()), "name": path.stem})
    return specs


def spec_named(name: str, folder: Path | None = None) -> BenchSpec:
    specs = load_specs(folder)
    if name not in specs:
        raise ValueError(f"no benchmark spec {name!r}; the specs are: {', '.join(specs)}")
    return specs[name]


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True)  # fmt: skip
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def environment(threads: int | None) -> dict:
    """What a figure depends on besides the code: hardware, threads, versions, commit, date."""
    import diffusers
    import transformers

    from sparsediff import __version__

    cuda = torch.cuda.is_available()
    env = {
        "hardware": device_name(torch.device("cuda" if cuda else "cpu")),
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "sparsediff": __version__,
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if cuda:
        env["cuda"] = torch.version.cuda
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def run_spec(spec: BenchSpec, work: Path) -> dict:
    """Run one spec (progress on the terminal) and return its record; `work` keeps what a rerun
    resumes from (`bench methods`' finished prompts) until the spec completes."""
    work.mkdir(parents=True, exist_ok=True)
    progress = work / f"{spec.name}.progress.jsonl"
    elapsed = work / f"{spec.name}.seconds"  # of the segments before this one, when a rerun resumes
    argv = spec.argv() + (["--record", str(progress)] if spec.bench == "methods" else [])
    before = float(elapsed.read_text()) if elapsed.exists() else 0.0
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "sparsediff", *argv], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    finally:
        write_atomic(elapsed, f"{before + time.perf_counter() - start:.1f}")
    if done.returncode:
        raise RuntimeError(f"{spec.name}: `{spec.command()}` exited {done.returncode}; a rerun resumes")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    seconds = float(elapsed.read_text())
    progress.unlink(missing_ok=True)
    elapsed.unlink()
    return {
        "spec": spec.model_dump(),
        "command": spec.command(),
        "environment": environment(spec.options.get("threads")),
        "seconds": round(seconds, 1),  # all segments of a resumed run
        "results": results,
    }


def save_record(record: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['spec']['name']}.json"
    write_atomic(path, json.dumps(record, indent=1) + "\n")
    return path


def load_record(name: str, folder: Path | None = None) -> dict | None:
    path = (folder or PUBLISHED) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def provenance(record: dict) -> str:
    """Where a table's figures come from, in one line."""
    env = record["environment"]
    return (
        f"{env['hardware']}, {env['threads']} threads, torch {env['torch']}, diffusers {env['diffusers']}, "
        f"sparsediff {env['sparsediff']} ({env['commit']}), {env['date']}; took {_minutes(record['seconds'])}; "
        f"`sparsediff bench run {record['spec']['name']}`"
    )


def _fmt(value, pattern: str = "{:.2f}", missing: str = "-") -> str:
    return missing if value is None else pattern.format(value)


def _summary(record: dict) -> dict:
    return next(r for r in reversed(record["results"]) if "methods" in r)


def _methods_table(records: list[dict]) -> list[str]:
    """One row per method; several records (sizes, say) stack their rows, each group headed by its
    size and dense time."""
    lines = [
        "| size | prompts | method | speedup | PSNR dB | SSIM | judge | density | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        summary, labels = _summary(record), record["spec"]["labels"]
        n = len(summary["prompts"])
        for row in summary["methods"]:
            name = labels.get(row["method"], "dense" if row["method"] == "dense" else f"`{row['method']}`")
            if row["method"] == "dense":
                name += f" ({summary['dense_s']:.1f} s)"
            head = f"| {summary['size']} | {n} | {name} |"
            if row.get("error"):
                lines.append(f"{head} fails: {textwrap.shorten(row['error'], 160, placeholder=' ...')} | | | | | |")
                continue
            share = (row.get("judge") or {}).get("colour_and_direction")  # mean of the prompts' verdicts
            judge = "-" if share is None else f"{round(share * n)}/{n}"
            psnr = "-" if row["method"] == "dense" else _fmt(row["psnr"], missing="identical")
            ssim = "-" if row["method"] == "dense" else _fmt(row["ssim"], "{:.3f}")
            lines.append(
                f"{head} {row['speedup']:.2f}x | {psnr} | {ssim} | {judge} | {_fmt(row['density'], '{:.3f}')} | "
                f"{_fmt(row['peak_mem_mb'], '{:.0f}')} |"
            )
    return lines


def _attention_table(records: list[dict]) -> list[str]:
    lines = [
        "| tokens | heads x dim | backend | density | dense ms | sparse ms | speedup | max abs err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for record in records for r in record["results"]):
        lines.append(
            f"| {r['seq']} | {r['heads']} x {r['head_dim']} | `{r['backend']}` | {r['density']:.3f} | "
            f"{r['dense_ms']:.1f} | {r['sparse_ms']:.1f} | {r['speedup']:.2f}x | {_fmt(r['max_abs_err'], '{:.0e}')} |"
        )
    return lines


def _dllm_table(records: list[dict]) -> list[str]:
    lines = [
        "| context | steps | dense s | SparseD s | speedup | density | answer tokens as dense "
        "| peak MB dense / SparseD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for record in records for r in record["results"]):
        lines.append(
            f"| {r['context_tokens']} | {r['steps']} | {r['dense_s']:.2f} | {r['sparse_s']:.2f} | "
            f"{r['speedup']:.2f}x | {r['density']:.3f} | {r['token_agreement']:.1%} | "
            f"{_fmt(r['dense_peak_mb'], '{:.0f}')} / {_fmt(r['sparse_peak_mb'], '{:.0f}')} |"
        )
    return lines


def _eval_table(records: list[dict]) -> list[str]:
    lines = [
        "| prompt + answer tokens | dense accuracy | method | dense steps | accuracy | tokens as dense | density "
        "| speedup | peak MB (dense / method) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for record in records for r in record["results"]):
        dense_steps = "-" if r["keep_ratio"] is None else f"{r['dense_fraction']:.0%}"  # SparseD's switch point
        lines.append(
            f"| {r['context_tokens']:,} | {r['accuracy_dense']:.1%} | {_dlm_method(r)} | {dense_steps} | "
            f"{r['accuracy_sparse']:.1%} | {r['token_agreement']:.3f} | {_fmt(r['density'])} | {r['speedup']:.2f}x | "
            f"{_fmt(r['dense_peak_mb'], '{:.0f}')} / {_fmt(r['sparse_peak_mb'], '{:.0f}')} |"
        )
    return lines


def _dlm_method(row: dict) -> str:
    """A setting of `sparsediff eval` by what it is: SparseD's mass and keep ratio, the prefix cache."""
    sparsed = None if row["keep_ratio"] is None else f"SparseD {row['mass']} mass, keep {row['keep_ratio']:g}"
    if not row["prefix_cache"]:
        return sparsed or "dense"
    return f"{sparsed} + prefix cache" if sparsed else "prefix cache alone"


RENDERERS = {"methods": _methods_table, "attention": _attention_table, "dllm": _dllm_table, "eval": _eval_table}


def render(records: dict | list[dict]) -> str:
    """The markdown records publish: one table, then where each record's figures come from."""
    records = [records] if isinstance(records, dict) else records
    benches = {r["spec"]["bench"] for r in records}
    if len(benches) != 1:
        raise ValueError(f"one table renders records of one bench, got {sorted(benches)}")
    table = RENDERERS[benches.pop()](records)
    return "\n".join([*table, "", *(f"<sub>{provenance(r)}</sub><br>" for r in records), ""])


def update_docs(paths=DOCS, records: Path | None = None, check: bool = False) -> list[str]:
    """Rewrite every `<!-- bench:NAME -->` block from its record (or, with `check`, only compare);
    the blocks that were (or would be) changed, as "file: NAME"."""
    changed = []
    for path in paths:
        text = Path(path).read_text()

        def fill(match: re.Match, path=path) -> str:
            found = []
            for name in match["name"].split(","):
                record = load_record(name, records)
                if record is None:
                    raise ValueError(f"{path}: block {match['name']!r} needs the record {name!r} (`bench run {name}`)")
                found.append(record)
            body = render(found)
            if body != match["body"]:
                changed.append(f"{Path(path).name}: {match['name']}")
            return match.group(1) + body + match.group(4)

        new = BLOCK.sub(fill, text)
        if new != text and not check:
            write_atomic(Path(path), new)
    return changed


def published_for(model: str, prompt: str, config: Path) -> str | None:
    """The published figure of `generate --compare` with these settings (a `methods` spec of one
    prompt at the model's default size and steps that ran `config`), with its hardware."""
    for name, spec in load_specs().items():
        options = spec.options
        if spec.bench != "methods" or options.get("model") != model or options.get("prompt") != prompt:
            continue
        if any(k in options for k in ("num-frames", "height", "width", "steps", "dense-steps")):
            continue
        record = load_record(name)
        if record is None:
            continue
        for row in _summary(record)["methods"]:
            if row["method"].endswith(".json") and (ROOT / row["method"]).resolve() == Path(config).resolve():
                env = record["environment"]
                return (
                    f"{row['speedup']:.2f}x at {row['psnr']:.2f} dB on {env['hardware']}, {env['threads']} threads, "
                    f"{env['date']} (`sparsediff bench run {name}`)"
                )
    return None


def render_plots(records: Path | None = None) -> list[Path]:
    """The plots of PLOTS' records: a methods record's Pareto plot (speedup against PSNR, methods by
    their readable names), an eval record's speedup against context."""
    from types import SimpleNamespace

    from sparsediff.figures import context_figure, pareto_figure

    written = []
    for name, path in PLOTS.items():
        record = load_record(name, records)
        if record is None:
            continue
        if record["spec"]["bench"] == "eval":
            rows = [SimpleNamespace(**row) for row in record["results"]]
            model, samples = record["spec"]["options"]["model"], record["results"][0]["samples"]
            written.append(context_figure(rows, path, title=f"{model}, {samples} examples"))
            continue
        summary, labels = _summary(record), record["spec"]["labels"]
        rows = [SimpleNamespace(**{**row, "method": labels.get(row["method"], row["method"])})
                for row in summary["methods"]]  # fmt: skip
        title = f"{summary['model']} {summary['size']}, {len(summary['prompts'])} prompts"
        written.append(pareto_figure(rows, path, title=title))
    return written
