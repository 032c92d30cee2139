"""SparseD on transformers models (diffusion LMs) through `AttentionInterface`, no model code copied.

`apply(model, config)` registers one attention function, `sparsediff`, with transformers'
`AttentionInterface` (and sdpa's mask builder with `AttentionMaskInterface`, without which the
function would receive no padding mask), points the model at it with `set_attn_implementation`
and puts a `SparseDState` on every attention module. Each call finds its module's state; a
module without one runs sdpa unchanged.

Steps are counted at the first attention layer: one forward is one denoising step (a sampler
that runs classifier-free guidance batched makes one call per step). Counting there, not in a
forward hook, also sees samplers that call `model.forward` directly (DiffusionGemma). A new
sequence starts step 0 again, detected without the sampler's help: the batch or the number of
valid keys changes (not the number of queries: with a prefix cache, later steps query only the
block being decoded), or the number of mask tokens in `input_ids` goes up (a forward pre-hook
watches them). The total step count, which
a `dense_fraction` needs, comes from our sampler (`state.total_steps`) or the model's
`generation_config.max_denoising_steps` (DiffusionGemma); otherwise only `dense_steps` count.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from sparsediff.config import SparseConfig
from sparsediff.layout import TokenLayout
from sparsediff.methods.runner import AttentionCall, Runner, Step, check_dense_layers

logger = logging.getLogger(__name__)
Tensor = torch.Tensor
ATTENTION_NAME = "sparsediff"
STATE_ATTR = "_sparsediff_state"
ORIGINAL_ATTR = "_sparsediff_original_attention"


@dataclass
class SparseDState:
    """Step tracking for one model; every attention call it describes goes to its `Runner`."""

    config: SparseConfig
    mask_token_id: int | None = None
    total_steps: int | None = None  # set by a sampler that knows it
    default_total_steps: int | None = None  # from the model's generation config
    first_layer: str | None = None  # where steps are counted: the first layer that reaches SparseD
    names: dict[int, str] = field(default_factory=dict)  # id(attention module) -> layer name
    forwards: int = 0
    phase_start: int = 0
    generation: int = 0  # one per sequence (request): the runner drops the last one's patterns
    layers: list[str] = field(default_factory=list)  # attention layer names in module order (dense_layers)
    runner: Runner = field(init=False)
    _shape: tuple | None = None
    _masks: int | None = None
    _new_request: bool = False
    _warned: bool = False

    def __post_init__(self) -> None:
        self.runner = Runner(self.config, layers=self.layers)

    @property
    def step(self) -> int:
        return self.forwards - 1 - self.phase_start

    @property
    def calls(self) -> Counter:
        """How attention calls were served since `apply` (over every request)."""
        return self.runner.stats.calls

    @property
    def pattern_computations(self) -> int:
        """How often SparseD took patterns (once per layer and request, plus recomputations)."""
        return self.runner.sparsed.pattern_computations if self.runner.sparsed else 0

    def density(self) -> float | None:
        """Share of all attention work computed since `apply`, dense steps and pattern steps included."""
        return self.runner.stats.density()

    def sparse_density(self) -> float | None:
        """The same over the calls that ran SparseD's plans (the plans' density)."""
        return self.runner.stats.sparse_density()

    def total(self) -> int | None:
        total = self.total_steps or self.default_total_steps
        if self.config.schedule.dense_fraction and total is None and not self._warned:
            self._warned = True
            logger.warning("sparsediff: the number of denoising steps is unknown, so dense_fraction is ignored")
        return total

    def observe_input(self, input_ids: Tensor | None) -> None:
        """More mask tokens than last forward: a new request (the sequence only loses masks)."""
        if input_ids is not None and self.mask_token_id is not None:
            masks = int((input_ids == self.mask_token_id).sum())
            self._new_request |= self._masks is not None and masks > self._masks
            self._masks = masks

    def _count_step(self, shape: tuple[int, int]) -> None:
        self.forwards += 1
        if self._new_request or (self._shape is not None and shape != self._shape):
            self.phase_start = self.forwards - 1
            self.generation += 1
        self._shape, self._new_request = shape, False

    def reset(self) -> None:
        self.forwards = self.phase_start = 0
        self.generation += 1
        self._shape = self._masks = None
        self._new_request = False

    def attend(self, module, query, key, value, attention_mask, scaling, dropout, kwargs) -> tuple[Tensor, None]:
        def native(mask=attention_mask, k=key, v=value) -> Callable[[], Tensor]:
            def attention() -> Tensor:  # [B, H, N, D], as the runner works
                out, _ = sdpa_attention_forward(module, query, k, v, mask, dropout=dropout, scaling=scaling, **kwargs)
                return out.transpose(1, 2)

            return attention

        layer = self.names.get(id(module)) or str(module.layer_idx)
        is_causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
        if is_causal or dropout or query.shape[2] < 2:
            call = AttentionCall(layer, query, key, value, native(), Step(generation=self.generation), scaling,
                                 dense_reason="dense: causal or decoding")  # fmt: skip
            return self.runner.run(call).transpose(1, 2), None
        key, value, valid = _drop_padded_keys(attention_mask, key, value)
        if not valid:
            call = AttentionCall(layer, query, key, value, native(), Step(generation=self.generation), scaling,
                                 dense_reason="dense: attention mask")  # fmt: skip
            return self.runner.run(call).transpose(1, 2), None
        if self.first_layer is None:  # a causal encoder's layers (DiffusionGemma) never get here
            self.first_layer = layer
        if layer == self.first_layer:  # plans are per sequence: a new batch is a new request
            self._count_step((query.shape[0], key.shape[2]))  # queries may shrink: a prefix cache
        at = Step(step=self.step, generation=self.generation, total=self.total())
        # a sequence is a 1 x N grid to the layout methods (local, pyramid, ...): local = nearby tokens
        layout = TokenLayout(height=1, width=key.shape[2]) if query.shape[2] == key.shape[2] else None
        call = AttentionCall(layer, query, key, value, native(mask=None, k=key, v=value), at, scaling, layout=layout)
        return self.runner.run(call).transpose(1, 2).contiguous(), None


def _drop_padded_keys(mask: Tensor | None, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Keys every query of every sample may see; (key, value, False) when the mask is more than that."""
    if mask is None:
        return key, value, True
    allowed = mask if mask.dtype == torch.bool else mask == 0
    allowed = allowed.expand(allowed.shape[0], 1, *allowed.shape[-2:]) if allowed.dim() == 4 else None
    if allowed is None:
        return key, value, False
    column = allowed[:1, :1, :1]  # every row and sample must agree with the first row
    if not torch.equal(allowed, column.expand_as(allowed)):
        return key, value, False
    keep = column.reshape(-1).nonzero().squeeze(1)
    if keep.numel() == key.shape[2]:
        return key, value, True
    return key[:, :, keep], value[:, :, keep], True


def sparsediff_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: the module's SparseD state decides, else plain sdpa."""
    state = getattr(module, STATE_ATTR, None)
    if state is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return state.attend(module, query, key, value, attention_mask, scaling, dropout, kwargs)


AttentionInterface.register(ATTENTION_NAME, sparsediff_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def _is_attention(module) -> bool:
    """A transformers attention module: decoders' (layer_idx and KV groups) or encoders' (BERT,
    RoBERTa, ModernBERT: an `...Attention` class with `is_causal`, with or without a layer_idx)."""
    decoder = hasattr(module, "layer_idx") and hasattr(module, "num_key_value_groups")
    return decoder or (type(module).__name__.endswith("Attention") and hasattr(module, "is_causal"))


def _attention_modules(model) -> dict[int, torch.nn.Module]:
    """Layer name -> attention module, in module order; a module without a layer_idx is named by
    its place in that order."""
    found = [m for m in model.modules() if _is_attention(m)]
    if not found:
        raise TypeError(f"{type(model).__name__} has no transformers attention modules to make sparse")
    indices = [getattr(m, "layer_idx", None) for m in found]
    numbered = all(isinstance(i, int) for i in indices) and len(set(indices)) == len(indices)
    return {str(indices[i] if numbered else i): m for i, m in enumerate(found)}


def _mask_token_id(model) -> int | None:
    for config in (model.config, getattr(model.config, "text_config", None)):
        value = getattr(config, "mask_token_id", None) if config is not None else None
        if value is not None:
            return int(value)
    return None


def apply(model, config: SparseConfig) -> SparseDState:
    if config.method == "pattern":
        raise ValueError(
            "method 'pattern' (searched per-head patterns) is for diffusion transformers (diffusers pipelines); "
            "for a transformers model use 'sparsed', 'dense', or a layout method such as 'local'"
        )
    if hasattr(model, STATE_ATTR):
        raise RuntimeError(f"sparsediff is already applied to this {type(model).__name__}; call remove first")
    modules = _attention_modules(model)
    check_dense_layers(config.schedule, list(modules))
    generation = getattr(model, "generation_config", None)
    state = SparseDState(
        config,
        mask_token_id=_mask_token_id(model),
        default_total_steps=getattr(generation, "max_denoising_steps", None),
        layers=list(modules),
    )
    state.names = {id(m): name for name, m in modules.items()}
    handle = model.register_forward_pre_hook(
        lambda _module, args, kwargs: state.observe_input(kwargs.get("input_ids", args[0] if args else None)),
        with_kwargs=True,
    )
    original = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION_NAME)
    for m in modules.values():
        setattr(m, STATE_ATTR, state)
    setattr(model, STATE_ATTR, (state, handle, original, list(modules.values())))
    return state


def remove(model) -> None:
    if not hasattr(model, STATE_ATTR):
        raise RuntimeError("sparsediff is not applied to this model; nothing to remove")
    _, handle, original, modules = getattr(model, STATE_ATTR)
    handle.remove()
    for m in modules:
        delattr(m, STATE_ATTR)
    model.set_attn_implementation(original)
    delattr(model, STATE_ATTR)


def state_of(model) -> SparseDState | None:
    found = getattr(model, STATE_ATTR, None)
    return found[0] if found else None
