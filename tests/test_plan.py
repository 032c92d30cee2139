"""BlockPlan: round trips, density, and clear errors."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsediff import BlockPlan


@st.composite
def block_masks(draw):
    heads = draw(st.integers(1, 4))
    n = draw(st.integers(1, 300))
    block = draw(st.sampled_from([8, 16, 32, 64]))
    blocks = math.ceil(n / block)
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(heads, blocks, blocks, generator=gen) < draw(st.floats(0.05, 1.0))
    mask |= torch.eye(blocks, dtype=torch.bool)  # no empty rows
    return mask, block, n


@given(block_masks())
def test_from_block_mask_round_trips(case):
    mask, block, n = case
    plan = BlockPlan.from_block_mask(mask, block, seq_len=n)
    assert torch.equal(plan.to_dense_mask(), mask)
    token = plan.to_token_mask()
    assert token.shape == (mask.shape[0], n, n)
    expected = mask.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :n, :n]
    assert torch.equal(token, expected)
    # Density is exact: the fraction of token pairs computed.
    assert plan.density == pytest.approx(token.double().mean().item(), abs=1e-12)


def test_density_and_repr():
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, range(4), range(4)] = True
    plan = BlockPlan.from_block_mask(mask, 16)
    assert plan.density == pytest.approx(0.25)
    assert "density=0.250" in repr(plan)
    assert str(plan).splitlines()[1] == "#..."
    assert plan.head_groups == ((0, 1),)


def test_empty_row_is_an_error_unless_head_skipped():
    mask = torch.ones(2, 3, 3, dtype=torch.bool)
    mask[1, 2] = False
    with pytest.raises(ValueError, match="query block 2 of head 1 attends to no key block"):
        BlockPlan.from_block_mask(mask, 4)
    plan = BlockPlan.from_block_mask(mask, 4, skipped_heads=torch.tensor([False, True]))
    assert plan.kv_counts[1].sum() == 0 and plan.skipped_heads.tolist() == [False, True]


def test_bad_shapes_and_indices():
    with pytest.raises(ValueError, match="bool tensor"):
        BlockPlan.from_block_mask(torch.ones(3, 3, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="does not fit"):
        BlockPlan.from_block_mask(torch.ones(1, 3, 3, dtype=torch.bool), 4, seq_len=20)
    plan = BlockPlan.from_block_mask(torch.ones(1, 2, 2, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="out of range"):
        BlockPlan(plan.kv_indices + 5, plan.kv_counts, 4, 4, 8, 8, plan.skipped_heads, plan.head_groups)
