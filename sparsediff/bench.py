"""Benchmarks: dense SDPA vs sparse attention on the same inputs, in one process.

Speed is reported as ratios measured side by side (absolute times on a shared 2-core machine
swing by 50%), with the output's error against the reference next to it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsediff.attention import resolve_backend, sparse_attention
from sparsediff.config import SparseConfig
from sparsediff.memory import PeakMemory
from sparsediff.patterns import Skip
from sparsediff.plan import BlockPlan

# The reference materializes N x N scores per head; beyond this it is too slow to check.
REFERENCE_MAX_TOKENS = 16384


def synthetic_plan(seq: int, heads: int, density: float, block: int = 64, seed: int = 0) -> BlockPlan:
    """A realistic plan: per head a diagonal band plus a few stripe columns, at `density`.

    Heads differ (stripe count and positions, band width) as searched video DiT heads do.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    gen = torch.Generator().manual_seed(seed)
    blocks = math.ceil(seq / block)
    target = max(1, round(density * blocks))  # KV blocks per query row
    idx = torch.arange(blocks)
    masks = []
    for _ in range(heads):
        stripes = int(torch.randint(0, max(1, target // 3) + 1, (1,), generator=gen))
        columns = torch.randperm(blocks, generator=gen)[:stripes]
        mask = torch.zeros(blocks, blocks, dtype=torch.bool)
        mask[:, columns] = True
        # Widen the band until the head reaches the target density.
        for half_width in range(blocks):
            band = (idx[:, None] - idx[None, :]).abs() <= half_width
            if (mask | band).sum() >= target * blocks:
                break
        masks.append(mask | band)
    return BlockPlan.from_block_mask(torch.stack(masks), block, seq_len=seq)


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class AttentionBench:
    seq: int
    heads: int
    head_dim: int
    dtype: str
    backend: str
    density: float
    dense_ms: float
    sparse_ms: float
    speedup: float
    first_call_ms: float
    max_abs_err: float | None
    threads: int
    repeat: int


def bench_attention(
    seq: int,
    heads: int,
    head_dim: int,
    densities: Sequence[float],
    backends: Sequence[str] = ("auto",),
    repeat: int = 3,
    dtype: torch.dtype = torch.float32,
    block: int = 64,
    device: str = "cpu",
    seed: int = 0,
    on_result: Callable[[AttentionBench], None] | None = None,
) -> list[AttentionBench]:
    """Time dense SDPA once and `sparse_attention` per (density, backend) on the same q, k, v (B = 1)."""
    dev = torch.device(device)
    chosen = [resolve_backend(b, dev).name for b in backends]  # fail before any timing
    gen = torch.Generator(device=dev).manual_seed(seed)
    q, k, v = (torch.randn(1, heads, seq, head_dim, generator=gen, device=dev, dtype=dtype) for _ in range(3))

    def timed(fn: Callable[[], object], n: int) -> float:
        def run() -> None:
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        return median_seconds(run, n)

    dense_s = timed(lambda: F.scaled_dot_product_attention(q, k, v), repeat)
    results = []
    for density in densities:
        plan = synthetic_plan(seq, heads, density, block, seed)
        ref = _reference_by_heads(q, k, v, plan) if seq <= REFERENCE_MAX_TOKENS else None
        for backend in chosen:
            plan.kernel_cache.clear()  # each backend pays its own one-off preparation

            def sparse(backend: str = backend, plan: BlockPlan = plan) -> torch.Tensor:
                return sparse_attention(q, k, v, plan, backend=backend)

            first_s = timed(sparse, 1)  # compile (flex) and index preparation, paid once per shape
            sparse_s = timed(sparse, repeat)
            err = None if ref is None else float((sparse().float() - ref.float()).abs().max())
            result = AttentionBench(
                seq=seq,
                heads=heads,
                head_dim=head_dim,
                dtype=str(dtype).removeprefix("torch."),
                backend=backend,
                density=round(plan.density, 4),
                dense_ms=round(dense_s * 1e3, 2),
                sparse_ms=round(sparse_s * 1e3, 2),
                speedup=round(dense_s / sparse_s, 3),
                first_call_ms=round(first_s * 1e3, 1),
                max_abs_err=err,
                threads=torch.get_num_threads(),
                repeat=repeat,
            )
            if on_result:
                on_result(result)
            results.append(result)
    return results


def _reference_by_heads(q, k, v, plan: BlockPlan) -> torch.Tensor:
    """The reference one head at a time, so N = 16k fits in memory (N^2 mask per head)."""
    outs = []
    for h in range(q.shape[1]):
        sub = BlockPlan(
            plan.kv_indices[h : h + 1],
            plan.kv_counts[h : h + 1],
            plan.block_q,
            plan.block_kv,
            plan.seq_len_q,
            plan.seq_len_kv,
            plan.skipped_heads[h : h + 1],
            ((0,),),
        )
        outs.append(sparse_attention(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], sub, backend="reference"))
    return torch.cat(outs, 1)


# Latent grids giving >= 8k visual tokens per attention call after each family's patchify.
LONG_GRIDS = {
    "wan": (8, 64, 64),
    "cogvideox": (8, 64, 64),
    "hunyuanvideo": (8, 64, 64),
    "ltx": (8, 32, 32),
    "flux": (1, 96, 96),
    "sd3": (1, 192, 192),
    "pixart": (1, 192, 192),
    "qwenimage": (1, 192, 192),
}
# Config changes so the tiny models accept the long grids (position tables sized for them).
LONG_CONFIG = {"sd3": {"sample_size": 192, "pos_embed_max_size": 96}}


@dataclass
class TransformerBench:
    family: str
    tokens: int
    native_ms: float
    dense_preset_ms: float
    overhead_pct: float
    sparse_ms: float
    speedup: float
    density: float
    rel_err: float  # |sparse - native| / |native| of the transformer output
    peak_mem_dense_mb: float | None  # one native forward's own peak (see peak_mem_source)
    peak_mem_sparse_mb: float | None  # one sparse forward's, plans already built
    peak_mem_source: str


@torch.no_grad()
def bench_transformer(
    family: str, density: float = 0.25, grid: tuple[int, int, int] | None = None, repeat: int = 3, block: int = 64
) -> TransformerBench:
    """One tiny transformer forward: native vs the `dense` preset (overhead) vs `local` (speedup)."""
    import diffusers

    import sparsediff
    from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

    if family not in TINY_TRANSFORMERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(TINY_TRANSFORMERS)}")
    spec = TINY_TRANSFORMERS[family]
    torch.manual_seed(0)
    model = getattr(diffusers, spec.model_class)(**{**spec.config, **LONG_CONFIG.get(family, {})}).eval()
    frames, height, width = grid or LONG_GRIDS[family]
    inputs = spec.make_inputs(1, frames, height, width, 8, 900, torch.Generator().manual_seed(0))

    def forward() -> torch.Tensor:
        return model(**inputs, return_dict=False)[0]

    native = forward()  # warm-up
    native_s = median_seconds(forward, repeat)
    with PeakMemory() as dense_peak:
        forward()
    with sparsediff.sparse(model, "dense", block_size=block):
        forward()
        dense_s = median_seconds(forward, repeat)
    with sparsediff.sparse(model, "local", density=density, block_size=block) as state:
        out = forward()  # builds plans
        sparse_s = median_seconds(forward, repeat)
        with PeakMemory() as sparse_peak:
            forward()
        plans = list(state.plans.values())
        tokens = plans[0].seq_len_q
    return TransformerBench(
        family=family,
        tokens=tokens,
        native_ms=round(native_s * 1e3, 1),
        dense_preset_ms=round(dense_s * 1e3, 1),
        overhead_pct=round(100 * (dense_s / native_s - 1), 2),
        sparse_ms=round(sparse_s * 1e3, 1),
        speedup=round(native_s / sparse_s, 3),
        density=round(statistics.mean(p.density for p in plans), 4),
        rel_err=round(float((out - native).norm() / native.norm()), 4),
        peak_mem_dense_mb=dense_peak.mb,
        peak_mem_sparse_mb=sparse_peak.mb,
        peak_mem_source=sparse_peak.source,
    )


@dataclass
class DllmBench:
    context_tokens: int
    steps: int
    gen_length: int
    dense_s: float
    sparse_s: float
    speedup: float
    density: float
    pattern_computations: int
    token_agreement: float  # share of answer tokens sparse decoded as dense did
    attention_flop_share: float  # of a dense step's FLOPs
    model: str
    dense_peak_mb: float | None = None  # of the timed decode (`PeakMemory`: on the CPU, resident set)
    sparse_peak_mb: float | None = None
    random_weights: bool = True


def bench_dllm(
    context: int, steps: int, gen_length: int = 64, hidden: int = 512, heads: int = 8, layers: int = 1,
    keep_ratio: float = 0.3, dense_fraction: float = 0.2, seed: int = 0, progress: bool = False, mass: str = "exact",
) -> DllmBench:  # fmt: skip
    """Masked-diffusion decoding of `gen_length` tokens after a random prompt: dense vs SparseD.

    The default width makes attention take about the share of a step at 8k tokens that it takes in
    LLaDA-8B at 64k (the SparseD paper's setting): attention / linear FLOPs per token is
    N / (5 * hidden) here and about N / (6.5 * hidden) in LLaDA-8B.
    """
    import sparsediff
    from sparsediff.pipelines.dllm import masked_diffusion_generate, tiny_dlm

    if context <= gen_length:
        raise ValueError(f"--context {context} must exceed the answer length {gen_length}")
    vocab = 1000
    model = tiny_dlm(vocab, hidden=hidden, layers=layers, heads=heads, kv_heads=heads, context=max(context, 4096))
    prompt = [torch.randint(4, vocab, (context - gen_length,), generator=torch.Generator().manual_seed(seed)).tolist()]

    def decode(steps: int, progress: bool = progress):
        return masked_diffusion_generate(
            model, prompt, mask_id=1, gen_length=gen_length, steps=steps, progress=progress
        )

    # Each side is warmed up by a short decode of the same shapes, untimed: SparseD's first sparse
    # calls also time dense attention once per kind of call (the never-slower check), a cost paid
    # once per process, not per decode.
    warm_up_steps = min(steps, 8)
    decode(warm_up_steps, progress=False)
    with PeakMemory() as dense_peak:
        start = time.perf_counter()
        dense = decode(steps)
        dense_s = time.perf_counter() - start
    schedule = {"dense_fraction": dense_fraction}
    with sparsediff.sparse(model, "sparsed", keep_ratio=keep_ratio, schedule=schedule, mass=mass) as state:
        decode(warm_up_steps, progress=False)
        warm_up_patterns = state.pattern_computations
        with PeakMemory() as sparse_peak:
            start = time.perf_counter()
            sparse = decode(steps)
            sparse_s = time.perf_counter() - start
    attention = 4 * context * hidden
    linear = 2 * (4 * hidden * hidden + 3 * hidden * 2 * hidden)
    return DllmBench(
        context_tokens=context,
        steps=steps,
        gen_length=gen_length,
        dense_s=round(dense_s, 3),
        sparse_s=round(sparse_s, 3),
        speedup=round(dense_s / sparse_s, 3),
        density=round(state.sparse_density(), 4),  # of SparseD's plans, after the switch
        pattern_computations=state.pattern_computations - warm_up_patterns,
        token_agreement=float((dense[:, -gen_length:] == sparse[:, -gen_length:]).float().mean()),
        attention_flop_share=round(attention / (attention + linear), 3),
        model=f"bidirectional Llama, {layers} layer(s), {heads} heads x {hidden // heads}, random weights",
        dense_peak_mb=None if dense_peak.mb is None else round(dense_peak.mb),
        sparse_peak_mb=None if sparse_peak.mb is None else round(sparse_peak.mb),
    )


@dataclass
class PermutationBench:
    tokens: int
    order: str
    method_ms: float  # one `hilbert` call, permutation included
    per_call_permute_ms: float  # q, k, v into the order and the output back, inside that call
    per_forward_permute_ms: float  # hidden states and rotary tables in, output back: once per forward
    attention_calls_per_forward: int
    per_call_share: float  # of the method's time
    saving_per_forward_ms: float  # what permuting once per forward would save


def bench_permutation(
    frames: int, height: int, width: int, text: int = 8, batch: int = 2, heads: int = 4, head_dim: int = 32,
    layers: int = 4, density: float = 0.25, order: str = "hilbert", repeat: int = 5,
) -> PermutationBench:  # fmt: skip
    """What the Hilbert permutation costs per attention call, and what once per forward would cost.

    Per call, q, k, v go into the order and the output comes back (4 gathers of [B, H, N, D]).
    Once per forward, the hidden states [B, N, H * D] go in after the patch embedding, the rotary
    tables [N, D] alike, and the output comes back before unpatchifying; every attention call then
    runs on tokens already in order. The difference is the most a per-forward version can save.
    """
    from sparsediff.layout import TokenLayout
    from sparsediff.methods.hilbert import local_global_attention

    layout = TokenLayout(frames=frames, height=height, width=width, text_prefix=text)
    ordered = layout.to_order(order)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, layout.num_tokens, head_dim, generator=gen) for _ in range(3))
    hidden = torch.randn(batch, layout.num_tokens, heads * head_dim, generator=gen)
    rotary = torch.randn(layout.num_tokens, head_dim, generator=gen)
    scale = head_dim**-0.5

    def method() -> torch.Tensor:
        return local_global_attention(q, k, v, layout, density, 64, "auto", scale, order=order)[0]

    def per_call() -> torch.Tensor:
        moved = [ordered.permute(t) for t in (q, k, v)]
        return ordered.unpermute(moved[0])

    def per_forward() -> torch.Tensor:
        for _ in ("cos", "sin"):
            ordered.permute(rotary, dim=0)
        return ordered.unpermute(ordered.permute(hidden, dim=1), dim=1)

    for fn in (method, per_call, per_forward):
        fn()  # warm-up
    method_s, call_s, forward_s = (median_seconds(fn, repeat) for fn in (method, per_call, per_forward))
    return PermutationBench(
        tokens=layout.num_tokens,
        order=order,
        method_ms=round(method_s * 1e3, 2),
        per_call_permute_ms=round(call_s * 1e3, 3),
        per_forward_permute_ms=round(forward_s * 1e3, 3),
        attention_calls_per_forward=layers,
        per_call_share=round(call_s / method_s, 4),
        saving_per_forward_ms=round((layers * call_s - forward_s) * 1e3, 3),
    )


@dataclass(frozen=True)
class ModelShape:
    """A published model at one generation size, as memory sees it."""

    name: str
    description: str
    attention_layers: int  # self/joint attention calls per transformer forward
    heads: int
    head_dim: int
    tokens: int  # per attention call
    params: float  # parameters
    branches: int  # CFG branches run as separate calls (each keeps its own outputs)
    batch: int = 1  # per call
    itemsize: int = 2  # bf16


SHAPES = {
    s.name: s
    for s in (
        ModelShape("wan2.1-14b-720p", "Wan2.1-T2V-14B, 81 frames at 720x1280: 21 x 45 x 80 latent tokens, "
                   "CFG as 2 calls", 40, 40, 128, 21 * 45 * 80, 14e9, 2),
        ModelShape("wan2.1-1.3b-480p", "Wan2.1-T2V-1.3B, 81 frames at 480x832: 21 x 30 x 52 latent tokens, "
                   "CFG as 2 calls", 30, 12, 128, 21 * 30 * 52, 1.3e9, 2),
        ModelShape("hunyuan-720p", "HunyuanVideo, 129 frames at 720x1280: 33 x 45 x 80 latent + 256 text tokens, "
                   "20 double + 40 single blocks, guidance embedded (1 call)", 60, 24, 128, 33 * 45 * 80 + 256, 13e9,
                   1),
    )
}  # fmt: skip


@dataclass
class MemoryBench:
    shape: str
    description: str
    skipped_head_share: float  # of the config's heads
    skipped_heads: int  # at this shape: share x layers x heads
    extra_kept_bytes: int  # what skipped heads keep between steps (all branches)
    extra_kept_mb: float
    one_head_mb: float  # one skipped head's kept output, per branch
    kernel_workspace_mb: float  # the gather kernel's per-chunk scores and gathered K/V
    weights_mb: float
    attention_activations_mb: float  # q, k, v and output of one attention call


def bench_memory(shape: ModelShape | str, config: SparseConfig | str) -> MemoryBench:
    """On paper: the extra memory a config's skipped heads keep at a published model's shape,
    beside its kernels' workspace, the model's weights and one attention call's activations. The
    config's share of skipped heads carries over to the model's layers and heads."""
    from sparsediff.kernels.gather import CHUNK_BLOCK_PAIRS
    from sparsediff.methods.runner import kept_bytes_of

    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
        shape = SHAPES[shape]
    config = SparseConfig.load(config)
    per_head = [p for table in config.head_tables() for patterns in table.values() for p in patterns]
    per_head = per_head or [config.pattern]
    share = sum(isinstance(p, Skip) for p in per_head) / len(per_head) if config.method == "pattern" else 0.0
    skipped = round(share * shape.attention_layers * shape.heads)
    mb = 2**20
    block_q, block_kv = config.plan_blocks
    workspace = CHUNK_BLOCK_PAIRS * (block_q * block_kv * 4 + 2 * block_kv * shape.head_dim * shape.itemsize)
    activations = 4 * shape.batch * shape.tokens * shape.heads * shape.head_dim * shape.itemsize
    kept = kept_bytes_of(skipped, shape.batch, shape.tokens, shape.head_dim, shape.itemsize, shape.branches)
    return MemoryBench(
        shape=shape.name,
        description=shape.description,
        skipped_head_share=round(share, 4),
        skipped_heads=skipped,
        extra_kept_bytes=kept,
        extra_kept_mb=round(kept / mb, 1),
        one_head_mb=round(kept_bytes_of(1, shape.batch, shape.tokens, shape.head_dim, shape.itemsize) / mb, 2),
        kernel_workspace_mb=round(workspace / mb, 2),
        weights_mb=round(shape.params * shape.itemsize / mb, 1),
        attention_activations_mb=round(activations / mb, 1),
    )


@dataclass(frozen=True)
class FullShape:
    """A published transformer at its generation size, for GPU timing with random weights."""

    name: str
    model_class: str
    config: dict  # over diffusers' defaults (Wan's and HunyuanVideo's defaults are the 14B and 13B models)
    latent: tuple[int, int, int]  # latent frames, height, width
    text_tokens: int
    description: str
    block_counts: tuple[str, ...]  # config keys counting blocks: 1 each when scaled down


FULL_SHAPES = {
    s.name: s
    for s in (
        FullShape("wan2.1-480p", "WanTransformer3DModel",
                  {"num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}, (21, 60, 104), 512,
                  "Wan2.1-T2V-1.3B, 81 frames at 480x832", ("num_layers",)),
        FullShape("wan2.1-720p", "WanTransformer3DModel", {}, (21, 90, 160), 512,
                  "Wan2.1-T2V-14B, 81 frames at 720x1280", ("num_layers",)),
        FullShape("hunyuan-720p", "HunyuanVideoTransformer3DModel", {}, (33, 90, 160), 256,
                  "HunyuanVideo, 129 frames at 720x1280", ("num_layers", "num_single_layers", "num_refiner_layers")),
        FullShape("cogvideox-5b", "CogVideoXTransformer3DModel",
                  {"num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True},
                  (13, 60, 90), 226, "CogVideoX-5B, 49 frames at 480x720", ("num_layers",)),
    )
}  # fmt: skip


def full_shape_model(shape: FullShape, scale: int = 1, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model with random weights, built on `device` in `dtype`, and its forward inputs). `scale` > 1
    keeps one block of each kind and divides the latent by `scale` (a CPU-sized stand-in)."""
    import diffusers

    config = dict(shape.config) | ({key: 1 for key in shape.block_counts} if scale > 1 else {})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in `dtype` on `device`, never in fp32 on the CPU first
    try:
        with torch.device(device):
            model = getattr(diffusers, shape.model_class)(**config).eval()
    finally:
        torch.set_default_dtype(previous)
    frames, height, width = (max(2, d // scale) for d in shape.latent)
    gen = torch.Generator().manual_seed(0)
    text_dim = model.config.get("text_dim") or model.config.get("text_embed_dim")

    def randn(*size):
        return torch.randn(*size, generator=gen).to(device, dtype)

    channels_first = shape.model_class != "CogVideoXTransformer3DModel"  # CogVideoX takes (B, F, C, H, W)
    latent = (model.config.in_channels, frames) if channels_first else (frames, model.config.in_channels)
    inputs = {
        "hidden_states": randn(1, *latent, height, width),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": randn(1, shape.text_tokens, text_dim),
    }
    if shape.model_class == "HunyuanVideoTransformer3DModel":
        inputs |= {
            "encoder_attention_mask": torch.ones(1, shape.text_tokens, device=device),
            "pooled_projections": randn(1, model.config.pooled_projection_dim),
            "guidance": torch.tensor([6000.0], device=device, dtype=dtype),
        }
    return model, inputs


def full_shape_tokens(shape: FullShape, scale: int = 1) -> int:
    """Visual tokens per attention call at the shape's size (after patchify)."""
    frames, height, width = (max(2, d // scale) for d in shape.latent)
    return frames * (height // 2) * (width // 2)  # all three patch 1 x 2 x 2


@dataclass
class ShapeBench:
    shape: str
    description: str
    device: str
    scale: int
    tokens: int
    native_ms: float
    methods: list  # {method, ms, measured_ratio, attention_flop_ratio, density}


@torch.no_grad()
def bench_shape(
    name: str, methods: Sequence[str] = ("local",), device: str = "cpu", dtype: torch.dtype = torch.float32,
    scale: int = 1, repeat: int = 3,
) -> ShapeBench:  # fmt: skip
    """One forward of a published transformer with random weights at its real sequence length, per
    method: the measured speedup over native attention beside the attention FLOP ratio (1 / density)."""
    import sparsediff

    if name not in FULL_SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(FULL_SHAPES)}")
    if scale < 1:
        raise ValueError(f"--scale must be at least 1, got {scale}")
    shape = FULL_SHAPES[name]
    model, inputs = full_shape_model(shape, scale, device, dtype)

    def forward() -> None:
        model(**inputs, return_dict=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    forward()
    native_s = median_seconds(forward, repeat)
    rows = []
    for method in methods:
        with sparsediff.sparse(model, method) as state:
            forward()
            seconds = median_seconds(forward, repeat)
            density = state.density()
        rows.append({"method": method, "ms": round(seconds * 1e3, 1), "measured_ratio": round(native_s / seconds, 3),
                     "attention_flop_ratio": round(1 / density, 3) if density else None,
                     "density": None if density is None else round(density, 4)})  # fmt: skip
    return ShapeBench(name, shape.description, device, scale, full_shape_tokens(shape, scale),
                      round(native_s * 1e3, 1), rows)  # fmt: skip
