"""Per-call methods (pyramid, topk, hilbert, raster-window) against their references."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sparsediff
from sparsediff import TokenLayout, sparse_attention
from sparsediff.methods.bank import MASKED, bank_attention_reference, pool_blocks
from sparsediff.methods.hilbert import local_global_attention, local_global_plan
from sparsediff.methods.pyramid import (
    assign_levels,
    forced_full,
    pooled_mass,
    pyramid_attention,
    pyramid_bank,
    pyramid_bank_plan,
    topk_attention,
    topk_plan,
)

layouts = st.builds(
    TokenLayout,
    frames=st.integers(1, 3),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    text_prefix=st.sampled_from([0, 3]),
    text_suffix=st.sampled_from([0, 5]),
)


def _qkv(layout, seed, heads=2, kv_heads=2, dim=8):
    gen = torch.Generator().manual_seed(seed)
    n = layout.num_tokens
    return (torch.randn(2, heads, n, dim, generator=gen) * 2, torch.randn(2, kv_heads, n, dim, generator=gen) * 2,
            torch.randn(2, kv_heads, n, dim, generator=gen))  # fmt: skip


@given(layouts, st.sampled_from([8, 16]), st.floats(0.1, 0.9), st.integers(0, 10))
def test_pyramid_matches_its_reference(layout, block, budget, seed):
    q, k, v = _qkv(layout, seed)
    out, density = pyramid_attention(q, k, v, layout, budget, block, "torch", 0.3)
    levels = assign_levels(pooled_mass(q, k, block, 0.3), budget, forced_full(layout, block))
    plan = pyramid_bank_plan(levels, block, q.shape[2], k.shape[2])
    bank_k, bank_v, bias = pyramid_bank(k, v, block)
    expected = bank_attention_reference(q, bank_k, bank_v, bias, plan.to_token_mask(), 0.3)
    assert (out - expected).abs().max() <= 1e-4
    # Each query row spends at most the budget, or what its forced blocks (text, diagonal) cost alone.
    forced = forced_full(layout, block)
    kv_blocks = forced.shape[-1]
    cost = torch.tensor([0, 1 / 8, 1 / 4, 1 / 2, 1.0])[levels].sum(-1)  # [H, Qb] in block units
    assert (cost <= torch.maximum(forced.sum(-1) * 1.0, torch.tensor(budget * kv_blocks)) + 1e-5).all()
    rows = torch.full((forced.shape[0],), float(block))
    rows[-1] = q.shape[2] - block * (forced.shape[0] - 1)  # a partial last query block counts its rows
    assert density == pytest.approx(float((cost * rows).sum()) / (cost.shape[0] * q.shape[2] * kv_blocks), rel=1e-5)


@pytest.mark.parametrize(("n", "block"), [(64, 16), (61, 16), (45, 8), (3, 8)])
def test_pyramid_bank_is_the_padded_keys_then_each_pooled_level(n, block):
    k, v = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)
    bank_k, bank_v, bias = pyramid_bank(k, v, block)
    padded = math.ceil(n / block) * block
    for x, bank in ((k, bank_k), (v, bank_v)):
        x = torch.nn.functional.pad(x, (0, 0, 0, padded - n))
        levels = [pool_blocks(x, n, pool) for pool in (2, 4, 8)]
        assert torch.allclose(bank, torch.cat([x, *(pooled for pooled, _ in levels)], 2), atol=1e-6)
    expected_bias = torch.cat([torch.where(torch.arange(padded) < n, 0.0, MASKED), *(b for _, b in levels)])
    assert torch.equal(bias, expected_bias)


def test_pyramid_levels_spend_the_budget_on_the_heaviest_blocks():
    mass = torch.tensor([[[0.5, 0.3, 0.1, 0.05, 0.03, 0.02, 0.0, 0.0]]])
    forced = torch.zeros(1, 8, dtype=torch.bool)
    levels = assign_levels(mass, budget=0.25, forced=forced)[0, 0].tolist()  # 2 block units to spend
    # Refinements by mass gained per unit cost (0.25 x mass / step cost): block 0's four steps,
    # block 1's first three and block 2's first two cost 1.75 units; the next (block 1 to full,
    # 0.5 units) does not fit, and the order is never broken to fit a cheaper step behind it.
    assert levels == [4, 3, 2, 0, 0, 0, 0, 0]
    assert assign_levels(mass, budget=1.0, forced=forced)[0, 0].tolist() == [4] * 6 + [0, 0]  # no mass: no gain


def test_pooling_and_bias():
    x = torch.arange(12.0).view(1, 1, 6, 2)
    pooled, bias = pool_blocks(torch.nn.functional.pad(x, (0, 0, 0, 2)), valid=6, size=4)
    assert torch.allclose(pooled[0, 0], torch.tensor([[3.0, 4.0], [9.0, 10.0]]))
    assert torch.allclose(bias, torch.tensor([math.log(4), math.log(2)]))
    # The bias makes a pooled key act as `size` copies: one key repeated 4 times == its pooled form.
    q = torch.randn(1, 1, 3, 2)
    key = torch.randn(1, 1, 1, 2)
    other = torch.randn(1, 1, 1, 2)
    dense = torch.nn.functional.scaled_dot_product_attention(q, torch.cat([key] * 4 + [other], 2),
                                                             torch.cat([key] * 4 + [other], 2))  # fmt: skip
    from sparsediff.plan import BlockPlan

    plan = BlockPlan.from_block_mask(torch.ones(1, 1, 1, dtype=torch.bool), (3, 2), seq_len=(3, 2))
    bank = torch.cat([key, other], 2)
    for backend in ("torch", "reference", "auto"):
        out = sparse_attention(q, bank, bank, plan, backend, 2**-0.5, key_bias=torch.tensor([math.log(4), 0.0]))
        assert torch.allclose(out, dense, atol=1e-5)


@given(layouts, st.sampled_from([8, 16]), st.floats(0.1, 0.9), st.integers(0, 10))
def test_topk_keeps_the_heaviest_blocks_and_matches_reference(layout, block, density, seed):
    q, k, v = _qkv(layout, seed, heads=4, kv_heads=2)
    out, _ = topk_attention(q, k, v, layout, density, block, "torch", 0.3)
    mass = pooled_mass(q, k, block, 0.3)
    plan = topk_plan(mass, density, forced_full(layout, block), q.shape[2], k.shape[2], block)
    assert (out - sparse_attention(q, k, v, plan, "reference", scale=0.3)).abs().max() <= 1e-4
    kept, forced = plan.to_dense_mask(), forced_full(layout, block)
    # Exactly ceil(density x KV blocks) per row, or the forced blocks when they are more.
    target = min(math.ceil(density * forced.shape[-1]), forced.shape[-1])
    assert torch.equal(kept.sum(-1), forced.sum(-1).clamp(min=target).expand_as(kept.sum(-1)))
    worst_kept = torch.where(kept & ~forced, mass, torch.inf).amin(-1)  # of the blocks chosen by mass
    best_dropped = torch.where(kept, -torch.inf, mass).amax(-1)
    assert (best_dropped <= worst_kept + 1e-6).all()


@given(layouts, st.sampled_from(["hilbert", "hilbert-frame", "raster"]), st.sampled_from([4, 16]), st.integers(0, 10))
def test_local_global_matches_reference_and_unpermutes(layout, order, pool, seed):
    q, k, v = _qkv(layout, seed)
    out, density = local_global_attention(q, k, v, layout, 0.4, 8, "torch", 0.3, order=order, pool=pool)
    ordered = layout.to_order(order)
    qp, kp, vp = (ordered.permute(t) for t in (q, k, v))
    plan, _ = local_global_plan(ordered, 0.4, 8, pool)
    n, visual = layout.num_tokens, ordered.visual_slice
    padded = math.ceil(n / 8) * 8
    # Reference bank built independently: each coarse token is the mean of `pool` consecutive visual tokens.
    groups = [list(range(s, min(s + pool, layout.num_visual))) for s in range(0, layout.num_visual, pool)]
    coarse_k = torch.stack([kp[:, :, visual][:, :, g].mean(2) for g in groups], 2)
    coarse_v = torch.stack([vp[:, :, visual][:, :, g].mean(2) for g in groups], 2)
    extra = plan.seq_len_kv - padded - len(groups)
    pad = lambda t, m: torch.nn.functional.pad(t, (0, 0, 0, m))  # noqa: E731
    bank_k = torch.cat([pad(kp, padded - n), pad(coarse_k, extra)], 2)
    bank_v = torch.cat([pad(vp, padded - n), pad(coarse_v, extra)], 2)
    bias = torch.tensor([0.0] * n + [-1e9] * (padded - n) + [math.log(len(g)) for g in groups] + [-1e9] * extra)
    expected = bank_attention_reference(qp, bank_k, bank_v, bias, plan.to_token_mask(), 0.3)
    assert (ordered.permute(out) - expected).abs().max() <= 1e-4
    assert density > 0


@pytest.mark.parametrize("order", ["hilbert-frame", "hilbert", "raster"])
def test_local_global_with_a_window_over_every_key_is_softmax_over_keys_and_coarse_tokens(order):
    """The definition written out: each query sees every key plus every coarse token (the mean of
    `pool` consecutive visual tokens in curve order, its logit + log(pool))."""
    layout, pool = TokenLayout(frames=2, height=4, width=4, text_suffix=3), 4
    q, k, v = _qkv(layout, 0)
    target = 2.0  # beyond what any window reaches: the sizing loop ends at the widest, which covers every key
    plan, _ = local_global_plan(layout.to_order(order), target, 8, pool)
    assert plan.to_dense_mask()[..., : math.ceil(layout.num_tokens / 8)].all()
    out, _ = local_global_attention(q, k, v, layout, target, 8, "torch", 0.3, order=order, pool=pool)
    ordered = layout.to_order(order)
    kp, vp = (ordered.permute(t)[:, :, ordered.visual_slice] for t in (k, v))
    coarse_k = kp.unflatten(2, (-1, pool)).mean(3).double()
    coarse_v = vp.unflatten(2, (-1, pool)).mean(3).double()
    logits = torch.cat([q.double() @ k.double().transpose(-1, -2) * 0.3,
                        q.double() @ coarse_k.transpose(-1, -2) * 0.3 + math.log(pool)], -1)  # fmt: skip
    expected = logits.softmax(-1) @ torch.cat([v.double(), coarse_v], 2)
    assert (out.double() - expected).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "layout",
    [
        TokenLayout(frames=4, height=16, width=16),
        TokenLayout(frames=2, height=12, width=20, text_suffix=8),
        TokenLayout(frames=1, height=32, width=32, text_prefix=5),
    ],
)
@pytest.mark.parametrize("target", [0.1, 0.2, 0.3, 0.5])
def test_local_global_density_is_near_its_target(layout, target):
    q, k, v = _qkv(layout, 1)
    _, density = local_global_attention(q, k, v, layout, target, 16, "torch", 0.3)
    assert abs(density - target) <= 0.05


@pytest.mark.parametrize("method", ["pyramid", "topk", "hilbert", "raster-window"])
def test_methods_run_inside_a_diffusers_model(method):
    from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

    spec = TINY_TRANSFORMERS["hunyuanvideo"]
    model = spec.build()
    inputs = spec.make_inputs(1, 3, 16, 16, 8, 900, torch.Generator().manual_seed(0))
    outputs = {}
    with torch.no_grad():
        native = model(**inputs, return_dict=False)[0]
        for backend in ("torch", "reference"):  # the reference: dense attention under each call's plan
            with sparsediff.sparse(model, method, density=0.3, block_size=16, backend=backend) as state:
                outputs[backend] = model(**inputs, return_dict=False)[0]
            assert state.calls["sparse"] == 2 and abs(state.density() - 0.3) <= 0.12
    assert (outputs["torch"] - outputs["reference"]).abs().max() <= 1e-4
    assert (outputs["torch"] - native).abs().max() > 1e-4


def test_structure_measures_where_attention_goes(tmp_path):
    from PIL import Image

    from sparsediff.pipelines.tiny import tiny_pipeline
    from sparsediff.search.structure import CATEGORIES, attention_structure, structure_figure

    pipe = tiny_pipeline("wan")
    pipe.set_progress_bar_config(disable=True)
    found = attention_structure(pipe, ["a cat"], num_inference_steps=3, sample_steps=(0, 2), rows=32,
                                num_frames=5, height=64, width=64, guidance_scale=1.0)  # fmt: skip
    assert set(found.counts) == {"blocks.0.attn1", "blocks.1.attn1"}
    for layer in found.counts:
        mass, share = found.mean_mass(layer), found.mean_share(layer)
        assert mass.shape == (2, len(CATEGORIES)) and ((mass >= 0) & (mass <= 1 + 1e-6)).all()
        assert share[2] == 0  # Wan has no text inside self-attention
        assert 0 < share[0] < 1
    with Image.open(structure_figure(found, tmp_path / "s.png")) as image:
        assert image.size[0] > 400


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_per_call_heads_of_a_per_head_config_run_their_method(kv_heads):
    """A searched config may give some heads `Pyramid` or `HilbertWindow`: they get PSA's or the
    Hilbert windows' output for that head alone, the others their static plan."""
    from sparsediff import Diagonal, HilbertWindow, Pyramid, SparseConfig, build_plan
    from sparsediff.integrations.diffusers import SparseState, StepTracker

    layout = TokenLayout(frames=2, height=7, width=9, text_prefix=5)
    q, k, v = _qkv(layout, 3, heads=4, kv_heads=kv_heads)
    heads = [
        Pyramid(budget=0.3),
        Diagonal(radius=1),
        HilbertWindow(density=0.4),
        HilbertWindow(density=0.4, order="hilbert"),
    ]
    config = SparseConfig(method="pattern", heads={"attn": heads}, block_size=16)
    state = SparseState(config, StepTracker(), ["attn"], fixed_layout=layout)
    out = state.attend("attn", q, k, v)
    k, v = (t.repeat_interleave(4 // kv_heads, 1) for t in (k, v))
    densities = []
    for h, pattern in enumerate(heads):
        one = (q[:, [h]], k[:, [h]], v[:, [h]])
        if isinstance(pattern, Pyramid):
            expected, density = pyramid_attention(*one, layout, pattern.budget, 16, "reference", 8**-0.5)
        elif isinstance(pattern, HilbertWindow):
            expected, density = local_global_attention(*one, layout, pattern.density, 16, "reference", 8**-0.5,
                                                       order=pattern.order)  # fmt: skip
        else:  # static plans run with the text moved behind the grid (5 text tokens are not a block)
            aligned = layout.block_aligned(16, 16)
            plan = build_plan(aligned, pattern, 16)
            moved = (layout.move_to(t, aligned) for t in one)
            expected, density = aligned.move_to(sparse_attention(*moved, plan, "reference"), layout), plan.density
        densities.append(density)
        assert torch.allclose(out[:, [h]], expected, atol=1e-4), pattern
    assert not torch.allclose(out[:, [2]], out[:, [3]], atol=1e-3)  # the two curves differ
    assert state.density() == pytest.approx(sum(densities) / 4, rel=1e-6)


def test_static_plans_run_block_aligned_with_their_own_kv_blocks():
    """A text prefix that is not whole blocks and KV blocks smaller than query blocks: the runtime
    output equals masked attention, in the caller's token order, over exactly the keys of the plan
    it runs (the block-aligned plan moved back), and that plan covers the pattern."""
    import torch.nn.functional as F

    from sparsediff import Diagonal, MultiDiagonal, SparseConfig
    from sparsediff.integrations.diffusers import SparseState, StepTracker
    from sparsediff.patterns import aligned_plan

    layout = TokenLayout(frames=3, height=8, width=8, text_prefix=5)
    heads = [Diagonal(radius=1, temporal_radius=1), Diagonal(radius=1) | MultiDiagonal(radius=0, frame_offsets=(2,))]
    config = SparseConfig(method="pattern", heads={"attn": heads}, block_size=16, kv_block_size=8)
    q, k, v = _qkv(layout, 5, heads=2)
    out = SparseState(config, StepTracker(), ["attn"], fixed_layout=layout).attend("attn", q, k, v)
    aligned = layout.block_aligned(16, 8)
    for h, pattern in enumerate(heads):
        keys = aligned_plan(layout, pattern, (16, 8)).to_token_mask()[0]
        keys = aligned.move_to(aligned.move_to(keys, layout, 0), layout, 1)
        assert not (pattern.token_mask(layout) & ~keys).any()
        expected = F.scaled_dot_product_attention(q[:, [h]], k[:, [h]], v[:, [h]], attn_mask=keys)
        assert torch.allclose(out[:, [h]], expected, atol=1e-5), pattern
