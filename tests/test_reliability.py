"""Right numbers at the edges: padding masks broadcast over a batch, GQA with padded text,
pipelines whose timestep rises, and settings refused before any work."""

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from sparsediff import SparseConfig, TokenLayout
from sparsediff.cli import app
from sparsediff.integrations.diffusers import StepTracker
from sparsediff.integrations.families import text_padding_groups
from sparsediff.methods.runner import AttentionCall, Runner, Step

LAYER = "blocks.0.attn1"


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("method", ["local", "topk"])
def test_a_padding_mask_broadcast_over_the_batch_serves_every_sample(kv_heads, method):
    """(1, 1, 1, N) masks with batch-2 queries used to fill sample 0 only (the rest was
    uninitialised memory); with fewer KV heads the pad rows raised."""
    layout = TokenLayout(text_prefix=8, frames=1, height=8, width=8)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, layout.num_tokens, 16, generator=gen)
    k, v = (torch.randn(2, kv_heads, layout.num_tokens, 16, generator=gen) for _ in range(2))
    mask = torch.ones(1, 1, 1, layout.num_tokens, dtype=torch.bool)
    mask[..., 5:8] = False  # the last three text tokens are padding, for every sample
    groups = text_padding_groups(mask, layout, batch=2)
    assert [s.tolist() for _, s in groups] == [[0, 1]]
    call = AttentionCall(LAYER, q, k, v, lambda: None, Step(), layout=layout, groups=groups)
    config = SparseConfig(method=method, density=1.0, block_size=16, never_slower=False)
    out = Runner(config, [LAYER], {LAYER: 4}).run(call)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv_heads != 4)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_groups_that_leave_a_sample_out_are_refused_not_returned_half_filled():
    layout = TokenLayout(text_prefix=8, frames=1, height=8, width=8)
    q = torch.randn(2, 2, layout.num_tokens, 16)
    valid = torch.ones(layout.num_tokens, dtype=torch.bool)
    call = AttentionCall(LAYER, q, q, q, lambda: None, Step(), layout=layout, groups=[(valid, torch.tensor([0]))])
    with pytest.raises(ValueError, match=r"padding groups cover samples \[0\] of a batch of 2"):
        Runner(SparseConfig(method="local", block_size=16, never_slower=False), [LAYER], {LAYER: 2}).run(call)


@pytest.mark.parametrize("with_scheduler", [True, False])
def test_rising_timesteps_are_the_steps_of_one_generation(with_scheduler):
    """Lumina2 and Lumina-Next pass 1 - t/1000, which rises: every step used to start a new generation."""
    index = {"i": None}
    tracker = StepTracker(lambda: 4, (lambda: index["i"]) if with_scheduler else (lambda: None))
    for i, t in enumerate([0.0, 0.25, 0.5, 0.75]):
        index["i"] = i
        tracker.observe(torch.tensor([t, t]))
        assert (tracker.generation, tracker.step) == (1, i)
    index["i"] = 0
    tracker.observe(torch.tensor([0.0]))  # the next call starts again from the bottom
    assert (tracker.generation, tracker.step) == (2, 0)


def test_falling_timesteps_and_a_new_call_without_a_reset():
    tracker = StepTracker()
    for t in (999.0, 999.0, 700.0, 700.0, 400.0):  # two calls per step (CFG as separate calls)
        tracker.observe(t)
    assert (tracker.generation, tracker.step, tracker.branch) == (1, 2, 0)
    tracker.observe(999.0)
    assert (tracker.generation, tracker.step) == (2, 0)


def test_eval_refuses_a_keep_ratio_of_zero_before_any_work():
    result = CliRunner().invoke(app, ["eval", "--keep-ratio", "0", "--samples", "1"])
    assert result.exit_code == 2 and "--keep-ratio 0.0 must be in (0, 1]" in " ".join(result.output.split())
