"""`sparsediff batch`: prompt files, checks before any work, resume after a kill, failures, processes."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sparsediff.cli import app
from sparsediff.pipelines.batch import (
    BatchDefaults,
    finished_keys,
    latest_by_key,
    plan_items,
    read_manifests,
    run_batch,
    sha256_of,
)
from sparsediff.pipelines.registry import load_model

runner = CliRunner()
SMALL = ["--model", "tiny-wan", "--num-frames", "5", "--height", "32", "--width", "32", "--steps", "2"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSEDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _batch(prompts: Path, out: Path, *args: str):
    result = runner.invoke(app, ["batch", str(prompts), "--out", str(out), *SMALL, "--json", *args])
    return result, (json.loads(result.stdout.strip().splitlines()[-1]) if result.exit_code in (0, 1) else None)


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_three_formats_give_the_same_items(tmp_path):
    (tmp_path / "p.txt").write_text("# colours\na red circle\n\na blue square\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle"}\n\n{"prompt": "a blue square", "seed": 0}\n')
    (tmp_path / "p.csv").write_text("prompt,seed,steps\na red circle,,\na blue square,0,\n")
    loaded = load_model("tiny-wan")
    found = {}
    for suffix in ("txt", "jsonl", "csv"):
        items, problems = plan_items(loaded, tmp_path / f"p.{suffix}", BatchDefaults(seeds=2, steps=3), tmp_path)
        assert problems == []
        found[suffix] = [(i.request.prompt, i.request.seed, i.request.steps, i.key) for i in items]
    assert found["txt"] == found["jsonl"] == found["csv"]
    assert [(p, s) for p, s, _, _ in found["txt"]] == [("a red circle", 0), ("a red circle", 1),
                                                       ("a blue square", 0), ("a blue square", 1)]  # fmt: skip
    assert len({key for *_, key in found["txt"]}) == 4 and all(steps == 3 for _, _, steps, _ in found["txt"])


def test_every_problem_is_reported_with_its_line_and_nothing_runs(tmp_path):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text(
        "\n".join([
            '{"prompt": "fine"}',
            '{"prompt": "x", "colour": "red"}',
            '{"prompt": "x", "height": 50}',
            '{"prompt": "x", "steps": 0}',
            '{"prompt": "x", "config": "no/such/file.json"}',
            "{not json",
            '{"prompt": "x", "guidance": -2}',
        ])
    )  # fmt: skip
    out = tmp_path / "out"
    result, _ = _batch(prompts, out)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    expected = [
        (2, "unknown field 'colour'"),
        (3, "tiny-wan cannot make 5x50x32: --height 50 is not a multiple of 8"),
        (4, "--steps 0 must be in 1..1000"),
        (5, "config 'no/such/file.json' is neither a preset"),
        (6, "not valid JSON"),
        (7, "--guidance -2.0 must be a number >= 0"),
    ]
    for line, message in expected:
        assert f"line {line}: {message}" in text, (line, text)
    assert "line 1" not in text and not out.exists()  # nothing generated, not even the folder
    result, summary = _batch(prompts, out, "--skip-invalid")
    assert result.exit_code == 1 and summary["done"] == 1 and summary["failed"] == 6
    assert len(list(out.glob("*.mp4"))) == 1


def test_a_rerun_skips_finished_items_and_refuses_other_settings(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    result, summary = _batch(prompts, out, "--seeds", "2")
    assert result.exit_code == 0 and (summary["done"], summary["skipped"]) == (4, 0)
    records = _manifest(out)
    assert len(records) == 4 and all(sha256_of(Path(r["output"])) == r["sha256"] for r in records)
    assert {"index", "prompt", "seed", "request", "config_hash", "seconds", "output", "sha256", "metrics"} <= set(
        records[0]
    )
    Path(records[1]["output"]).write_bytes(b"torn")  # a damaged output is redone
    result, summary = _batch(prompts, out, "--seeds", "2")
    assert (summary["done"], summary["skipped"]) == (1, 3) and len(_manifest(out)) == 4
    result, _ = _batch(prompts, out, "--method", "dense")
    assert result.exit_code == 2 and "holds a batch made with other settings (method, seeds)" in " ".join(
        result.output.split()
    )
    result, summary = _batch(prompts, out, "--method", "dense", "--force")
    assert result.exit_code == 0 and summary["done"] == 2  # the dense items are new items


def test_a_forced_rerun_with_other_settings_keeps_every_finished_file(tmp_path):
    """Names used to be index + slug + seed while the key also held steps, size and dtype: a rerun
    with --steps wrote over finished files whose manifest lines still said done."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    result, summary = _batch(prompts, out)
    assert result.exit_code == 0 and summary["done"] == 2
    before = {p.name: p.read_bytes() for p in out.glob("*.mp4")}
    result, _ = _batch(prompts, out, "--steps", "3")
    assert result.exit_code == 2 and "other settings (steps)" in " ".join(result.output.split())
    for changed in (["--steps", "3"], ["--dtype", "bfloat16"]):  # the key holds both: new items each time
        result, summary = _batch(prompts, out, *changed, "--force")
        assert result.exit_code == 0 and (summary["done"], summary["skipped"]) == (2, 0), result.output
    assert len(list(out.glob("*.mp4"))) == 6
    assert {name: (out / name).read_bytes() for name in before} == before  # every earlier output, byte for byte
    records = _manifest(out)
    assert len(records) == 6 and len({r["output"] for r in records}) == 6
    assert all(sha256_of(Path(r["output"])) == r["sha256"] for r in records)


def test_one_batch_works_in_a_folder_at_a_time(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / "batch.lock", "w") as held:  # another batch is running here
        fcntl.flock(held, fcntl.LOCK_EX)
        result, _ = _batch(prompts, out)
    assert result.exit_code == 2 and "in use by another sparsediff batch" in " ".join(result.output.split())
    assert not list(out.glob("*.mp4")) and not (out / "manifest.jsonl").exists()
    result, summary = _batch(prompts, out)  # the lock is free again
    assert result.exit_code == 0 and summary["done"] == 1


def test_resuming_and_merging_agree_on_which_record_holds():
    records = [
        {"key": "a", "status": "done", "index": 0, "output": "old"},
        {"key": "a", "status": "failed", "index": 0},
        {"key": "a", "status": "done", "index": 0, "output": "new"},
        {"key": "b", "status": "failed", "index": 1, "error": "first"},
        {"key": "b", "status": "failed", "index": 1, "error": "second"},
    ]
    held = latest_by_key(records)
    assert held["a"]["output"] == "new" and held["b"]["error"] == "second"


def test_a_failing_item_is_recorded_and_the_batch_goes_on(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first\nsecond\nthird\n")
    loaded = load_model("tiny-wan")
    items, _ = plan_items(loaded, prompts, BatchDefaults(steps=2, num_frames=5, height=32, width=32), tmp_path)
    calls = []

    def fail_second_item(module, args, out):  # 2 steps x CFG as 2 calls: calls 5-8 are the second item's
        calls.append(1)
        if 5 <= len(calls) <= 8:
            return (out[0] * float("nan"),)

    handle = loaded.pipe.transformer.register_forward_hook(fail_second_item)
    summary = run_batch(loaded, items, tmp_path, progress=False)
    handle.remove()
    assert (summary.done, summary.failed) == (2, 1) and "FloatingPointError" in summary.failures[0]
    assert len(finished_keys(tmp_path)) == 2
    summary = run_batch(loaded, items, tmp_path, progress=False)  # the rerun redoes only the failed one
    assert (summary.done, summary.skipped, summary.failed) == (1, 2, 0)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sparsediff.cli", "batch", *args]


def test_killed_mid_batch_then_resumed_loses_nothing_and_repeats_nothing(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(6)))
    out = tmp_path / "out"
    command = _cli(str(prompts), "--out", str(out), *SMALL, "--threads", "1")
    env = os.environ | {"SPARSEDIFF_CACHE": os.environ["SPARSEDIFF_CACHE"]}
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "manifest.rank0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (shard.exists() and shard.read_text().count("\n") >= 1):
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = {r["key"] for r in read_manifests(out) if r["status"] == "done"}
    assert 1 <= len(before) < 6  # killed mid-batch
    done = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(before) and summary["done"] == 6 - len(before)
    records = _manifest(out)
    assert sorted(r["index"] for r in records) == list(range(6))  # each once
    assert all(sha256_of(Path(r["output"])) == r["sha256"] for r in records)
    assert not list(out.glob(".*tmp*"))  # no torn temporary files left as outputs


def test_two_processes_split_the_items_and_a_rerun_with_one_repeats_nothing(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"shape {i}", "name": f"n{i}"}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    env = os.environ | {"SPARSEDIFF_CACHE": os.environ["SPARSEDIFF_CACHE"]}
    done = subprocess.run(_cli(str(prompts), "--out", str(out), *SMALL, "--seeds", "2", "--processes", "2", "--json"),
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["items"], summary["done"]) == (6, 6)
    records = _manifest(out)
    assert sorted(r["index"] for r in records) == list(range(6)) and {r["process"] for r in records} == {0, 1}
    assert not list(out.glob("manifest.rank*.jsonl"))  # shards merged
    again = subprocess.run(_cli(str(prompts), "--out", str(out), *SMALL, "--seeds", "2", "--json"), env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] == 6


def test_two_nodes_of_one_process_each_split_the_items_like_two_machines(tmp_path):
    """`torchrun --nnodes 2` started once per node (here both on 127.0.0.1) into one shared folder:
    every item made once, by both nodes, and the shards merged by the main node."""
    import socket

    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"shape {i}\n" for i in range(4)))
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "sparsediff.cli",
                "batch",
                str(prompts),
                "--out",
                str(out),
                *SMALL,
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    summary = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert (summary["items"], summary["done"]) == (4, 4)
    records = _manifest(out)
    assert sorted(r["index"] for r in records) == list(range(4)) and {r["process"] for r in records} == {0, 1}
    assert not list(out.glob("manifest.rank*.jsonl"))
