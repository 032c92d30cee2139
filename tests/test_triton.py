"""The Triton kernel against the reference, on the CPU under the Triton interpreter (conftest sets
TRITON_INTERPRET=1). Small shapes: the interpreter runs each program in Python."""

import math

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton cannot be imported here; its kernel is untested")

from sparsediff import BlockPlan, Diagonal, Skip, Stripe, TokenLayout, build_plan, sparse_attention  # noqa: E402
from sparsediff.attention import resolve_backend  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def _case(seed, n, heads, kv_heads, dim, block_q, block_kv, dtype, density=0.4, batch=2):
    gen = torch.Generator().manual_seed(seed)
    qb, kb = math.ceil(n / block_q), math.ceil(n / block_kv)
    mask = torch.rand(heads, qb, kb, generator=gen) < density
    mask[..., 0] |= ~mask.any(-1)
    plan = BlockPlan.from_block_mask(mask, (block_q, block_kv), seq_len=n)
    q = torch.randn(batch, heads, n, dim, generator=gen).to(dtype)
    k, v = (torch.randn(batch, kv_heads, n, dim, generator=gen).to(dtype) for _ in range(2))
    bias = torch.randn(n, generator=gen).to(dtype)
    return plan, q, k, v, bias


def _check(out, q, k, v, plan, bias):
    """fp32 against the reference; half dtypes against float64, within 2e-2."""
    assert out.dtype == q.dtype and out.shape == q.shape
    if q.dtype == torch.float32:
        ref = sparse_attention(q, k, v, plan, backend="reference", key_bias=bias)
    else:
        ref = sparse_attention(q.double(), k.double(), v.double(), plan, backend="reference",
                               key_bias=None if bias is None else bias.double())  # fmt: skip
    assert (out.double() - ref.double()).abs().max() <= TOLERANCE[q.dtype]


@pytest.mark.parametrize(
    ("n", "heads", "kv_heads", "dim", "block_q", "block_kv", "dtype", "bias"),
    [
        (200, 4, 4, 32, 64, 16, torch.float32, False),  # ragged tail, small KV blocks
        (200, 4, 2, 32, 64, 16, torch.float32, True),  # GQA and key bias
        (300, 2, 1, 64, 128, 32, torch.float32, True),  # 128-query blocks
        (257, 2, 2, 128, 64, 64, torch.float32, False),  # head dim 128
        (160, 4, 2, 64, 64, 128, torch.float32, True),  # KV blocks larger than query blocks
        (200, 4, 2, 32, 64, 16, torch.float16, True),
        (300, 2, 2, 64, 128, 32, torch.float16, False),
        (200, 4, 2, 32, 64, 16, torch.bfloat16, True),
        (257, 2, 1, 128, 128, 64, torch.bfloat16, False),
    ],
)
def test_triton_matches_reference(n, heads, kv_heads, dim, block_q, block_kv, dtype, bias):
    plan, q, k, v, key_bias = _case(n + heads + dim, n, heads, kv_heads, dim, block_q, block_kv, dtype)
    key_bias = key_bias if bias else None
    _check(sparse_attention(q, k, v, plan, backend="triton", key_bias=key_bias), q, k, v, plan, key_bias)


@pytest.mark.parametrize("seed", range(4))
def test_triton_on_random_plans_of_every_density(seed):
    gen = torch.Generator().manual_seed(seed)
    density = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
    n = int(torch.randint(1, 300, (1,), generator=gen))
    plan, q, k, v, bias = _case(seed, n, 2, 1, 32, 64, 16, torch.float32, density=density, batch=1)
    _check(sparse_attention(q, k, v, plan, backend="triton", key_bias=bias), q, k, v, plan, bias)


def test_triton_serves_a_searched_plan_with_skipped_and_full_heads():
    layout = TokenLayout(frames=2, height=8, width=8, text_prefix=8)
    plan = build_plan(layout, [Diagonal(radius=1), Diagonal(radius=1) | Stripe(frames=(0,)), Skip()], block_size=64)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, layout.num_tokens, 32, generator=gen) for _ in range(3))
    reuse = torch.randn(1, 3, layout.num_tokens, 32, generator=gen)
    out = sparse_attention(q, k, v, plan, backend="triton", reuse=reuse)
    ref = sparse_attention(q, k, v, plan, backend="reference", reuse=reuse)
    assert (out - ref).abs().max() <= 1e-4 and torch.equal(out[:, 2], reuse[:, 2])


def test_rows_without_blocks_are_zero_and_bad_shapes_are_refused():
    from sparsediff.kernels.triton import block_sparse_attention_triton

    indices = torch.zeros(1, 2, 1, dtype=torch.int32)
    counts = torch.tensor([[1, 0]], dtype=torch.int32)  # the second query block keeps nothing
    q, k, v = (torch.randn(1, 1, 32, 16) for _ in range(3))
    out = block_sparse_attention_triton(q, k, v, indices, counts, 16, 16, 0.25)
    assert torch.equal(out[:, :, 16:], torch.zeros_like(out[:, :, 16:]))
    plan = BlockPlan.from_block_mask(torch.ones(1, 2, 2, dtype=torch.bool), 16, seq_len=32)
    with pytest.raises(ValueError, match="head dims"):
        sparse_attention(*(torch.randn(1, 1, 32, 24) for _ in range(3)), plan, backend="triton")
    odd = BlockPlan.from_block_mask(torch.ones(1, 1, 1, dtype=torch.bool), 48, seq_len=32)
    with pytest.raises(ValueError, match="power-of-two blocks"):
        sparse_attention(q, k, v, odd, backend="triton")


def test_auto_prefers_triton_on_cuda_and_the_cpu_needs_the_interpreter(monkeypatch):
    assert resolve_backend("auto", torch.device("cuda")).name == "triton"
    assert resolve_backend("auto", torch.device("cpu")).name == "torch"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="only under the Triton interpreter"):
        resolve_backend("triton", torch.device("cpu"))
