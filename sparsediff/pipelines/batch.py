"""`sparsediff batch`: many generations from a prompt file, resumable, over one or many processes.

Items come from a `.txt` (one prompt a line; `#` comments and blank lines skipped), `.jsonl` or
`.csv` file whose rows may set the fields of `BatchRow`; command-line options give the defaults;
`--seeds N` makes N items per row (seeds seed, seed + 1, ...). Every item is checked before any
work starts, with the request check `generate` uses (`generate.request_problems`), and all
problems are reported at once with their line numbers.

Nothing is lost and nothing is done twice. Outputs are written under a temporary name and renamed
(`media.write_frames`). Each finished or failed item appends one whole line to its process's
manifest shard (`manifest.rank<R>.jsonl`); at the end the shards are merged into
`manifest.jsonl`. An item is done when a manifest line says so and its output's sha256 still
matches, so a rerun skips it; items are identified by a key (a hash of everything that changes
the output: model, dtype, prompt, negative prompt, seed, size, steps, guidance, config and
format), not by position or process, so a killed multi-process run rerun with another process
count still generates each item once. The key is part of each output's name, so two items never
share a file. `batch.json` records the model and settings; a rerun into the same folder with
other settings is refused unless forced, and a forced one adds new files beside the finished ones.
One batch works in a folder at a time (`batch.lock`).

Processes: accelerate's `PartialState` splits the pending items (`split_between_processes`);
`--processes N` starts N workers with torch's own launcher (`torch.distributed.run`, gloo on the
CPU), since `accelerate launch --cpu` starts one process on a machine without MPI.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from tqdm import tqdm

from sparsediff.config import SparseConfig
from sparsediff.generate import Request, compare, generate_one, given_or, request_problems, resolve_config
from sparsediff.pipelines.registry import LoadedModel
from sparsediff.records import append_line, write_atomic

FORMATS = ("mp4", "gif", "png")
MANIFEST = "manifest.jsonl"
SETTINGS = "batch.json"
LOCK = "batch.lock"


class BatchRow(BaseModel):
    """What one row of a prompt file may set; anything else is an error."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    config: str | None = None
    method: str | None = None
    density: float | None = None
    name: str | None = None


@dataclass(frozen=True)
class BatchDefaults:
    """Command-line defaults for every row."""

    config: str | None = None
    method: str | None = None
    density: float | None = None
    seeds: int = 1
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    format: str = "mp4"
    compare: bool = False


@dataclass
class BatchItem:
    index: int
    line: int  # in the prompt file
    request: Request
    config: SparseConfig
    config_hash: str
    key: str
    output: Path


@dataclass
class BatchSummary:
    items: int
    done: int
    skipped: int  # finished by an earlier run
    failed: int
    wall_s: float
    items_per_minute: float | None
    mean_speedup: float | None = None
    mean_psnr: float | None = None
    failures: list = field(default_factory=list)


class BatchError(ValueError):
    """Problems found before any work: one (line, message) per problem."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  line {line}: {message}" for line, message in problems)
        super().__init__(f"{path}: {len(problems)} problem(s), nothing was generated:\n{lines}")


def read_rows(path: Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """(line number, fields) per row of a .txt, .jsonl or .csv prompt file, and malformed lines."""
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".csv"):
        raise ValueError(f"{path}: prompt files are .txt (one prompt a line), .jsonl or .csv")
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from err
    rows, problems = [], []
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        for record in reader:
            fields = {k.strip(): v for k, v in record.items() if k is not None and v not in (None, "")}
            if None in record:
                problems.append((reader.line_num, "more cells than the header has columns"))
            elif fields:
                rows.append((reader.line_num, fields))
        return rows, problems
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or (suffix == ".txt" and stripped.startswith("#")):
            continue
        if suffix == ".txt":
            rows.append((number, {"prompt": stripped}))
            continue
        try:
            fields = json.loads(stripped)
        except json.JSONDecodeError as err:
            problems.append((number, f"not valid JSON ({err.msg})"))
            continue
        if isinstance(fields, dict):
            rows.append((number, fields))
        else:
            problems.append((number, 'a JSON object is needed, e.g. {"prompt": "a red circle"}'))
    return rows, problems


def plan_items(
    loaded: LoadedModel, path: Path, defaults: BatchDefaults, out_dir: Path
) -> tuple[list[BatchItem], list[tuple[int, str]]]:
    """Every item of the prompt file with its checked request and config, and every problem found."""
    if defaults.format not in FORMATS:
        raise ValueError(f"--format {defaults.format!r}: choose one of {', '.join(FORMATS)}")
    if defaults.format != "png" and not loaded.entry.video:
        raise ValueError(f"{loaded.entry.name} makes images: use --format png")
    if defaults.seeds < 1:
        raise ValueError(f"--seeds {defaults.seeds} must be at least 1")
    rows, problems = read_rows(path)
    if not rows and not problems:
        raise ValueError(f"{path} holds no prompts")
    items: list[BatchItem] = []
    configs: dict[tuple, SparseConfig] = {}
    model = {"model": loaded.entry.name, "dtype": str(getattr(loaded.pipe, "dtype", None))}
    for line, fields in rows:
        try:
            row = BatchRow.model_validate(fields)
        except ValidationError as err:
            problems.extend((line, _pydantic_message(e)) for e in err.errors())
            continue
        source = given_or(row.config, defaults.config), given_or(row.method, defaults.method)
        density = given_or(row.density, defaults.density)
        try:
            if (*source, density) not in configs:
                configs[(*source, density)] = resolve_config(loaded.entry, source[1], source[0], density)
            config = configs[(*source, density)]
        except (ValueError, FileNotFoundError) as err:
            problems.append((line, str(err)))
            continue
        entry = loaded.entry
        size = entry.size(given_or(row.num_frames, defaults.num_frames), given_or(row.height, defaults.height),
                          given_or(row.width, defaults.width))  # fmt: skip
        base = given_or(row.seed, defaults.seed)
        for s in range(defaults.seeds):
            request = Request(row.prompt, size, given_or(row.steps, given_or(defaults.steps, entry.steps)),
                              given_or(row.guidance, given_or(defaults.guidance, entry.guidance)), base + s,
                              row.negative_prompt)  # fmt: skip
            found = request_problems(loaded, request)
            if found:
                problems.extend((line, p) for p in found)
                break
            config_hash = _hash(config.model_dump_json())
            key = _hash(json.dumps([model, asdict(request) | {"size": str(size)}, config_hash, defaults.format,
                                    defaults.compare], sort_keys=True, default=str))  # fmt: skip
            slug = _slug(row.name or row.prompt)
            index = len(items)
            out = out_dir / f"{index:05d}-{slug}-seed{request.seed}-{key[:12]}.{defaults.format}"
            items.append(BatchItem(index, line, request, config, config_hash, key, out))
    return items, sorted(problems)


def _pydantic_message(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r}; a row may set {', '.join(BatchRow.model_fields)}"
    return f"{where}: {error['msg']}"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "item"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifests(out_dir: Path, shards_only: bool = False) -> list[dict]:
    """Every whole line of the merged manifest (unless `shards_only`) and of the process shards
    (a torn last line of a killed process is skipped)."""
    paths = sorted(out_dir.glob("manifest.rank*.jsonl"))
    records = []
    for path in paths if shards_only else [out_dir / MANIFEST, *paths]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def latest_by_key(records: list[dict]) -> dict[str, dict]:
    """The record that holds per key (records in the order they were written): the newest done
    one, else the newest failure. Resuming and merging both read the manifests through this."""
    by_key: dict[str, dict] = {}
    for record in records:
        kept = by_key.get(record["key"])
        if kept is None or record["status"] == "done" or kept["status"] != "done":
            by_key[record["key"]] = record
    return by_key


def finished_keys(out_dir: Path) -> set[str]:
    """Items whose manifest line says done and whose output is whole (its sha256 matches)."""
    return {
        key
        for key, record in latest_by_key(read_manifests(out_dir)).items()
        if record["status"] == "done"
        and Path(record["output"]).exists()
        and sha256_of(Path(record["output"])) == record["sha256"]
    }


class BatchLocked(ValueError):
    """Another batch is working in the same folder."""


@contextlib.contextmanager
def batch_lock(out_dir: Path, state):
    """One batch per folder at a time: the main process holds an exclusive lock on `batch.lock`
    for the whole run (released by the system if it dies), and every process learns whether it
    got it before any of them reads or writes the manifests."""
    from accelerate.utils import broadcast_object_list

    handle, got = None, [True]
    if state.is_main_process:
        handle = open(out_dir / LOCK, "w")  # noqa: SIM115  (held until the run ends)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            handle, got = None, [False]
    if state.num_processes > 1:
        broadcast_object_list(got)
    if not got[0]:
        raise BatchLocked(
            f"{out_dir} is in use by another sparsediff batch (it holds {out_dir / LOCK}): wait for it to "
            "finish, or give this one another --out"
        )
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def check_settings(out_dir: Path, settings: dict, force: bool) -> None:
    """Refuse to mix two batches' settings in one folder (unless forced); record them otherwise."""
    path = out_dir / SETTINGS
    if path.exists() and not force:
        before = json.loads(path.read_text())
        if before != settings:
            changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
            raise ValueError(
                f"{out_dir} holds a batch made with other settings ({', '.join(changed)}): "
                "use another --out folder, or --force to add to it"
            )
    write_atomic(path, json.dumps(settings, indent=2, sort_keys=True))


def run_item(loaded: LoadedModel, item: BatchItem, with_dense: bool, warm: bool) -> dict:
    """Generate one item; what its manifest line records beyond its identity."""
    start = time.perf_counter()
    if with_dense:
        result = compare(loaded, item.request, item.config, item.output, warm_up_runs=warm).as_json()
        metrics = {k: result[k] for k in ("dense_s", "sparse_s", "speedup", "psnr", "ssim", "density")}
        metrics |= {k: result[k] for k in ("judge_dense", "judge_sparse") if k in result}
        outputs = result["outputs"]
    else:
        result = generate_one(loaded, item.request, item.config, item.output)
        metrics = {k: result[k] for k in ("sparse_s", "density") if k in result}
        metrics |= {"judge_sparse": result["judge_sparse"]} if "judge_sparse" in result else {}
        outputs = result["outputs"]
    return {"seconds": time.perf_counter() - start, "metrics": metrics, "outputs": outputs}


def run_batch(
    loaded: LoadedModel, items: list[BatchItem], out_dir: Path, with_dense: bool = False, progress: bool = True,
    invalid: list[tuple[int, str]] = (),
) -> BatchSummary | None:  # fmt: skip
    """Generate every pending item, split over the processes of this launch; the summary of every
    process's items on the main process, None on the others. `invalid` rows (line, problem) are
    recorded as failed."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    with batch_lock(out_dir, state):
        return _run_locked(state, loaded, items, out_dir, with_dense, progress, invalid)


def _run_locked(state, loaded, items, out_dir, with_dense, progress, invalid) -> BatchSummary | None:
    start = time.perf_counter()
    if state.is_main_process:
        merge_manifests(out_dir)  # shards a killed run left behind: this run's shards hold only its own
    state.wait_for_everyone()
    done = finished_keys(out_dir)
    pending = [item for item in items if item.key not in done]
    state.wait_for_everyone()  # every process has read the manifests before any writes to them
    shard = out_dir / f"manifest.rank{state.process_index}.jsonl"
    if state.is_main_process:
        for line, problem in invalid:
            append_line(shard, {"index": -1, "key": _hash(f"{line}:{problem}"), "line": line, "seed": None,
                                 "status": "failed", "error": problem})  # fmt: skip
    with state.split_between_processes(pending) as mine:
        bar = tqdm(mine, desc=f"batch (process {state.process_index})", unit="item", disable=not progress,
                   position=state.process_index)  # fmt: skip
        warmed: set[str] = set()
        for item in bar:
            record = {"index": item.index, "key": item.key, "line": item.line, "prompt": item.request.prompt,
                      "seed": item.request.seed, "request": asdict(item.request), "config_hash": item.config_hash,
                      "output": str(item.output), "process": state.process_index}  # fmt: skip
            try:
                ran = run_item(loaded, item, with_dense, warm=item.config_hash not in warmed)
                warmed.add(item.config_hash)
                record |= ran | {"status": "done", "sha256": sha256_of(item.output)}
            except Exception as err:  # an item's failure is recorded and the batch goes on
                record |= {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            append_line(shard, record)
    state.wait_for_everyone()
    summary = None
    if state.is_main_process:
        summary = _summary(
            read_manifests(out_dir, shards_only=True),
            len(items),
            len(items) - len(pending),
            time.perf_counter() - start,
        )
        merge_manifests(out_dir)
    state.wait_for_everyone()
    return summary


def merge_manifests(out_dir: Path) -> None:
    """Fold the process shards into manifest.jsonl (one line per key: done over failed, newest
    first), written atomically, then drop the shards."""
    by_key = latest_by_key(read_manifests(out_dir))
    lines = [json.dumps(r, default=str) for r in sorted(by_key.values(), key=lambda r: r["index"])]
    write_atomic(out_dir / MANIFEST, "".join(line + "\n" for line in lines))
    for shard in out_dir.glob("manifest.rank*.jsonl"):
        shard.unlink()


def _summary(records: list[dict], items: int, skipped: int, wall_s: float) -> BatchSummary:
    done = [r for r in records if r["status"] == "done"]
    failed = [r for r in records if r["status"] == "failed"]
    speedups = [r["metrics"]["speedup"] for r in done if "speedup" in r.get("metrics", {})]
    psnrs = [r["metrics"]["psnr"] for r in done if r.get("metrics", {}).get("psnr") is not None]
    return BatchSummary(
        items=items,
        done=len(done),
        skipped=skipped,
        failed=len(failed),
        wall_s=round(wall_s, 2),
        items_per_minute=round(60 * len(done) / wall_s, 3) if done and wall_s > 0 else None,
        mean_speedup=round(sum(speedups) / len(speedups), 3) if speedups else None,
        mean_psnr=round(sum(psnrs) / len(psnrs), 2) if psnrs and all(math.isfinite(p) for p in psnrs) else None,
        failures=[f"line {r['line']} (seed {r['seed']}): {r['error']}" for r in failed],
    )
