"""The GPU check's plumbing on the CPU (`--dry`: tiny shapes, the triton kernel under the
interpreter), so the script is known to run before a GPU is lent; and its judging of targets."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_writes_one_json_and_a_table(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["pytest-gpu", "attention-480p", "attention-720p", "transformer-480p", "generate-compare"]
    assert all(s["returncode"] == 0 and (out / s["log"]).exists() for s in steps.values())
    assert {r["backend"] for r in steps["attention-480p"]["records"]} == {"torch", "triton"}
    assert all(r["max_abs_err"] < 1e-4 for r in steps["attention-480p"]["records"])
    methods = [Path(m["method"]).stem for m in steps["transformer-480p"]["records"][0]["methods"]]
    assert methods == ["pyramid", "local-0.2", "pattern-band"]
    assert steps["generate-compare"]["records"] and (out / "compare.gif").exists()
    assert steps["pytest-gpu"]["tests"]["tests"] > 0  # collected (skipped here: no GPU)
    table = (out / "gpu-check.md").read_text()
    assert "| 480p | triton |" in table and "local-0.2" in table


def _attention(backend, density, dense_ms, sparse_ms):
    return {"backend": backend, "density": density, "dense_ms": dense_ms, "sparse_ms": sparse_ms}


def test_targets_are_judged_from_the_records():
    results = {
        "attention-720p": {"records": [_attention("triton", 0.1, 300.0, 37.0), _attention("flex", 0.1, 300.0, 36.0)]},
        "transformer-480p": {"records": [{"methods": [{"method": "x/local-0.2.json", "measured_ratio": 2.1}]}]},
        "pytest-gpu": {"tests": {"tests": 10, "failures": 1, "errors": 0, "skipped": 2}},
    }
    met = {t["target"]: t["met"] for t in gpu_check.targets(results)}
    assert list(met.values()) == [True, False, True, False]  # 37 <= 37.5; 37 > 36; 2.1 >= 2; a failure
    assert gpu_check.targets({}) == []


def test_the_gpu_machine_gets_only_gpu_test_modules_and_every_wheel_is_pinned(monkeypatch):
    monkeypatch.chdir(ROOT)
    files = gpu_check.gpu_test_files()
    assert "tests/test_triton.py" in files and "tests/test_ui.py" not in files
    makefile = (ROOT / "Makefile").read_text()
    names = re.search(r"GPU_WHEELS := (.*?)\ngpu-wheels", makefile, re.S).group(1).replace("\\\n", " ").split()
    lock = (ROOT / "requirements-lock.txt").read_text().lower()
    assert names and all(f"\n{name}==" in "\n" + lock for name in names)
