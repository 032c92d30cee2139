"""End-to-end refinement of the search: the coordinate search on error weights, and a real search."""

import numpy as np
import pytest
import torch

from sparsediff import Diagonal, Full, Pyramid, Skip
from sparsediff.media import frames_of
from sparsediff.pipelines.tiny import tiny_pipeline
from sparsediff.search import CostModel, search, solve_budget
from sparsediff.search.refine import FACTOR, generated_psnr, refine_weights, weight_keys, weighted_errors
from sparsediff.search.solver import total_cost

CANDIDATES = [Full(), Diagonal(radius=1), Pyramid(budget=0.25), Skip(every=2)]
LAYERS = ["a", "b"]


def _tables():
    """Two layers of two heads: per head, the diagonal's error is a little under the pyramid's."""
    errors = {layer: torch.tensor([[0.0, 0.10, 0.12, 0.5], [0.0, 0.09, 0.11, 0.5]]) for layer in LAYERS}
    costs = {layer: torch.tensor([10.0, 3.0, 3.0, 5.0], dtype=torch.float64) for layer in LAYERS}
    return errors, costs


def test_weighted_errors_scale_one_kind_and_one_layer():
    errors, _ = _tables()
    got = weighted_errors(errors, CANDIDATES, {"kind:Diagonal": 2.0, "layer:b": 3.0})
    assert torch.equal(got["a"][:, 1], errors["a"][:, 1] * 2) and torch.equal(got["a"][:, 2], errors["a"][:, 2])
    assert torch.allclose(got["b"][:, 1], errors["b"][:, 1] * 6)
    assert torch.allclose(got["b"][:, 2], errors["b"][:, 2] * 3)
    assert weight_keys(CANDIDATES, LAYERS) == ["kind:Diagonal", "kind:Pyramid", "kind:Skip", "layer:a", "layer:b"]


def test_refinement_follows_the_generated_quality_within_the_budget():
    """The solver picks diagonals (lower per-head error); the generated output says each diagonal
    costs 2 dB and each pyramid 1 dB, so refinement moves to pyramids, within the same budget."""
    errors, costs = _tables()
    budget = 4 * 3.0 + 1.0

    def solve(weights):
        return solve_budget(weighted_errors(errors, CANDIDATES, weights) if weights else errors, costs, budget)

    evaluated = []

    def evaluate(choices):
        evaluated.append(choices)
        picks = [c for p in choices.values() for c in p]
        return 40.0 - 2.0 * picks.count(1) - 1.0 * picks.count(2)

    first = solve({})
    assert all(c == 1 for p in first.values() for c in p)
    choices, found = refine_weights(solve, evaluate, weight_keys(CANDIDATES, LAYERS), evaluations=10, progress=False)
    assert all(c == 2 for p in choices.values() for c in p)
    assert found.psnr_before == 32.0 and found.psnr_after == 36.0
    assert found.weights == {"kind:Diagonal": FACTOR}
    assert total_cost(choices, costs) <= budget
    assert len(evaluated) == len(found.trail) <= 10  # one generation per distinct choice, none repeated
    assert len({tuple(map(tuple, c.values())) for c in evaluated}) == len(evaluated)
    assert found.trail[0] == {"change": "solver", "psnr": 32.0}
    assert found.trail[1] == {"change": f"kind:Diagonal x{FACTOR:.3g}", "psnr": 36.0, "kept": True}


def test_refinement_spends_at_most_its_evaluations():
    errors, costs = _tables()

    def solve(weights):
        return solve_budget(weighted_errors(errors, CANDIDATES, weights) if weights else errors, costs, 13.0)

    choices, found = refine_weights(solve, lambda c: 30.0, weight_keys(CANDIDATES, LAYERS), 1, progress=False)
    assert choices == solve({}) and len(found.trail) == 1 and found.psnr_after == found.psnr_before
    with pytest.raises(ValueError, match="at least 1 evaluation"):
        refine_weights(solve, lambda c: 30.0, [], 0, progress=False)


COSTS = CostModel(
    backend="torch", device="cpu", tokens=1280, heads=2, head_dim=16, block_size=64,
    per_block_pair_ms=0.006, per_group_ms=0.0, fixed_ms=0.1, dense_ms=8.0,
    per_call_ms={"pyramid(budget=0.125)": 2.0, "pyramid(budget=0.25)": 3.0,
                 "hilbert-window(density=0.125, order=hilbert-frame)": 2.5,
                 "hilbert-window(density=0.25, order=hilbert-frame)": 3.5},
    outside_ratio={"blocks.0.attn1": 0.5, "blocks.1.attn1": 0.5},  # tiny Wan's layers
)  # fmt: skip


def test_search_refines_end_to_end_and_records_what_it_measured():
    """A refined search keeps the budget, never ends below the solver's own choice, and the PSNR it
    records is what generating the prompts under the final config against dense gives."""
    pipe = tiny_pipeline("wan")
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a blue square"]
    call = dict(num_frames=5, height=128, width=128, guidance_scale=3.0, num_inference_steps=4, output_type="np")
    result = search(pipe, prompts, budget=0.5, cost_model=COSTS, calibration_steps=2, refine=4, progress=False, **call)
    config = result.config
    refined = config.search["refinement"]
    assert config.search["settings"]["refine"] == 4
    assert 1 <= refined["evaluations"] <= 4 and refined["trail"][0]["change"] == "solver"
    assert refined["psnr_after"] >= refined["psnr_before"]
    assert config.search["predicted"]["attention_ms"] <= 0.5 * config.search["predicted"]["dense_attention_ms"] + 1e-3
    seeded = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    dense = [frames_of(pipe(prompt=p, generator=g, **call)) for p, g in zip(prompts, seeded, strict=True)]
    again = generated_psnr(pipe, config, prompts, dense, 0, **call)
    assert np.isfinite(again) and again == pytest.approx(refined["psnr_after"], abs=1e-3)


def test_search_refuses_refinement_without_a_budget_before_calibrating():
    pipe = tiny_pipeline("wan")
    with pytest.raises(ValueError, match="give budget, not max_error"):
        search(pipe, ["a cat"], max_error=0.1, refine=2, num_inference_steps=2)
    with pytest.raises(ValueError, match="number of end-to-end evaluations"):
        search(pipe, ["a cat"], budget=0.5, refine=-1, num_inference_steps=2)
