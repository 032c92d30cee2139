"""Every transformer class diffusers exports: listed with what `apply` does, and each one we call
sparse built from a tiny config, saved, loaded back and checked."""

import re
from pathlib import Path

import diffusers
import diffusers.models.transformers as exported
import pytest
import torch
from family_cases import CASES

import sparsediff
from sparsediff.integrations.families import SUPPORT
from sparsediff.pipelines.tiny import TINY_TRANSFORMERS

BUILT_IN = {t.model_class for t in TINY_TRANSFORMERS.values()}  # covered by test_diffusers_integration
README = Path(__file__).resolve().parent.parent / "README.md"
DOCS = README.parent / "docs" / "diffusers.md"


def _exported_classes() -> set[str]:
    return {name for name in dir(exported) if isinstance(getattr(exported, name), type)}


def test_every_exported_transformer_is_listed_with_what_apply_does():
    exported_names = _exported_classes()
    missing = sorted(exported_names - set(SUPPORT))
    assert not missing, f"diffusers exports transformers SUPPORT does not list: {missing}"
    assert not set(SUPPORT) - exported_names, "SUPPORT lists classes diffusers no longer exports"
    for name, (status, reason) in SUPPORT.items():
        assert status in ("sparse", "dense", "refused") and reason, name


def test_every_class_called_sparse_or_dense_has_a_tiny_model_in_the_tests():
    claimed = {name for name, (status, _) in SUPPORT.items() if status in ("sparse", "dense")}
    assert claimed == set(CASES) | BUILT_IN, sorted(claimed ^ (set(CASES) | BUILT_IN))


def _table(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", path.read_text(), flags=re.MULTILINE))


def test_readme_and_docs_family_tables_match_the_list():
    assert _table(README) == {name: status for name, (status, _) in SUPPORT.items() if status in ("sparse", "dense")}
    assert _table(DOCS) == {name: status for name, (status, _) in SUPPORT.items()}


def _with_zero_layers_filled(model: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialized parameters (adaLN gates, output projections) filled with small random values:
    a freshly built model whose output is 0 would make every comparison below pass."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def _output(model, inputs: dict) -> torch.Tensor:
    """The model's first output; models that return one tensor per sample (Z-Image) concatenated."""
    out = model(**inputs, return_dict=False)[0]
    return torch.cat([t.flatten() for t in out]) if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_model_dense_equals_native_local_changes_it_remove_restores(name, tmp_path):
    config, make_inputs = CASES[name]
    model_class = getattr(diffusers, name)
    _with_zero_layers_filled(model_class(**config)).save_pretrained(tmp_path)
    model = model_class.from_pretrained(tmp_path).eval()
    inputs = make_inputs(torch.Generator().manual_seed(0))
    sparse = SUPPORT[name][0] == "sparse"
    with torch.no_grad():
        native = _output(model, inputs)
        with sparsediff.sparse(model, "dense", block_size=8) as state:
            assert (_output(model, inputs) - native).abs().max() <= 1e-5
            ran_sparse = sum(count for kind, count in state.calls.items() if kind.startswith("sparse"))
            assert (ran_sparse > 0) == sparse, dict(state.calls)
        with sparsediff.sparse(model, "local", density=0.3, block_size=8) as state:
            windowed = _output(model, inputs)
        assert torch.isfinite(windowed).all()
        assert ((windowed - native).abs().max() > 1e-4) == sparse, dict(state.calls)
        assert torch.equal(_output(model, inputs), native)  # removed exactly


@pytest.mark.parametrize("name", sorted(n for n, (s, _) in SUPPORT.items() if s == "refused"))
def test_refused_classes_are_named_with_the_reason_and_what_is_supported(name):
    model = object.__new__(getattr(exported, name))  # the class is what is refused; no weights needed
    torch.nn.Module.__init__(model)
    with pytest.raises(TypeError, match=rf"does not support {name}: .*WanTransformer3DModel.*open an issue"):
        sparsediff.apply(model, "local")


def test_modules_are_told_apart_by_the_model_not_by_equal_lengths():
    """Kandinsky 6 with an audio track as long as the video: only the video self-attention runs
    sparse; the audio stream and the audio-video cross-attention (equal lengths) stay dense."""
    config, make_inputs = CASES["Kandinsky6Transformer3DModel"]
    model = diffusers.Kandinsky6Transformer3DModel(**config).eval()
    inputs = make_inputs(torch.Generator().manual_seed(0))
    assert inputs["audio_hidden_states"].shape[1] == 2 * 8 * 8  # as many tokens as the video grid
    with torch.no_grad(), sparsediff.sparse(model, "local", density=0.3, block_size=8) as state:
        model(**inputs)
    assert state.calls["sparse"] == 1 and state.calls["dense: audio attention"] == 2
    assert state.calls["dense: cross attention"] == 3 and state.calls["dense: text attention"] == 2


def test_a_pattern_local_in_frames_keeps_a_changed_frame_to_itself():
    """Catches a wrong layout, which `local` changing the output does not: under a pattern that
    sees its own frame only, a change to one latent cell reaches that frame's outputs and no other
    frame's (a transposed grid, or text on the wrong side, would carry it elsewhere)."""
    from sparsediff import Diagonal, SparseConfig
    from sparsediff.pipelines.tiny import TEXT_DIM, TINY_TRANSFORMERS

    model = TINY_TRANSFORMERS["wan"].build(0).eval()
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 4, 8, 8, generator=gen)  # 4 frames of 4 x 4 patches: one 16-token block each
    text = torch.randn(1, 8, TEXT_DIM, generator=gen)
    changed = latents.clone()
    changed[:, :, 2, 3, 5] += 1.0  # one cell of frame 2
    config = SparseConfig(method="pattern", pattern=Diagonal(radius=8, temporal_radius=0), block_size=16,
                          never_slower=False)  # fmt: skip
    with torch.no_grad(), sparsediff.sparse(model, config) as state:
        before, after = (model(x, torch.tensor([500]), text, return_dict=False)[0] for x in (latents, changed))
    per_frame = (after - before).abs().amax(dim=(0, 1, 3, 4))
    assert per_frame[2] > 1e-3 and per_frame[[0, 1, 3]].eq(0).all(), per_frame
    assert state.calls["sparse"] > 0
    with torch.no_grad():  # dense attention carries the change to every frame: the test can fail
        spread = (model(changed, torch.tensor([500]), text, return_dict=False)[0] - model(
            latents, torch.tensor([500]), text, return_dict=False)[0]).abs().amax(dim=(0, 1, 3, 4))  # fmt: skip
    assert (spread > 0).all()
