"""sparsediff.apply on tiny random-weight transformers of every family, loaded with from_pretrained."""

import json

import pytest
import torch

import sparsediff
from sparsediff import Diagonal, ModelSignature, Skip, SparseConfig, Stripe, TokenLayout
from sparsediff.integrations.diffusers import StepTracker
from sparsediff.methods.runner import Runner
from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

FAMILIES = sorted(TINY_TRANSFORMERS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each family built from its config, saved and loaded back (the real loading path)."""
    import diffusers

    loaded = {}
    for family, spec in TINY_TRANSFORMERS.items():
        folder = tmp_path_factory.mktemp(family)
        spec.build().save_pretrained(folder)
        loaded[family] = getattr(diffusers, spec.model_class).from_pretrained(folder).eval()
    return loaded


def _inputs(family, batch=1, timestep=900, seed=0, grid=(5, 16, 20)):
    spec = TINY_TRANSFORMERS[family]
    frames, height, width = grid if spec.video else (1, *grid[1:])
    return spec.make_inputs(batch, frames, height, width, 8, timestep, torch.Generator().manual_seed(seed))


@torch.no_grad()
def _run(model, inputs):
    return model(**inputs, return_dict=False)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_preset_matches_native_and_remove_restores(models, family):
    model, inputs = models[family], _inputs(family)
    native = _run(model, inputs)
    originals = dict(model.attn_processors)
    with sparsediff.sparse(model, "dense", block_size=16) as state:
        routed = _run(model, inputs)
        assert state.calls["sparse"] > 0  # attention really went through sparsediff
    assert (routed - native).abs().max() <= 1e-5
    assert all(model.attn_processors[k] is v for k, v in originals.items())
    assert torch.equal(_run(model, inputs), native)


@pytest.mark.parametrize("family", FAMILIES)
def test_window_changes_output_and_every_sparse_call_matches_reference(models, family):
    model, inputs = models[family], _inputs(family)
    native = _run(model, inputs)
    outputs = {}
    for backend in ("torch", "reference"):
        with sparsediff.sparse(model, "local", density=0.3, block_size=16, backend=backend) as state:
            outputs[backend] = _run(model, inputs)
            plans = list(state.plans.values())
        assert plans and all(p.density < 0.9 for p in plans)
    assert (outputs["torch"] - native).abs().max() > 1e-3  # sparse attention changed the result
    assert (outputs["torch"] - outputs["reference"]).abs().max() <= 1e-4


def test_a_user_wrapper_around_sdpa_still_routes_through_sparsediff(models, monkeypatch):
    """Code that rebinds `F.scaled_dot_product_attention` to a wrapper of torch's (timing, logging)
    keeps both: the wrapper runs, and its inner call is the one sparsediff serves."""
    import torch.nn.functional as F

    model, inputs = models["wan"], _inputs("wan")
    native = _run(model, inputs)
    torch_sdpa, wrapped = F.scaled_dot_product_attention, []

    def timing_wrapper(*args, **kwargs):
        wrapped.append(1)
        return torch_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", timing_wrapper)
    with sparsediff.sparse(model, "local", density=0.3, block_size=16) as state:
        out = _run(model, inputs)
    assert state.calls["sparse"] > 0 and wrapped
    assert (out - native).abs().max() > 1e-3


def test_layouts_inferred_per_family(models):
    expected = {  # (frames, height, width) after patchify of a 5 x 16 x 20 latent, text side
        "wan": ((5, 8, 10), None),
        "cogvideox": ((5, 8, 10), "prefix"),
        "hunyuanvideo": ((5, 8, 10), "suffix"),
        "ltx": ((5, 16, 20), None),
        "flux": ((1, 16, 20), "prefix"),
        "sd3": ((1, 8, 10), "suffix"),
        "pixart": ((1, 8, 10), None),
        "qwenimage": ((1, 8, 10), "prefix"),
    }
    for family, (grid, side) in expected.items():
        with sparsediff.sparse(models[family], "local", block_size=16) as state:
            _run(models[family], _inputs(family))
            layouts = {key[1] for key in state.plans}
        (layout,) = layouts
        assert (layout.frames, layout.height, layout.width) == grid, family
        assert layout.text_prefix == (8 if side == "prefix" else 0), family
        assert layout.text_suffix == (8 if side == "suffix" else 0), family


def test_plans_are_cached_and_rebuilt_for_a_new_resolution(models):
    model = models["wan"]
    with sparsediff.sparse(model, "local", block_size=16) as state:
        _run(model, _inputs("wan"))
        first = dict(state.plans)
        _run(model, _inputs("wan", timestep=800))
        assert state.plans == first  # same layout: the same plan objects
        _run(model, _inputs("wan", grid=(3, 12, 12)))
        assert len(state.plans) == 2 * len(first)


def test_step_tracker_under_cfg():
    tracker = StepTracker()
    seen = []
    for t in (1000, 1000, 750, 750, 500, 500, 1000, 750):  # CFG as two calls; then a new run
        tracker.observe(torch.tensor([float(t)]))
        seen.append((tracker.step, tracker.branch))
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (0, 0), (1, 0)]
    tracker.observe(torch.tensor([[300.0, 400.0]]))  # per-token timesteps (Wan 2.2): max is used
    assert tracker.step == 2


@pytest.mark.parametrize(("family", "batch", "calls_per_step"), [("wan", 1, 2), ("sd3", 2, 1)])
def test_schedule_switches_at_the_right_step_under_cfg(models, family, batch, calls_per_step):
    """dense_steps=2: steps 0-1 dense, then sparse; CFG as separate calls (Wan) or batched (SD3)."""
    model = models[family]
    layers = len(model.attn_processors)
    with sparsediff.sparse(model, "local", block_size=16, schedule={"dense_steps": 2}) as state:
        for step, t in enumerate((1000, 800, 600, 400)):
            before = state.calls["sparse"]
            for _ in range(calls_per_step):
                _run(model, _inputs(family, batch=batch, timestep=t))
            assert state.tracker.step == step
            sparse_calls = state.calls["sparse"] - before
            self_attention = 2 if family == "wan" else layers
            assert sparse_calls == (0 if step < 2 else self_attention * calls_per_step), step


def test_skipped_head_runs_on_its_refresh_steps_and_reuses_in_between(models):
    model = models["wan"]
    config = SparseConfig(
        method="pattern",
        pattern=Diagonal(radius=1),
        heads={"blocks.1.attn1": [Skip(every=2), Diagonal(radius=1)]},
        block_size=16,
    )
    kept = []
    with sparsediff.sparse(model, config) as state:
        for timestep in (900, 800, 700):
            _run(model, _inputs("wan", timestep=timestep))
            kept.append(state.reuse[("blocks.1.attn1", 0)])
    assert all(k.heads == (0,) and k.output.shape[1] == 1 for k in kept)  # only the skipped head is kept
    assert torch.equal(kept[1].output, kept[0].output)  # step 1: head 0 reuses step 0's output
    assert not torch.allclose(kept[2].output, kept[1].output, atol=1e-4)  # step 2: it runs again
    assert 0 < state.density() < 1


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_whose_heads_all_reuse_returns_its_last_output_whole(models, family, monkeypatch):
    """Same result as reusing per head, without running the layer's projections."""
    model = models[family]
    names = [name.removesuffix(".processor") for name in model.attn_processors]
    layer = next(name for name in names if "refiner" not in name)  # the first self or joint attention
    module = model.get_submodule(layer)
    config = SparseConfig(method="pattern", pattern=Diagonal(radius=1), block_size=16,
                          heads={layer: [Skip(every=2)] * module.heads})  # fmt: skip
    projections = []
    module.to_q.register_forward_hook(lambda *_: projections.append(1))

    def steps():
        with sparsediff.sparse(model, config) as state:
            outputs = [_run(model, _inputs(family, timestep=t)) for t in (900, 800, 700)]
        return outputs, state

    whole, state = steps()
    runs_with_whole_reuse = len(projections)
    assert state.calls["sparse: layer reused"] == 1  # step 1 only: steps 0 and 2 refresh
    monkeypatch.setattr(Runner, "reuses_whole_layer", lambda self, layer, at, layout: False)
    per_head, _ = steps()
    assert len(projections) - runs_with_whole_reuse == runs_with_whole_reuse + 1
    for a, b in zip(whole, per_head, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("dense_layer", [2, -2, "blocks.1.attn1"])
def test_dense_layers_by_index_negative_index_or_name(models, dense_layer):
    """Indices count every attention module in module order (Wan: attn1, attn2 per block)."""
    model = models["wan"]
    config = SparseConfig(method="local", block_size=16, density=0.3, schedule={"dense_layers": [dense_layer]})
    with sparsediff.sparse(model, config) as state:
        _run(model, _inputs("wan"))
        kept = state.plans  # layers that planned
    assert state.calls["dense: schedule"] == 1 and state.calls["sparse"] == 1
    assert {key[0] for key in kept} == {"blocks.0.attn1"}


def test_window_sizing_picks_the_radius_closest_to_the_target():
    from sparsediff.methods import local_pattern
    from sparsediff.patterns import aligned_plan

    for layout, blocks in (
        (TokenLayout(frames=5, height=16, width=20), 16),
        (TokenLayout(frames=3, height=24, width=24, text_prefix=7), (32, 16)),
        (TokenLayout(frames=1, height=30, width=40, text_suffix=8), 64),
    ):
        by_radius = [
            aligned_plan(layout, Diagonal(radius=r, temporal_radius=min(r, layout.frames - 1)), blocks).density
            for r in range(max(layout.height, layout.width))
        ]
        assert by_radius == sorted(by_radius)  # a wider window never computes less
        for target in (0.1, 0.25, 0.3, 0.5):
            chosen = local_pattern(layout, target, blocks)
            achieved = aligned_plan(layout, chosen, blocks).density
            assert abs(achieved - target) == pytest.approx(min(abs(d - target) for d in by_radius))


def test_dense_layers_and_skipped_heads(models):
    model = models["wan"]
    inputs = _inputs("wan")
    native = _run(model, inputs)
    config = SparseConfig(
        method="pattern",
        pattern=Diagonal(radius=1),
        heads={"blocks.1.attn1": [Skip(), Diagonal(radius=1)]},
        schedule={"dense_layers": [0], "dense_steps": 1},
        block_size=16,
    )
    with sparsediff.sparse(model, config) as state:
        dense_step = _run(model, inputs)
        assert torch.allclose(dense_step, native, atol=1e-5)
        later = _run(model, _inputs("wan", timestep=800))
        assert state.calls["dense: schedule"] == 2 + 1  # step 0: both layers; step 1: layer 0
        assert state.calls["sparse"] == 1
        kept = state.reuse[("blocks.1.attn1", 0)]
        assert kept.heads == (0,) and kept.output.shape[1] == 1
    assert not torch.allclose(later, _run(model, _inputs("wan", timestep=800)), atol=1e-4)


def test_config_errors(models, tmp_path):
    model = models["wan"]
    with pytest.raises(ValueError, match="neither a preset"):
        sparsediff.apply(model, "no-such-preset")
    with pytest.raises(ValueError, match="invalid sparsediff config"):
        sparsediff.apply(model, {"method": "magic"})
    other = SparseConfig(
        model=ModelSignature(model_class="FluxTransformer2DModel", attention_layers=4, heads=24, head_dim=128)
    )
    with pytest.raises(ValueError, match=r"made for another model.*model_class"):
        sparsediff.apply(model, other)
    with pytest.raises(ValueError, match=r"3 head patterns for .blocks\.0\.attn1., which has 2 heads"):
        sparsediff.apply(model, {"method": "pattern", "heads": {"blocks.0.attn1": [{"kind": "full"}] * 3}})
    with pytest.raises(ValueError, match="does not have"):
        sparsediff.apply(model, {"method": "pattern", "heads": {"blocks.9.attn1": [{"kind": "full"}] * 2}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sparsediff.apply(model, bad)
    sparsediff.apply(model, "local")
    with pytest.raises(RuntimeError, match="already applied"):
        sparsediff.apply(model, "local")
    sparsediff.remove(model)
    with pytest.raises(RuntimeError, match="not applied"):
        sparsediff.remove(model)
    with pytest.raises(TypeError, match="expects a diffusers pipeline"):
        sparsediff.apply(torch.nn.Linear(2, 2), "local")
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'; choose one of auto, reference"):
        sparsediff.apply(model, "local", backend="cuda-magic")  # refused before any call, not at the first
    with pytest.raises(ValueError, match="block sizes must be >= 1 token"):
        sparsediff.build_plan(TokenLayout(height=4, width=4), Diagonal(radius=1), block_size=0)


def test_config_file_round_trip(models, tmp_path):
    config = SparseConfig(method="pattern", pattern=Diagonal(radius=2) | Stripe(frames=(0,)))
    path = config.save(tmp_path / "c.json")
    assert json.loads(path.read_text())["version"] == 2
    assert SparseConfig.load(path) == config
    with sparsediff.sparse(models["sd3"], path, block_size=16) as state:
        _run(models["sd3"], _inputs("sd3"))
        assert state.calls["sparse"] == 2


def test_processors_usable_directly(models):
    model = models["pixart"]
    inputs = _inputs("pixart")
    native = _run(model, inputs)
    originals = dict(model.attn_processors)
    layout = TokenLayout(height=8, width=10)
    model.set_attn_processor(
        sparsediff.sparse_processors(model, {"method": "local", "density": 0.3, "block_size": 16}, layout)
    )
    changed = _run(model, inputs)
    model.set_attn_processor(originals)
    assert (changed - native).abs().max() > 1e-3
    assert torch.equal(_run(model, inputs), native)


def _padded_text_inputs(family):
    """Batch of 2 whose first sample's text is padded (3 of 8 tokens masked), the second's not."""
    inputs = _inputs(family, batch=2)
    name = "encoder_attention_mask" if family == "hunyuanvideo" else "encoder_hidden_states_mask"
    mask = torch.ones(2, 8)
    mask[0, 5:] = 0
    inputs[name] = mask
    return inputs


@pytest.mark.parametrize("family", ["hunyuanvideo", "qwenimage"])
def test_padded_text_stays_sparse_and_exact(models, family):
    model, inputs = models[family], _padded_text_inputs(family)
    native = _run(model, inputs)
    with sparsediff.sparse(model, "dense", block_size=16) as state:
        routed = _run(model, inputs)
    assert state.calls["sparse: padded text"] > 0 and state.calls["dense: attention mask"] == 0
    assert (routed - native).abs().max() <= 1e-5
    outputs = {}
    for backend in ("torch", "reference"):
        with sparsediff.sparse(model, "local", density=0.3, block_size=16, backend=backend):
            outputs[backend] = _run(model, inputs)
    assert (outputs["torch"] - native).abs().max() > 1e-3
    assert (outputs["torch"] - outputs["reference"]).abs().max() <= 1e-4
    # Each sample's sparse output is what it gets alone (its own valid text length).
    alone = {k: v[:1] if isinstance(v, torch.Tensor) and v.shape[:1] == (2,) else v for k, v in inputs.items()}
    if family == "qwenimage":
        alone["img_shapes"] = inputs["img_shapes"][:1]
    with sparsediff.sparse(model, "local", density=0.3, block_size=16, backend="torch"):
        single = _run(model, alone)
    assert (single[0] - outputs["torch"][0]).abs().max() <= 1e-4
    second = {k: v[1:] if isinstance(v, torch.Tensor) and v.shape[:1] == (2,) else v for k, v in inputs.items()}
    if family == "qwenimage":
        second["img_shapes"] = inputs["img_shapes"][1:]
    for method in ("pyramid", "hilbert"):  # per-call methods plan on each sample's valid tokens too
        with sparsediff.sparse(model, method, density=0.3, block_size=16) as state:
            batch = _run(model, inputs)
            assert state.calls["sparse: padded text"] > 0
            padded_alone, full_alone = _run(model, alone), _run(model, second)
        assert (batch[0] - padded_alone[0]).abs().max() <= 1e-4, method
        assert (batch[1] - full_alone[0]).abs().max() <= 1e-4, method
        assert (batch - native).abs().max() > 1e-3, method


@pytest.mark.parametrize(
    "family, dense_reason, not_self",
    [("wan", "dense: cross attention", ".attn2"), ("hunyuanvideo", "dense: text attention", "context_embedder.")],
)
def test_roles_come_from_the_model_even_at_equal_lengths(models, family, dense_reason, not_self):
    """16 text tokens and a 1 x 8 x 8 latent (16 tokens after 2 x 2 patches): cross-attention (Wan's
    attn2) and HunyuanVideo's text-only token refiner look like self-attention by length."""
    model = models[family]
    inputs = TINY_TRANSFORMERS[family].make_inputs(1, 1, 8, 8, 16, 900, torch.Generator().manual_seed(0))
    layers = [name.removesuffix(".processor") for name in model.attn_processors]
    others = sum(not_self in name for name in layers)
    with sparsediff.sparse(model, "local", density=0.5, block_size=4) as state:
        _run(model, inputs)
        assert state.calls[dense_reason] == others > 0
        assert state.calls["sparse"] == len(layers) - others


def test_a_diffusers_model_without_attention_is_refused_truthfully():
    from diffusers import ModelMixin

    with pytest.raises(
        TypeError, match="is a diffusers model, but none of its modules is a diffusers attention module"
    ):
        sparsediff.apply(ModelMixin(), "local")
