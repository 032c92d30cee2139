"""One API for both worlds: diffusers pipelines (or transformers) and transformers language models.

`apply(target, config)` / `remove(target)` / `with sparse(target, config)` pick the integration
from the target: a transformers `PreTrainedModel` gets SparseD through transformers' attention
interface, anything else is treated as a diffusers pipeline or diffusers transformer.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from sparsediff.config import SparseConfig
from sparsediff.integrations import diffusers as _diffusers


def is_language_model(target) -> bool:
    if "transformers" not in sys.modules:  # nothing can be a transformers model yet
        return False
    from transformers import PreTrainedModel

    return isinstance(target, PreTrainedModel)


def _integration(target):
    if is_language_model(target):
        from sparsediff.integrations import transformers as integration
    else:
        integration = _diffusers
    return integration


def apply(target, config: SparseConfig | dict | str | None = None, **overrides):
    """Sparse attention on a diffusers pipeline / transformer, or SparseD on a transformers diffusion LM.

    `config`: a SparseConfig, dict, preset (`dense`, `local`, `sparsed`) or JSON path; default
    `local` for pipelines and `sparsed` for language models. Keyword overrides change fields.
    Returns the state (`state.calls` counts how attention calls were served).
    """
    default = "sparsed" if is_language_model(target) else "local"
    return _integration(target).apply(target, SparseConfig.load(config or default, **overrides))


def remove(target) -> None:
    """Restore the exact original attention."""
    _integration(target).remove(target)


def state_of(target):
    """The state `apply` installed (for a pipeline: of its first transformer), or None."""
    if not is_language_model(target):
        target = _diffusers.transformers_of(target)[0]
    return _integration(target).state_of(target)


@contextlib.contextmanager
def sparse(target, config: SparseConfig | dict | str | None = None, **overrides) -> Iterator[object]:
    """`with sparsediff.sparse(pipe, "local", density=0.2): pipe(...)`, restored on exit."""
    state = apply(target, config, **overrides)
    try:
        yield state
    finally:
        remove(target)
