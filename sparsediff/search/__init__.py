"""Offline head search (Sparse-vDiT): calibration, candidates, cost model, solver, report."""

from sparsediff.search.candidates import default_candidates
from sparsediff.search.cost import CostModel, measure
from sparsediff.search.offline import SearchResult, TargetMissed, merge_sizes, search, search_sizes, searched_grid
from sparsediff.search.quality import Quality, QualityTarget
from sparsediff.search.solver import solve_budget, solve_max_error

__all__ = [
    "CostModel",
    "Quality",
    "QualityTarget",
    "SearchResult",
    "TargetMissed",
    "default_candidates",
    "measure",
    "merge_sizes",
    "search",
    "search_sizes",
    "searched_grid",
    "solve_budget",
    "solve_max_error",
]
