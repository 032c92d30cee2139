"""Every backend equals the reference (which itself equals masked SDPA) within tolerance."""

import math
import threading

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sparsediff import BlockPlan, Diagonal, Full, Skip, Stripe, TokenLayout, build_plan, sparse_attention
from sparsediff.attention import resolve_backend
from sparsediff.kernels import block_sparse_attention_gather

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def _random_plan(gen, heads, n, block_q, block_kv, density):
    qb, kb = math.ceil(n / block_q), math.ceil(n / block_kv)
    mask = torch.rand(heads, qb, kb, generator=gen) < density
    mask[..., 0] |= ~mask.any(-1)  # no empty rows
    return BlockPlan.from_block_mask(mask, (block_q, block_kv), seq_len=n)


def _qkv(gen, batch, heads, kv_heads, n, dim, dtype):
    q = torch.randn(batch, heads, n, dim, generator=gen)
    k, v = (torch.randn(batch, kv_heads, n, dim, generator=gen) for _ in range(2))
    return [x.to(dtype) for x in (q, k, v)]


def _golden(q, k, v, plan, key_bias=None):
    """float64 reference for tolerance checks on half dtypes."""
    bias = None if key_bias is None else key_bias.double()
    return sparse_attention(q.double(), k.double(), v.double(), plan, backend="reference", key_bias=bias)


@st.composite
def cases(draw):
    kv_heads = draw(st.integers(1, 3))
    return dict(
        batch=draw(st.integers(1, 2)),
        kv_heads=kv_heads,
        heads=kv_heads * draw(st.integers(1, 3)),
        n=draw(st.integers(1, 260)),
        dim=draw(st.sampled_from([8, 16, 64])),
        block_q=draw(st.sampled_from([16, 32, 64])),
        block_kv=draw(st.sampled_from([16, 32, 64])),
        density=draw(st.floats(0.05, 1.0)),
        seed=draw(st.integers(0, 2**16)),
        key_bias=draw(st.booleans()),
    )


@given(cases(), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_torch_backend_matches_reference(case, dtype):
    gen = torch.Generator().manual_seed(case["seed"])
    plan = _random_plan(gen, case["heads"], case["n"], case["block_q"], case["block_kv"], case["density"])
    q, k, v = _qkv(gen, case["batch"], case["heads"], case["kv_heads"], case["n"], case["dim"], dtype)
    bias = torch.randn(case["n"], generator=gen).to(dtype) if case["key_bias"] else None
    out = sparse_attention(q, k, v, plan, backend="torch", key_bias=bias)
    ref = sparse_attention(q, k, v, plan, backend="reference", key_bias=bias)
    assert out.dtype == dtype and out.shape == q.shape
    if dtype == torch.float32:
        assert (out - ref).abs().max() <= TOLERANCE[dtype]
    else:  # against float64: no worse than twice the reference's own error, and within 2e-2
        golden = _golden(q, k, v, plan, bias)
        kernel_err = (out.double() - golden).abs().max()
        ref_err = (ref.double() - golden).abs().max()
        assert kernel_err <= max(2 * ref_err, TOLERANCE[dtype])


def test_reference_equals_masked_sdpa_and_full_plan_equals_sdpa():
    gen = torch.Generator().manual_seed(0)
    q, k, v = _qkv(gen, 2, 4, 4, 100, 16, torch.float32)
    full = BlockPlan.from_block_mask(torch.ones(4, 4, 4, dtype=torch.bool), 32, seq_len=100)
    dense = F.scaled_dot_product_attention(q, k, v)
    for backend in ("reference", "torch", "auto"):
        assert (sparse_attention(q, k, v, full, backend=backend) - dense).abs().max() < 1e-5
    plan = _random_plan(gen, 4, 100, 32, 32, 0.4)
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=plan.to_token_mask()[None])
    assert (sparse_attention(q, k, v, plan, backend="reference") - masked).abs().max() < 1e-6
    # A key bias adds to every logit of its key, inside the allowed blocks only.
    bias = torch.randn(100, generator=gen)
    scores = (q @ k.transpose(-1, -2)) * 16**-0.5 + bias
    weights = scores.masked_fill(~plan.to_token_mask()[None], float("-inf")).softmax(-1)
    out = sparse_attention(q, k, v, plan, backend="reference", key_bias=bias)
    assert (out - weights @ v).abs().max() < 1e-5
    for backend in ("reference", "torch", "auto"):
        dense = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(1, 1, 1, -1))
        assert (sparse_attention(q, k, v, full, backend=backend, key_bias=bias) - dense).abs().max() < 1e-5


def test_layout_plan_with_gqa_and_shared_plan():
    layout = TokenLayout(frames=3, height=6, width=10, text_suffix=13, order="hilbert")
    gen = torch.Generator().manual_seed(1)
    q, k, v = _qkv(gen, 1, 6, 2, layout.num_tokens, 32, torch.float32)
    for patterns in (
        Diagonal(radius=1, temporal_radius=1) | Stripe(frames=(0,)),
        [Diagonal(radius=h) for h in range(6)],
    ):
        plan = build_plan(layout, patterns, block_size=16)
        out = sparse_attention(q, k, v, plan, backend="torch")
        assert (out - sparse_attention(q, k, v, plan, backend="reference")).abs().max() < 1e-4


def test_skipped_heads_reuse_previous_output():
    layout = TokenLayout(height=8, width=8)
    plan = build_plan(layout, [Diagonal(radius=1), Skip(), Full()], block_size=16)
    gen = torch.Generator().manual_seed(2)
    q, k, v = _qkv(gen, 1, 3, 3, 64, 16, torch.float32)
    previous = torch.randn(q.shape, generator=gen)
    with pytest.raises(ValueError, match=r"skips heads \[1\]; pass reuse="):
        sparse_attention(q, k, v, plan)
    out = sparse_attention(q, k, v, plan, reuse=previous)
    assert torch.equal(out[:, 1], previous[:, 1])
    assert (out[:, 2] - F.scaled_dot_product_attention(q, k, v)[:, 2]).abs().max() < 1e-5


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize(
    "patterns",
    [
        [Full(), Diagonal(radius=1), Skip(), Full()],  # full heads through SDPA, the rest through the kernel
        [Full(), Skip(), Full(), Skip()],  # nothing left for the kernel
        [Diagonal(radius=1), Full(), Full(), Full()],
    ],
)
def test_auto_runs_full_heads_through_sdpa_and_matches_reference(patterns, kv_heads):
    layout = TokenLayout(frames=2, height=5, width=7, text_suffix=3)
    plan = build_plan(layout, patterns, block_size=16)
    gen = torch.Generator().manual_seed(3)
    q, k, v = _qkv(gen, 2, 4, kv_heads, layout.num_tokens, 16, torch.float32)
    previous = torch.randn(q.shape, generator=gen)
    bias = torch.randn(layout.num_tokens, generator=gen)
    out = sparse_attention(q, k, v, plan, backend="auto", reuse=previous, key_bias=bias)
    expected = sparse_attention(q, k, v, plan, backend="reference", reuse=previous, key_bias=bias)
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n", "heads", "kv_heads", "dtype"),
    [(200, 4, 4, torch.float32), (130, 4, 2, torch.float32), (256, 2, 2, torch.bfloat16)],
)
def test_flex_backend_matches_reference(n, heads, kv_heads, dtype):
    gen = torch.Generator().manual_seed(n)
    plan = _random_plan(gen, heads, n, 32, 32, 0.3)
    q, k, v = _qkv(gen, 1, heads, kv_heads, n, 16, dtype)
    for bias in (None, torch.randn(n, generator=gen).to(dtype)):
        out = sparse_attention(q, k, v, plan, backend="flex", key_bias=bias)
        golden = _golden(q, k, v, plan, bias)
        assert (out.double() - golden).abs().max() <= TOLERANCE[dtype]


def test_bad_inputs_raise_clear_errors():
    plan = BlockPlan.from_block_mask(torch.ones(2, 2, 2, dtype=torch.bool), 8)
    q = torch.randn(1, 2, 16, 8)
    with pytest.raises(ValueError, match=r"\[batch, heads, tokens, head_dim\]"):
        sparse_attention(q[0], q[0], q[0], plan)
    with pytest.raises(ValueError, match="plan was built for"):
        sparse_attention(q[:, :, :10], q[:, :, :10], q[:, :, :10], plan)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        sparse_attention(torch.randn(1, 3, 16, 8), q, q, plan)
    with pytest.raises(ValueError, match="plan has 2 heads but q has 4"):
        sparse_attention(torch.randn(1, 4, 16, 8), torch.randn(1, 4, 16, 8), torch.randn(1, 4, 16, 8), plan)
    with pytest.raises(ValueError, match=r"key_bias must have shape \(16,\)"):
        sparse_attention(q, q, q, plan, key_bias=torch.zeros(15))
    with pytest.raises(ValueError, match="share one dtype"):
        sparse_attention(q, q.half(), q, plan)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        sparse_attention(q, q, q, plan, backend="fast")
    with pytest.raises(RuntimeError, match="runs on"):
        resolve_backend("flex", torch.device("meta"))


def test_a_partial_last_query_block_alone_in_its_chunk_computes_only_its_rows():
    """The last query block (4 of 16 rows valid) lists every KV block, so it fills a chunk alone and
    the kernel computes just its valid rows; the output still equals the reference."""
    gen = torch.Generator().manual_seed(3)
    n, block = 100, 16
    blocks = math.ceil(n / block)
    mask = torch.eye(blocks, dtype=torch.bool)[None].repeat(2, 1, 1)
    mask[:, -1] = True
    plan = BlockPlan.from_block_mask(mask, block, seq_len=n)
    q, k, v = _qkv(gen, 2, 2, 2, n, 16, torch.float32)
    ref = sparse_attention(q, k, v, plan, backend="reference")
    cache = {}
    out = block_sparse_attention_gather(q, k, v, plan.kv_indices, plan.kv_counts, block, block, 0.25, cache,
                                        budget=blocks)  # fmt: skip
    (schedule,) = cache.values()
    assert [c.q_len for c in schedule.chunks[:2]] == [4, 4]  # the two heads' last blocks, one chunk each
    assert (out - ref).abs().max() <= TOLERANCE[torch.float32]


def test_two_gather_workers_match_the_reference_and_leave_the_thread_count_as_it_was():
    """Each CPU worker runs its chunks on one intra-op thread; torch's process-wide count (which
    threads started later inherit) is put back afterwards."""
    gen = torch.Generator().manual_seed(5)
    plan = _random_plan(gen, 4, 300, 16, 16, 0.4)
    q, k, v = _qkv(gen, 2, 4, 2, 300, 16, torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = block_sparse_attention_gather(q, k, v, plan.kv_indices, plan.kv_counts, 16, 16, 0.25, {}, budget=8)
        seen_by_a_new_thread = []
        worker = threading.Thread(target=lambda: seen_by_a_new_thread.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 2 and seen_by_a_new_thread == [2]
    finally:
        torch.set_num_threads(threads)
    assert (out - sparse_attention(q, k, v, plan, backend="reference")).abs().max() <= TOLERANCE[torch.float32]
