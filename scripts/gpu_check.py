"""The GPU check: every GPU measurement the project publishes, in one run of a few minutes.

Runs, each as a `python -m sparsediff` (or pytest) subprocess with a time limit of its own:
`pytest -m gpu`; `bench attention` at Wan 2.1 480p (33,272 tokens, 12 heads of 128) and 720p
(76,112 tokens, 40 heads) for triton and flex against dense SDPA at densities 0.05 to 0.5 in bf16;
`bench transformer --shape wan2.1-480p` (Wan 2.1 1.3B, random weights) dense against `local`,
`pyramid` and a pattern config; `generate --compare` on the default model. Writes
`gpu-check.json` (environment, every step's records, log and time, the issue's targets met or
not) and `gpu-check.md` (the same as tables) into --out. A step that fails or runs out of time is
recorded as such and the next one runs.

`--dry` runs the same plumbing on the CPU with tiny shapes (the triton kernel under the Triton
interpreter), so the script is known to work before a GPU is lent (tests/test_gpu_check.py).
Run it through scripts/gpu_check.sh, which installs the wheels the GPU machine lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from sparsediff.benchmarks import environment

DENSITIES = ("0.05", "0.1", "0.2", "0.3", "0.5")
WAN_480P = {"seq": 33272, "heads": 12}
WAN_720P = {"seq": 76112, "heads": 40}


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)


def gpu_test_files() -> list[str]:
    """Only the test modules that hold `gpu` tests: the others import what the GPU machine lacks
    (gradio, playwright), and a module that fails to import fails the whole run."""
    return sorted(str(p) for p in Path("tests").glob("test_*.py") if "mark.gpu" in p.read_text())


def _attention(name: str, shape: dict, densities, backends, device: str, dtype: str, block: int, timeout_s: int):
    argv = [
        "-m",
        "sparsediff",
        "bench",
        "attention",
        "--device",
        device,
        "--dtype",
        dtype,
        "--seq",
        str(shape["seq"]),
        "--heads",
        str(shape["heads"]),
        "--head-dim",
        "128" if device == "cuda" else "64",
        "--block",
        str(block),
        "--repeat",
        "5" if device == "cuda" else "1",
        "--json",
    ]
    for d in densities:
        argv += ["--density", d]
    for b in backends:
        argv += ["--backend", b]
    return Step(name, argv, timeout_s)


def _configs(out: Path) -> list[str]:
    """The bench transformer's methods: presets and two config files (never-slower off: the bench
    measures the method, not the speed check's verdict)."""
    from sparsediff import Diagonal, SparseConfig, Stripe

    folder = out / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    local = SparseConfig(method="local", density=0.2, never_slower=False)
    pattern = SparseConfig(
        method="pattern",
        pattern=Diagonal(radius=3, temporal_radius=2) | Stripe(frames=(0,)),
        block_size=128,
        never_slower=False,
    )
    paths = []
    for name, config in (("local-0.2", local), ("pattern-band", pattern)):
        config.save(folder / f"{name}.json")
        paths.append(str(folder / f"{name}.json"))
    return ["pyramid", *paths]


def steps(out: Path, dry: bool) -> list[Step]:
    device, dtype = ("cpu", "float32") if dry else ("cuda", "bfloat16")
    backends = ("torch", "triton") if dry else ("triton", "flex")
    tiny = {"seq": 256, "heads": 2}
    methods = []
    for m in _configs(out):
        methods += ["--method", m]
    pytest_argv = ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={out / 'pytest.xml'}"]
    pytest_argv += gpu_test_files()
    generate = [
        "-m",
        "sparsediff",
        "generate",
        "--compare",
        "--json",
        "--device",
        device,
        "--dtype",
        "auto",
        "--out",
        str(out / "compare.gif"),
    ]
    if dry:
        generate += ["--model", "tiny-wan", "--num-frames", "5", "--height", "64", "--width", "64", "--steps", "2"]
    return [
        Step("pytest-gpu", pytest_argv, 150),
        _attention(
            "attention-480p",
            tiny if dry else WAN_480P,
            ("0.1", "0.5") if dry else DENSITIES,
            backends,
            device,
            dtype,
            64 if dry else 128,
            90,
        ),
        _attention(
            "attention-720p",
            tiny if dry else WAN_720P,
            ("0.1",) if dry else DENSITIES,
            backends,
            device,
            dtype,
            64 if dry else 128,
            120,
        ),
        Step(
            "transformer-480p",
            [
                "-m",
                "sparsediff",
                "bench",
                "transformer",
                "--shape",
                "wan2.1-480p",
                "--device",
                device,
                "--dtype",
                dtype,
                "--scale",
                "8" if dry else "1",
                "--repeat",
                "1" if dry else "3",
                "--json",
                *methods,
            ],
            120,
            {"SPARSEDIFF_NEVER_SLOWER": "0"},
        ),
        Step("generate-compare", generate, 90),
    ]


def _records(stdout: str) -> list[dict]:
    """The JSON objects a step printed, one per line."""
    found = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def _pytest_counts(path: Path) -> dict:
    if not path.exists():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [
        c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None
    ]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {"failed": failed}


def run_step(step: Step, out: Path) -> dict:
    start = time.perf_counter()
    env = {**os.environ, **step.env}
    log = out / f"{step.name}.log"
    try:
        done = subprocess.run(
            [sys.executable, *step.argv], capture_output=True, text=True, env=env, timeout=step.timeout_s
        )
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        stderr, code = f"timed out after {step.timeout_s} s", None
    log.write_text(f"$ python {' '.join(step.argv)}\n{stdout}\n--- stderr ---\n{stderr}")
    result = {
        "name": step.name,
        "command": ["python", *step.argv],
        "returncode": code,
        "seconds": round(time.perf_counter() - start, 1),
        "records": _records(stdout),
        "log": log.name,
    }
    if step.name == "pytest-gpu":
        result["tests"] = _pytest_counts(out / "pytest.xml")
    status = "ok" if code == 0 else ("timed out" if code is None else f"failed ({code})")
    print(f"[gpu-check] {step.name}: {status} in {result['seconds']} s", flush=True)
    return result


def targets(results: dict[str, dict]) -> list[dict]:
    """The issue's targets, judged from the records (none when a step gave no record)."""
    judged = []
    by_key = {(r["backend"], r["density"]): r for r in results.get("attention-720p", {}).get("records", [])}
    triton, flex = by_key.get(("triton", 0.1)), by_key.get(("flex", 0.1))
    if triton:
        bound = 1.25 * triton["density"] * triton["dense_ms"]
        judged.append(
            {
                "target": "720p triton at density 0.1 <= 1.25 x density x dense SDPA time",
                "value": f"{triton['sparse_ms']} ms (bound {bound:.2f} ms)",
                "met": triton["sparse_ms"] <= bound,
            }
        )
    if triton and flex:
        judged.append(
            {
                "target": "720p triton faster than flex on the same plan",
                "met": triton["sparse_ms"] < flex["sparse_ms"],
                "value": f"{triton['sparse_ms']} vs {flex['sparse_ms']} ms",
            }
        )
    for record in results.get("transformer-480p", {}).get("records", []):
        for row in record["methods"]:
            if row["method"].endswith("local-0.2.json"):
                judged.append(
                    {
                        "target": "Wan 2.1 1.3B 480p forward, density-0.2 config >= 2x over dense",
                        "value": f"{row['measured_ratio']}x",
                        "met": row["measured_ratio"] >= 2,
                    }
                )
    tests = results.get("pytest-gpu", {}).get("tests")
    if tests:
        judged.append(
            {
                "target": "pytest -m gpu passes (bf16/fp16 within 2e-2 of float64)",
                "value": f"{tests['tests'] - tests['skipped']} ran, {tests['failures'] + tests['errors']} failed",
                "met": tests["failures"] + tests["errors"] == 0,
            }
        )
    return judged


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# GPU check ({report['mode']}), {env['date']}",
        "",
        f"{env['hardware']}, {env['threads']} threads; torch {env['torch']}, triton {env['triton']}, "
        f"diffusers {env['diffusers']}, Python {env['python']}",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    for s in report["steps"]:
        status = "ok" if s["returncode"] == 0 else ("timed out" if s["returncode"] is None else "failed")
        lines.append(f"| {s['name']} | {status} | {s['seconds']} |")
    lines += [
        "",
        "| attention | backend | density | dense ms | sparse ms | speedup | of ideal | max abs err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report["steps"]:
        if s["name"].startswith("attention"):
            for r in s["records"]:
                ideal = r["speedup"] * r["density"]
                lines.append(
                    f"| {s['name'].split('-')[1]} | {r['backend']} | {r['density']} | {r['dense_ms']} | "
                    f"{r['sparse_ms']} | {r['speedup']}x | {ideal:.0%} | {r['max_abs_err']} |"
                )
    for s in report["steps"]:
        if s["name"] == "transformer-480p":
            for record in s["records"]:
                lines += [
                    "",
                    f"{record['description']}, {record['tokens']} tokens, native {record['native_ms']} ms",
                    "",
                    "| method | ms | speedup | density |",
                    "|---|---|---|---|",
                ]
                lines += [
                    f"| {Path(m['method']).stem} | {m['ms']} | {m['measured_ratio']}x | {m['density']} |"
                    for m in record["methods"]
                ]
    lines += ["", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--dry", action="store_true", help="tiny shapes on the CPU: the plumbing, no figures")
    args = parser.parse_args()
    if not args.dry:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA GPU here; run with --dry to check the plumbing on the CPU", file=sys.stderr)
            return 2
    else:
        os.environ["TRITON_INTERPRET"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"mode": "dry" if args.dry else "gpu", "environment": environment(None), "steps": []}
    for step in steps(args.out, args.dry):
        report["steps"].append(run_step(step, args.out))
    report["targets"] = targets({s["name"]: s for s in report["steps"]})
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / "gpu-check.md").write_text(table)
    print(table)
    return 0 if all(s["returncode"] == 0 for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
