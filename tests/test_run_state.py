"""Nothing survives a pipeline call that should not; steps follow what the pipeline does.

Each test compares a run that follows another run with the same run on a freshly applied
config: any output kept for reuse, step counter or call counter carried between calls shows up
as a difference.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    WanPipeline,
)

import sparsediff
from sparsediff import Diagonal, Skip, SparseConfig
from sparsediff.pipelines.tiny import TINY_TRANSFORMERS, tiny_pipeline

# Skipped heads everywhere: head 0 of each layer reuses on odd steps, layer 1 reuses whole.
REUSE = SparseConfig(
    method="pattern",
    block_size=16,
    heads={
        "blocks.0.attn1": [Skip(every=2), Diagonal(radius=1)],
        "blocks.1.attn1": [Skip(every=2), Skip(every=2)],
    },
)
CALL = dict(num_frames=5, height=32, width=32, num_inference_steps=6, guidance_scale=3.0, output_type="np")


def _wan22():
    """Wan 2.2's layout: `transformer` for high-noise steps, `transformer_2` for the rest."""
    base = tiny_pipeline("wan")
    components = {k: v for k, v in base.components.items() if k not in ("transformer_2", "boundary_ratio")}
    components["transformer_2"] = TINY_TRANSFORMERS["wan"].build(seed=1)
    return WanPipeline(**components, boundary_ratio=0.7)  # steps 0-2 high noise, 3-5 low


def _video(pipe, prompt, seed=0):
    return pipe(prompt=prompt, negative_prompt="", **CALL, generator=torch.Generator().manual_seed(seed)).frames[0]


def _experts_steps(pipe) -> dict[str, list[int]]:
    """Which steps each transformer served in the last call (read after each forward)."""
    served = {}
    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name, None)
        if model is not None:
            state = sparsediff.state_of(model)
            served[name] = []
            model.register_forward_hook(lambda m, a, o, s=state, n=name: served[n].append(s.tracker.step))
    return served


@pytest.mark.parametrize("two_experts", [False, True], ids=["one transformer", "Wan 2.2 two experts"])
def test_second_prompt_equals_it_alone(two_experts):
    pipe = _wan22() if two_experts else tiny_pipeline("wan")
    with sparsediff.sparse(pipe, REUSE):
        served = _experts_steps(pipe)
        _video(pipe, "red circle")
        if two_experts:  # the second expert starts on an odd step: it must not reuse the first call's output
            first = sorted(set(served["transformer_2"]))
            assert first and first[0] % 2 == 1 and sorted(set(served["transformer"])) == list(range(first[0]))
        second = _video(pipe, "blue square", seed=1)
        for model in (pipe.transformer, getattr(pipe, "transformer_2", None)):
            if model is not None:  # released at the end of the call, not held until the next
                assert sparsediff.state_of(model).reuse == {}
    with sparsediff.sparse(pipe, REUSE) as state:
        alone = _video(pipe, "blue square", seed=1)
        # 6 steps x 2 CFG calls: layer 1 reuses whole on the odd steps (not on step 3, the second
        # expert's first: it has nothing of its own to reuse); counts cover both experts.
        assert state.calls["sparse: layer reused"] == (2 if two_experts else 3) * 2
    assert np.array_equal(second, alone)


def test_transformer_called_outside_a_pipeline():
    model = TINY_TRANSFORMERS["wan"].build()
    spec = TINY_TRANSFORMERS["wan"]

    def denoise(seed):
        outs = []
        for t in (900, 600, 300, 100):
            inputs = spec.make_inputs(1, 3, 16, 16, 8, t, torch.Generator().manual_seed(seed))
            with torch.no_grad():
                outs.append(model(**inputs, return_dict=False)[0])
        return torch.stack(outs)

    with sparsediff.sparse(model, REUSE) as state:
        denoise(0)
        second = denoise(1)
        assert state.tracker.step == 3 and state.calls["sparse: layer reused"] == 2
    with sparsediff.sparse(model, REUSE):
        alone = denoise(1)
    assert torch.equal(second, alone)


@pytest.mark.parametrize("scheduler_class", [HeunDiscreteScheduler, KDPM2DiscreteScheduler], ids=["heun", "kdpm2"])
@pytest.mark.parametrize("guidance", [1.0, 2.0], ids=["no cfg", "cfg"])
def test_second_order_schedulers_count_every_model_call_as_a_step(scheduler_class, guidance):
    pipe = tiny_pipeline("pixart")
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    args = dict(prompt="a red circle", height=32, width=32, num_inference_steps=3, guidance_scale=guidance,
                output_type="np", clean_caption=False, max_sequence_length=16)  # fmt: skip
    config = SparseConfig(method="local", density=0.3, block_size=16, schedule={"dense_steps": 2})
    with sparsediff.sparse(pipe, config) as state:
        steps = []
        pipe.transformer.register_forward_hook(lambda m, a, o: steps.append(state.tracker.step))
        pipe(**args, generator=torch.Generator().manual_seed(0))
        calls = len(pipe.scheduler.timesteps)  # 2 model calls per step but the last (a repeated timestep)
        assert calls > 3 and steps == list(range(calls))  # CFG is batched in PixArt: one call per step
        layers = 2  # self-attention layers
        assert state.calls["dense: schedule"] == 2 * layers and state.calls["sparse"] == (calls - 2) * layers


@pytest.mark.parametrize("guidance", [1.0, 3.0], ids=["no cfg", "cfg as two calls"])
def test_flow_heun_with_cfg_as_separate_calls(guidance):
    pipe = tiny_pipeline("wan")
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    seen = []
    with sparsediff.sparse(pipe, "local", density=0.3, block_size=16) as state:
        pipe.transformer.register_forward_hook(lambda m, a, o: seen.append((state.tracker.step, state.tracker.branch)))
        pipe(prompt="red", negative_prompt="", **{**CALL, "num_inference_steps": 3, "guidance_scale": guidance})
    calls = len(pipe.scheduler.timesteps)
    branches = ["cond", "uncond"] if guidance > 1 else ["cond"]
    assert seen == [(step, b) for step in range(calls) for b in branches]


def test_a_layer_keeps_only_its_skipped_heads_and_a_whole_layer_only_what_it_returns():
    """One skipped head of eight keeps one eighth of the attention output; a layer whose heads all
    skip with one period keeps its processor output and none of its heads' outputs."""
    from sparsediff import TokenLayout
    from sparsediff.methods.runner import AttentionCall, Runner, Step

    layout = TokenLayout(frames=2, height=8, width=8)
    config = SparseConfig(method="pattern", block_size=16, heads={"attn": [Skip(every=2)] + [Diagonal(radius=1)] * 7})
    runner = Runner(config, ["attn"], {"attn": 8})
    q, k, v = (torch.randn(2, 8, layout.num_tokens, 16) for _ in range(3))
    out = runner.run(AttentionCall("attn", q, k, v, lambda: None, Step(step=0), layout=layout))
    assert runner.kept_bytes() * 8 == out.numel() * out.element_size()

    model = TINY_TRANSFORMERS["wan"].build()
    whole = SparseConfig(method="pattern", pattern=Diagonal(radius=1), block_size=16,
                         heads={"blocks.1.attn1": [Skip(every=2), Skip(every=2)]})  # fmt: skip
    inputs = TINY_TRANSFORMERS["wan"].make_inputs(1, 3, 16, 16, 8, 900, torch.Generator().manual_seed(0))
    with sparsediff.sparse(model, whole) as state, torch.no_grad():
        model(**inputs)
        assert [key for key in state.reuse if "blocks.1.attn1" in key] == [("layer output", "blocks.1.attn1", 0)]
