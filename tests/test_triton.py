"""The Triton kernel against the reference: on the CPU under the Triton interpreter (conftest sets
TRITON_INTERPRET=1 where there is no GPU; small shapes, the interpreter runs each program in
Python), and compiled on a GPU (`pytest -m gpu`) over the same shapes plus Wan 2.1's."""

import math
import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton cannot be imported here; its kernel is untested")

from sparsediff import BlockPlan, Diagonal, Skip, Stripe, TokenLayout, build_plan, sparse_attention  # noqa: E402
from sparsediff.attention import resolve_backend  # noqa: E402
from sparsediff.kernels.triton import GPU_TILES, Tile, block_sparse_attention_triton, candidate_tiles  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
CUDA = torch.cuda.is_available()
interpreted = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors need the Triton interpreter (no GPU here)"
)
on_gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]

# (n, heads, kv_heads, dim, block_q, block_kv, dtype, key bias): the interpreter runs them all; the
# GPU runs each in bf16 and fp16.
SHAPES = [
    (200, 4, 4, 32, 64, 16, torch.float32, False),  # ragged tail, small KV blocks
    (200, 4, 2, 32, 64, 16, torch.float32, True),  # GQA and key bias
    (300, 2, 1, 64, 128, 32, torch.float32, True),  # 128-query blocks
    (257, 2, 2, 128, 64, 64, torch.float32, False),  # head dim 128
    (160, 4, 2, 64, 64, 128, torch.float32, True),  # KV blocks larger than query blocks
    (200, 4, 2, 32, 64, 16, torch.float16, True),
    (300, 2, 2, 64, 128, 32, torch.float16, False),
    (200, 4, 2, 32, 64, 16, torch.bfloat16, True),
    (257, 2, 1, 128, 128, 64, torch.bfloat16, False),
]


def _case(seed, n, heads, kv_heads, dim, block_q, block_kv, dtype, density=0.4, batch=2, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    qb, kb = math.ceil(n / block_q), math.ceil(n / block_kv)
    mask = torch.rand(heads, qb, kb, generator=gen) < density
    mask[..., 0] |= ~mask.any(-1)
    plan = BlockPlan.from_block_mask(mask, (block_q, block_kv), seq_len=n).to(device)
    q = torch.randn(batch, heads, n, dim, generator=gen).to(device, dtype)
    k, v = (torch.randn(batch, kv_heads, n, dim, generator=gen).to(device, dtype) for _ in range(2))
    bias = torch.randn(n, generator=gen).to(device, dtype)
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


@interpreted
@pytest.mark.parametrize(("n", "heads", "kv_heads", "dim", "block_q", "block_kv", "dtype", "bias"), SHAPES)
def test_triton_matches_reference(n, heads, kv_heads, dim, block_q, block_kv, dtype, bias):
    plan, q, k, v, key_bias = _case(n + heads + dim, n, heads, kv_heads, dim, block_q, block_kv, dtype)
    key_bias = key_bias if bias else None
    _check(sparse_attention(q, k, v, plan, backend="triton", key_bias=key_bias), q, k, v, plan, key_bias)


@interpreted
@pytest.mark.parametrize("seed", range(4))
def test_triton_on_random_plans_of_every_density(seed):
    gen = torch.Generator().manual_seed(seed)
    density = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
    n = int(torch.randint(1, 300, (1,), generator=gen))
    plan, q, k, v, bias = _case(seed, n, 2, 1, 32, 64, 16, torch.float32, density=density, batch=1)
    _check(sparse_attention(q, k, v, plan, backend="triton", key_bias=bias), q, k, v, plan, bias)


@interpreted
def test_triton_serves_a_searched_plan_with_skipped_and_full_heads():
    layout = TokenLayout(frames=2, height=8, width=8, text_prefix=8)
    plan = build_plan(layout, [Diagonal(radius=1), Diagonal(radius=1) | Stripe(frames=(0,)), Skip()], block_size=64)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, layout.num_tokens, 32, generator=gen) for _ in range(3))
    reuse = torch.randn(1, 3, layout.num_tokens, 32, generator=gen)
    out = sparse_attention(q, k, v, plan, backend="triton", reuse=reuse)
    ref = sparse_attention(q, k, v, plan, backend="reference", reuse=reuse)
    assert (out - ref).abs().max() <= 1e-4 and torch.equal(out[:, 2], reuse[:, 2])


@interpreted
def test_rows_without_blocks_are_zero_and_bad_shapes_are_refused():
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
    assert resolve_backend("auto", torch.device("cuda"), (128, 64, 64)).name == "triton"
    # PixArt's head dim 72 and blocks that are not powers of two go to FlexAttention on a GPU
    assert resolve_backend("auto", torch.device("cuda"), (72, 64, 64)).name == "flex"
    assert resolve_backend("auto", torch.device("cuda"), (64, 48, 48)).name == "flex"
    assert resolve_backend("auto", torch.device("cpu")).name == "torch"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="only under the Triton interpreter"):
        resolve_backend("triton", torch.device("cpu"))


@interpreted
@pytest.mark.parametrize(("block_q", "block_kv", "dim"), [(128, 128, 64), (64, 128, 32), (128, 64, 256)])
def test_every_tile_the_autotuner_may_pick_matches_the_reference(block_q, block_kv, dim):
    """Tiles split the plan's blocks (two 64-row tiles in a 128-query block, four 32-key steps in a
    128-key block, some of them past the sequence's end); each must give the reference's answer."""
    n = 300
    plan, q, k, v, bias = _case(dim, n, 2, 1, dim, block_q, block_kv, torch.float32, batch=1)
    ref = sparse_attention(q, k, v, plan, backend="reference", key_bias=bias)
    tiles = candidate_tiles(block_q, block_kv, dim)
    assert len(tiles) >= 2 and all(block_q % t.block_m == 0 and block_kv % t.block_n == 0 for t in tiles)
    for tile in tiles:
        out = block_sparse_attention_triton(q, k, v, plan.kv_indices, plan.kv_counts, block_q, block_kv,
                                            dim**-0.5, key_bias=bias, tile=tile)  # fmt: skip
        assert (out - ref).abs().max() <= 1e-4, tile


def test_tiles_fit_the_plan_and_head_dim_256_keeps_kv_tiles_small():
    launches = {(4, 3), (8, 3), (4, 2), (8, 2)}
    assert {t.fitted(16, 16, 64) for t in GPU_TILES} == {Tile(16, 16, w, s) for w, s in launches}
    assert all(t.block_n <= 64 for t in candidate_tiles(128, 128, 256))
    assert Tile(128, 128, 8, 3) in candidate_tiles(128, 128, 64)  # 128-query tiles where the plan allows


GPU_SHAPES = [s for s in SHAPES if s[6] == torch.float32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "heads", "kv_heads", "dim", "block_q", "block_kv", "_", "bias"), GPU_SHAPES)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_triton_on_the_gpu_matches_the_float64_reference(n, heads, kv_heads, dim, block_q, block_kv, _, bias, dtype):
    plan, q, k, v, key_bias = _case(n + dim, n, heads, kv_heads, dim, block_q, block_kv, dtype, device="cuda")
    key_bias = key_bias if bias else None
    _check(sparse_attention(q, k, v, plan, backend="triton", key_bias=key_bias), q, k, v, plan, key_bias)


def _reference_rows(q, k, v, plan, query_blocks):
    """Float64 attention of a few query blocks over their kept keys: the reference's definition,
    without the dense [N, N] mask that Wan's lengths would need (tens of GB)."""
    rows, outs = [], []
    for head in range(q.shape[1]):
        for qb in query_blocks:
            kept = plan.kv_indices[head, qb, : plan.kv_counts[head, qb]].long()
            cols = (kept[:, None] * plan.block_kv + torch.arange(plan.block_kv, device=q.device)).flatten()
            cols = cols[cols < k.shape[2]]
            lo, hi = qb * plan.block_q, min((qb + 1) * plan.block_q, q.shape[2])
            scores = q[0, head, lo:hi].double() @ k[0, head, cols].double().T / q.shape[-1] ** 0.5
            outs.append(torch.softmax(scores, -1) @ v[0, head, cols].double())
            rows.append((head, lo, hi))
    return rows, outs


@pytest.mark.parametrize(("tokens", "heads"), [(33_272, 12), (76_112, 40)], ids=["wan2.1-480p", "wan2.1-720p"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_triton_at_wan_shapes_matches_the_float64_reference(tokens, heads, dtype):
    blocks = math.ceil(tokens / 128)
    mask = torch.rand(heads, blocks, blocks, generator=torch.Generator().manual_seed(heads)) < 0.1
    mask[..., 0] = True
    plan = BlockPlan.from_block_mask(mask, 128, seq_len=tokens).to("cuda")
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, 128, generator=gen, device="cuda", dtype=dtype) for _ in range(3))
    out = sparse_attention(q, k, v, plan, backend="triton")
    last = math.ceil(tokens / 128) - 1
    for (head, lo, hi), ref in zip(*_reference_rows(q, k, v, plan, [0, 7, last // 2, last]), strict=True):
        assert (out[0, head, lo:hi].double() - ref).abs().max() <= TOLERANCE[dtype]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_triton_launches_on_the_inputs_device_not_the_current_one():
    plan, q, k, v, _ = _case(0, 256, 2, 2, 64, 64, 64, torch.bfloat16, batch=1, device="cuda:1")
    with torch.cuda.device(0):
        out = sparse_attention(q, k, v, plan, backend="triton")
    _check(out, q, k, v, plan, None)
