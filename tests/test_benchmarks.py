"""Benchmarks as data: the specs name real options, a spec runs into a record with its
environment, records render the published tables, and the docs hold exactly what they render."""

import json
import shutil

import pytest
import typer.main

from sparsediff import benchmarks
from sparsediff.benchmarks import (
    DOCS,
    PUBLISHED,
    BenchSpec,
    load_specs,
    published_for,
    render,
    run_spec,
    save_record,
    update_docs,
)
from sparsediff.cli import app


def _options(bench: str) -> set[str]:
    commands = typer.main.get_command(app).commands
    command = commands["eval"] if bench == "eval" else commands["bench"].commands[bench]
    return {opt for param in command.params for opt in param.opts}


def test_every_spec_names_options_its_bench_has():
    specs = load_specs()
    assert {"demo", "default", "peers", "kernel-4k", "dllm", "size-8x32x32", "dlm-context"} <= set(specs)
    for spec in specs.values():
        flags = {a for a in spec.argv() if a.startswith("--")}
        assert flags <= _options(spec.bench), (spec.name, flags - _options(spec.bench))
        command = "sparsediff eval " if spec.bench == "eval" else f"sparsediff bench {spec.bench} "
        assert spec.title and spec.command().startswith(command)
        if spec.bench == "methods":
            assert set(spec.options["method"]) <= set(spec.labels), spec.name  # every method has a readable name


def test_the_published_tables_are_what_their_records_render():
    """Fails when a figure in README.md, docs/results.md or docs/diffusion-lms.md is edited by hand or a record changes
    without `sparsediff bench report`."""
    assert update_docs(check=True) == []
    blocks = [m["name"] for path in DOCS for m in benchmarks.BLOCK.finditer(path.read_text())]
    assert ("default" in blocks and "demo" not in blocks) or blocks  # the headline table is rendered
    for name in {n for block in blocks for n in block.split(",")}:
        record = json.loads((PUBLISHED / f"{name}.json").read_text())
        assert record["environment"]["hardware"] and record["seconds"] > 0 and record["results"]


def _record(name="x", speedup=2.5, psnr=31.2):
    spec = {"name": name, "title": "t", "bench": "methods", "options": {"held-out": 2}, "labels": {"a.json": "ours"}}
    rows = [
        {"method": "dense", "speedup": 1.0, "psnr": None, "ssim": None, "judge": {"colour_and_direction": 1.0},
         "density": 1.0, "peak_mem_mb": 700.0},
        {"method": "a.json", "speedup": speedup, "psnr": psnr, "ssim": 0.95, "judge": {"colour_and_direction": 0.5},
         "density": 0.3, "peak_mem_mb": 710.0},
    ]  # fmt: skip
    env = {"hardware": "CPU Z", "threads": 2, "torch": "2", "diffusers": "0", "sparsediff": "0", "commit": "abc",
           "date": "2026-12-04"}  # fmt: skip
    summary = {"model": "m", "size": "16x64x64", "prompts": ["p", "q"], "dense_s": 12.0, "methods": rows}
    return {"spec": spec, "environment": env, "seconds": 100.0, "results": [summary]}


def test_a_record_renders_its_figures_and_where_they_come_from():
    text = render(_record())
    assert "| 16x64x64 | 2 | ours | 2.50x | 31.20 | 0.950 | 1/2 | 0.300 | 710 |" in text
    assert "| 16x64x64 | 2 | dense (12.0 s) | 1.00x | - | - | 2/2 |" in text
    assert "CPU Z, 2 threads" in text and "`sparsediff bench run x`" in text
    assert text.count("<sub>") == 1 and render([_record("a"), _record("b")]).count("| ours |") == 2


def test_an_eval_record_names_each_setting_by_what_it_is():
    def row(keep_ratio, prefix_cache, mass="rows"):
        return {"context_tokens": 4112, "accuracy_dense": 0.969, "accuracy_sparse": 0.938, "token_agreement": 0.996,
                "density": None if keep_ratio is None else 0.21, "speedup": 1.5, "dense_fraction": 0.2,
                "keep_ratio": keep_ratio, "mass": mass, "prefix_cache": prefix_cache, "dense_peak_mb": 1559.0,
                "sparse_peak_mb": 1573.0, "samples": 32}  # fmt: skip

    record = _record("dlm")
    record["spec"] = {"name": "dlm", "title": "t", "bench": "eval", "options": {"model": "tiny-dlm"}, "labels": {}}
    record["results"] = [row(0.2, False), row(None, True), row(0.3, True, "exact")]
    text = render(record)
    assert "| 4,112 | 96.9% | SparseD rows mass, keep 0.2 | 20% | 93.8% | 0.996 | 0.21 | 1.50x | 1559 / 1573 |" in text
    assert "| prefix cache alone | - | 93.8% | 0.996 | - |" in text
    assert "| SparseD exact mass, keep 0.3 + prefix cache |" in text and "`sparsediff bench run dlm`" in text


def test_report_rewrites_a_stale_block_and_check_reports_it(tmp_path):
    records = tmp_path / "records"
    save_record(_record("x"), records)
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- bench:x -->\n| typed by hand | 9.99x |\n<!-- /bench:x -->\nend\n")
    assert update_docs([doc], records, check=True) == ["doc.md: x"]
    assert "9.99x" in doc.read_text()  # checking never writes
    assert update_docs([doc], records) == ["doc.md: x"]
    assert "2.50x" in doc.read_text() and "9.99x" not in doc.read_text() and doc.read_text().endswith("end\n")
    assert update_docs([doc], records, check=True) == []
    save_record(_record("x", speedup=2.0), records)  # a new record: the table is stale again
    assert update_docs([doc], records, check=True) == ["doc.md: x"]
    doc.write_text("<!-- bench:missing -->\n<!-- /bench:missing -->\n")
    with pytest.raises(ValueError, match="bench run missing"):
        update_docs([doc], records, check=True)


@pytest.mark.slow
def test_a_spec_runs_into_a_record_with_its_environment(tmp_path):
    spec = BenchSpec(name="tiny", title="tiny wan", bench="methods", labels={"local": "local"},
                     options={"model": "tiny-wan", "prompt": "a red circle", "num-frames": 5, "height": 32,
                              "width": 32, "steps": 2, "method": ["local"], "threads": 1})  # fmt: skip
    (tmp_path / "tiny.seconds").write_text("1000.0")  # an earlier segment, stopped part way
    record = run_spec(spec, tmp_path)
    assert 1000 < record["seconds"] < 1600  # both segments
    env = record["environment"]
    assert env["threads"] == 1 and env["torch"] and env["date"] and env["hardware"]
    assert [m["method"] for m in record["results"][-1]["methods"]] == ["dense", "local"]
    assert not list(tmp_path.iterdir())  # the resume files go once the spec completes
    assert "| 5x32x32 | 1 | local |" in render(record)


def test_generate_compare_finds_the_published_figure_of_the_same_run(tmp_path, monkeypatch):
    specs, records = tmp_path / "specs", tmp_path / "records"
    specs.mkdir()
    config = "assets/shapes-t2v/sparse.json"
    spec = {"title": "demo", "bench": "methods", "labels": {config: "default"},
            "options": {"model": "shapes-t2v", "prompt": "a red circle moving right", "method": [config]}}  # fmt: skip
    (specs / "demo.json").write_text(json.dumps(spec))
    record = _record("demo")
    record["results"][0]["methods"][1]["method"] = config
    save_record(record, records)
    monkeypatch.setattr(benchmarks, "SPECS", specs)
    monkeypatch.setattr(benchmarks, "PUBLISHED", records)
    shipped = benchmarks.ROOT / config
    found = published_for("shapes-t2v", "a red circle moving right", shipped)
    assert found.startswith("2.50x at 31.20 dB on CPU Z, 2 threads")
    assert published_for("shapes-t2v", "another prompt", shipped) is None
    assert published_for("tiny-wan", "a red circle moving right", shipped) is None
    shutil.rmtree(records)
    assert published_for("shapes-t2v", "a red circle moving right", shipped) is None
