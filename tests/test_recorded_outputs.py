"""Outputs of fixed integration calls, recorded once and held: a refactor of the attention path
must not change what any family or method computes.

`tests/data/recorded_outputs.safetensors` holds, per family and method, the transformer output of
two forwards (timesteps 900 and 800: a dense first step, then sparse with skipped heads reusing)
on fixed inputs, and SparseD's logits over a short masked-diffusion decode. The recording was
bit-identical before and after the runner took over the attention path; the tolerance below only
absorbs another CPU's float rounding. Regenerate (only when a change is meant to alter outputs,
and say so) with `python tests/test_recorded_outputs.py`.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import sparsediff
from sparsediff import Diagonal, MultiDiagonal, Skip, SparseConfig, Stripe
from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

RECORDED = Path(__file__).parent / "data" / "recorded_outputs.safetensors"
TOLERANCE = 1e-5


def _first_self_attention(model) -> tuple[str, int]:
    names = [n.removesuffix(".processor") for n in model.attn_processors]
    name = next(n for n in names if not n.startswith("context_embedder") and not n.endswith("attn2"))
    return name, model.get_submodule(name).heads


def _configs(model) -> dict[str, SparseConfig]:
    layer, heads = _first_self_attention(model)
    per_head = [Skip(every=2), Diagonal(radius=1) | MultiDiagonal(radius=0, frame_offsets=(-1, 1)),
                Diagonal(radius=2) | Stripe(frames=(0,))][:heads]  # fmt: skip
    return {
        "local": SparseConfig(method="local", density=0.3, block_size=16, schedule={"dense_steps": 1}),
        "pattern": SparseConfig(
            method="pattern",
            pattern=Diagonal(radius=1),
            block_size=16,
            kv_block_size=8,
            heads={layer: per_head},
            schedule={"dense_steps": 1},
        ),
        "pyramid": SparseConfig(method="pyramid", density=0.3, block_size=16),
        "hilbert": SparseConfig(method="hilbert", density=0.3, block_size=16),
    }


@torch.no_grad()
def _family_outputs(family: str) -> dict[str, torch.Tensor]:
    spec = TINY_TRANSFORMERS[family]
    model = spec.build()
    frames, height, width = (3, 8, 12) if spec.video else (1, 8, 12)
    out = {}
    for method, config in _configs(model).items():
        with sparsediff.sparse(model, config):
            for t in (900, 800):
                inputs = spec.make_inputs(2, frames, height, width, 8, t, torch.Generator().manual_seed(t))
                out[f"{family}/{method}/{t}"] = model(**inputs, return_dict=False)[0].contiguous()
    return out


@torch.no_grad()
def _sparsed_logits() -> dict[str, torch.Tensor]:
    from sparsediff.pipelines.dllm import masked_diffusion_generate, tiny_dlm

    torch.manual_seed(0)
    model = tiny_dlm(vocab_size=40, hidden=32, layers=2, heads=4, kv_heads=2, context=512).eval()
    logits = []
    handle = model.register_forward_hook(lambda m, a, kw, o: logits.append(o.logits[:, -16:].clone()), with_kwargs=True)
    prompt = [torch.randint(4, 40, (150,), generator=torch.Generator().manual_seed(0)).tolist()]
    config = {"density": 0.3, "block_size": 16, "schedule": {"dense_fraction": 0.25}, "mass": "exact"}  # as recorded
    with sparsediff.sparse(model, "sparsed", **config):
        masked_diffusion_generate(model, prompt, mask_id=1, gen_length=16, steps=8, progress=False)
    handle.remove()
    return {f"sparsed/{i}": t.contiguous() for i, t in enumerate(logits)}


def record() -> dict[str, torch.Tensor]:
    found = {}
    for family in sorted(TINY_TRANSFORMERS):
        found |= _family_outputs(family)
    return found | _sparsed_logits()


@pytest.fixture(scope="module")
def recorded():
    return load_file(RECORDED)


@pytest.mark.parametrize("family", sorted(TINY_TRANSFORMERS))
def test_family_outputs_are_as_recorded(recorded, family):
    now = _family_outputs(family)
    assert set(now) == {k for k in recorded if k.startswith(f"{family}/")}
    for key, value in now.items():
        assert (value - recorded[key]).abs().max() <= TOLERANCE, key


def test_sparsed_logits_are_as_recorded(recorded):
    now = _sparsed_logits()
    assert set(now) == {k for k in recorded if k.startswith("sparsed/")}
    for key, value in now.items():
        assert (value - recorded[key]).abs().max() <= TOLERANCE, key


if __name__ == "__main__":
    RECORDED.parent.mkdir(exist_ok=True)
    save_file(record(), RECORDED)
    print(f"wrote {RECORDED}")
