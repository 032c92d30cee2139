"""One rank of a 2-process Ulysses context-parallel run of a tiny Wan transformer (gloo, CPU).

Run by tests/test_context_parallel.py under `torch.distributed.run`; rank 0 saves the outputs of
native attention, the dense preset and a per-head sparse config to the file given as argv[1].
"""

import sys

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from safetensors.torch import save_file

import sparsediff
from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

# diffusers places each rank on `rank % torch.accelerator.device_count()`, which is 0 on a
# machine without an accelerator (ZeroDivisionError); with 1, the device type stays "cpu".
torch.accelerator.device_count = lambda: 1
torch.set_num_threads(1)


def main(out: str, config_json: str) -> None:
    dist.init_process_group("gloo")
    spec = TINY_TRANSFORMERS["wan"]
    model = spec.build()
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    inputs = spec.make_inputs(1, 3, 16, 16, 8, 900, torch.Generator().manual_seed(0))
    results = {}
    with torch.no_grad():
        results["native"] = model(**inputs, return_dict=False)[0]
        for name, config in (("dense", "dense"), ("sparse", config_json)):
            with sparsediff.sparse(model, config) as state:
                results[name] = model(**inputs, return_dict=False)[0]
                results[f"{name}_calls"] = torch.tensor(state.calls["sparse"])
    if dist.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in results.items()}, out)
    dist.barrier()  # both ranks done before gloo tears down (a rank leaving early aborted the other once)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
