"""One video across processes: diffusers' Ulysses context parallelism with sparse attention.

After the all-to-all each of the 2 ranks holds half the heads of every attention call; the
integration gives the runner the rank's head offset, so a per-head config runs each head's own
pattern. Run with 2 CPU processes (gloo) under torch.distributed.run.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import sparsediff
from sparsediff import Diagonal, SparseConfig, Stripe, Window
from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

WORKER = Path(__file__).parent / "helpers" / "context_parallel_worker.py"
# Different patterns per head: a rank running the other rank's heads' patterns gives another output.
CONFIG = SparseConfig(
    method="pattern",
    block_size=16,
    heads={
        "blocks.0.attn1": [Diagonal(radius=1), Window(radius=40) | Stripe(frames=(0,))],
        "blocks.1.attn1": [Window(radius=20), Diagonal(radius=2, temporal_radius=1)],
    },
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ulysses_context_parallel_runs_each_ranks_heads(tmp_path):
    config = CONFIG.save(tmp_path / "heads.json")
    out = tmp_path / "cp.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", str(WORKER), str(out), str(config)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cp = load_file(out)
    spec = TINY_TRANSFORMERS["wan"]
    model = spec.build()
    inputs = spec.make_inputs(1, 3, 16, 16, 8, 900, torch.Generator().manual_seed(0))
    with torch.no_grad():
        native = model(**inputs, return_dict=False)[0]
        with sparsediff.sparse(model, CONFIG) as state:
            single = model(**inputs, return_dict=False)[0]
            assert state.calls["sparse"] == 2
    assert (cp["native"] - native).abs().max() <= 1e-5  # diffusers' CP itself is exact here
    assert (cp["dense"] - cp["native"]).abs().max() <= 1e-5  # the dense preset under CP is native CP
    assert int(cp["sparse_calls"]) == 2 and (single - native).abs().max() > 1e-3
    assert (cp["sparse"] - single).abs().max() <= 1e-4  # each rank ran its own heads' patterns
