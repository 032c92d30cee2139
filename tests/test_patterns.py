"""Patterns: the fast block masks equal the brute-force token masks reduced to blocks."""

import itertools

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from sparsediff import AnyOf, Diagonal, Full, MultiDiagonal, Pattern, Skip, Stripe, TokenLayout, Window, build_plan
from sparsediff.patterns import _reduce_to_blocks, aligned_plan

layouts = st.builds(
    TokenLayout,
    frames=st.integers(1, 4),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    text_prefix=st.integers(0, 12),
    text_suffix=st.integers(0, 6),
    order=st.sampled_from(["raster", "hilbert", "hilbert-frame"]),
)
simple_patterns = st.one_of(
    st.builds(Diagonal, radius=st.integers(0, 3), temporal_radius=st.integers(0, 2)),
    st.builds(
        MultiDiagonal,
        radius=st.integers(0, 2),
        frame_offsets=st.lists(st.integers(-3, 3), min_size=1, max_size=3).map(tuple),
    ),
    st.builds(Window, radius=st.integers(0, 40)),
    st.builds(Stripe, text=st.booleans(), frames=st.sampled_from([(), (0,), (-1,)])),
    st.just(Full()),
)
patterns = st.one_of(
    simple_patterns, st.lists(simple_patterns, min_size=2, max_size=3).map(lambda ps: AnyOf(parts=tuple(ps)))
)


@given(layouts, patterns, st.sampled_from([1, 4, 7, 16]), st.sampled_from([1, 5, 16]))
def test_block_mask_matches_token_mask(layout, pattern, block_q, block_kv):
    expected = _reduce_to_blocks(pattern.token_mask(layout), block_q, block_kv)
    assert torch.equal(pattern.block_mask(layout, block_q, block_kv), expected)


def test_diagonal_token_semantics():
    layout = TokenLayout(frames=2, height=3, width=3)
    mask = Diagonal(radius=1).token_mask(layout)
    centre, corner = 4, 0  # (0, 1, 1) and (0, 0, 0)
    assert mask[centre, :9].all()  # sees its whole frame
    assert not mask[centre, 9:].any()  # no temporal radius: nothing in frame 1
    assert mask[corner].nonzero().flatten().tolist() == [0, 1, 3, 4]
    assert MultiDiagonal(radius=0, frame_offsets=(1,)).token_mask(layout)[centre].nonzero().flatten().tolist() == [13]


def test_patterns_serialize_and_compose():
    p = Diagonal(radius=2) | Stripe(text=True) | MultiDiagonal(radius=1, frame_offsets=(-2, 2))
    assert isinstance(p, AnyOf) and len(p.parts) == 3  # unions flatten
    again = AnyOf.model_validate_json(p.model_dump_json())
    assert again == p and hash(again) == hash(p)
    assert str(Diagonal(radius=2)) == "diagonal(radius=2, temporal_radius=0)"


def test_build_plan_text_rules_and_determinism():
    layout = TokenLayout(frames=2, height=4, width=4, text_prefix=8)
    heads = [Diagonal(radius=0), Window(radius=0), Skip(), Diagonal(radius=0)]
    plan = build_plan(layout, heads, block_size=8)
    again = build_plan(layout, heads, block_size=8)
    assert torch.equal(plan.kv_indices, again.kv_indices) and torch.equal(plan.kv_counts, again.kv_counts)
    dense = plan.to_dense_mask()
    assert dense[0, 0].all()  # the text query block sees everything
    assert dense[0, :, 0].all()  # every query sees the text key block
    assert plan.skipped_heads.tolist() == [False, False, True, False]
    assert plan.head_groups == ((0, 3), (1,), (2,))
    no_text_keys = build_plan(layout, Diagonal(radius=0), block_size=8, text_keys=False)
    assert not no_text_keys.to_dense_mask()[0, 1:, 0].any()
    with pytest.raises(ValueError, match="query block 0 of head 0 attends to no key block"):
        build_plan(layout, Diagonal(radius=0), block_size=8, text_keys=False, text_queries_see_all=False)


def test_plan_density_grows_strictly_with_radius():
    """At 16-token blocks on a 4 x 32 x 32 grid (a row of the grid is two blocks) each step of the
    radius reaches new key blocks; one frame is 1/4 of the keys, so +-1 frame caps at 3/4."""
    layout = TokenLayout(frames=4, height=32, width=32)
    densities = [build_plan(layout, Diagonal(radius=r, temporal_radius=1), 16).density for r in (1, 4, 8, 16)]
    assert all(a < b for a, b in itertools.pairwise(densities)) and densities[0] < 0.1
    assert densities[-1] <= 0.75


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (Stripe(frames=(5,)), "do not fit a layout with 2 frames"),
        (Stripe(tokens=(99,)), "raster indices"),
        (AnyOf(parts=(Skip(), Full())), "skip, pyramid and hilbert-window cannot be part of a union"),
    ],
)
def test_bad_patterns(pattern, message):
    with pytest.raises(ValueError, match=message):
        build_plan(TokenLayout(frames=2, height=3, width=3), pattern, block_size=4)


def test_bad_pattern_values():
    with pytest.raises(ValueError):
        Diagonal(radius=-1)
    with pytest.raises(ValueError):
        Pattern.model_validate({"kind": "nope"})
    with pytest.raises(TypeError, match="expected Pattern"):
        build_plan(TokenLayout(height=2, width=2), ["diagonal"])


@given(layouts, patterns, st.sampled_from([(8, 8), (16, 8), (8, 4), (16, 16)]))
def test_aligned_plan_computes_every_pair_of_the_pattern_in_the_callers_order(layout, pattern, blocks):
    """Static plans run on `block_aligned` (text moved last when the prefix is not whole blocks);
    moved back to the caller's order, the plan's token mask still covers the pattern's pairs."""
    assume(layout.num_text or pattern.token_mask(layout).any(-1).all())  # else the planner refuses it, rightly
    aligned = layout.block_aligned(*blocks)
    assert aligned.text_prefix % blocks[0] == 0 and aligned.text_prefix % blocks[1] == 0
    assert aligned.num_tokens == layout.num_tokens and aligned.num_text == layout.num_text
    computed = aligned.move_to(aligned.move_to(aligned_plan(layout, pattern, blocks).to_token_mask()[0], layout, 0),
                               layout, 1)  # fmt: skip
    wanted = pattern.token_mask(layout)
    assert not (wanted & ~computed).any()


def test_text_moved_last_keeps_bands_on_grid_rows():
    """8 text tokens before a 16-wide grid shift every 64-token block across grid rows; moved behind
    the grid, a radius-1 band needs fewer blocks (the reason `block_aligned` exists)."""
    layout = TokenLayout(frames=4, height=16, width=16, text_prefix=8)
    band = Diagonal(radius=1, temporal_radius=1)
    assert layout.block_aligned(64, 64) == TokenLayout(frames=4, height=16, width=16, text_suffix=8)
    assert aligned_plan(layout, band, 64).density < build_plan(layout, band, 64).density
    flux_like = TokenLayout(height=8, width=8, text_prefix=64)
    assert flux_like.block_aligned(64, 16) is flux_like  # already whole blocks: nothing moves


def test_move_to_round_trips_and_refuses_other_layouts():
    layout = TokenLayout(frames=2, height=3, width=3, text_prefix=5, text_suffix=2)
    aligned = layout.block_aligned(4, 4)
    x = torch.arange(layout.num_tokens).float()[:, None]
    moved = layout.move_to(x, aligned, dim=0)
    assert moved[: layout.num_visual, 0].tolist() == list(range(5, 5 + layout.num_visual))
    assert torch.equal(aligned.move_to(moved, layout, dim=0), x)
    with pytest.raises(ValueError, match="only the text may move"):
        layout.move_to(x, TokenLayout(frames=1, height=3, width=6, text_suffix=7), dim=0)
