"""Masked-diffusion text generation (LLaDA-style) over any bidirectional transformers model.

The answer starts as `gen_length` mask tokens after the prompt. It is decoded block by block
(semi-autoregressive: a block's tokens are only unmasked once every earlier block is done);
within a block, each step predicts every masked token and keeps the most confident ones
(low-confidence remasking), so that each block is done after `steps / blocks` steps.
Classifier-free guidance runs the prompt-masked copy in the same batch.

A built-in transformers architecture serves as the denoiser with `is_causal=False` in its
config (how LLaDA-like checkpoints load without remote code): `tiny_dlm()` builds one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

Tensor = torch.Tensor


def _transfer_counts(masked: Tensor, steps: int) -> Tensor:
    """[B, steps] how many tokens each step unmasks, spread as evenly as possible."""
    base = masked // steps
    extra = masked % steps
    return base[:, None] + (torch.arange(steps)[None, :] < extra[:, None]).long()


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor | None]:
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, length - len(p) :] = 1
    return ids, (None if bool(mask.all()) else mask)


@torch.no_grad()
def masked_diffusion_generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    mask_id: int,
    pad_id: int = 0,
    gen_length: int = 64,
    steps: int = 64,
    block_length: int | None = None,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    max_length: int | None = None,
    seed: int = 0,
    progress: bool = True,
    prefix_cache: bool = False,
) -> Tensor:
    """Token ids [B, prompt + gen_length] with every answer token decoded.

    prompts: token id lists (left-padded into one batch, padding masked in attention).
    steps: denoising steps in total; `gen_length / block_length` blocks share them equally.
    prefix_cache: Fast-dLLM's prefix KV cache: the first step of each block runs the whole
    sequence and keeps the keys and values of everything before the block (the prompt and the
    blocks decoded so far); the block's other steps run only the block and what follows it
    against them. An approximation (the prefix no longer sees the block's tokens change), far
    cheaper when the prompt is long.
    """
    block_length = block_length or gen_length
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if steps < 1 or gen_length < 1:
        raise ValueError(f"steps and gen_length must be >= 1, got steps={steps}, gen_length={gen_length}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} must be a multiple of block_length {block_length}")
    blocks = gen_length // block_length
    if steps % blocks:
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks ({blocks})")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"unknown remasking {remasking!r}; choose low_confidence or random")
    if prefix_cache and cfg_scale > 0:
        raise ValueError("prefix_cache and cfg_scale > 0 do not combine (the unprompted copy has no prefix to keep)")
    prompt_ids, prompt_mask = _left_pad(prompts, pad_id)
    batch, prompt_len = prompt_ids.shape
    limit = max_length or getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompt_len + gen_length > limit:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + answer ({gen_length}) = {prompt_len + gen_length} tokens exceeds the "
            f"model's context of {limit}; shorten the prompt or the answer"
        )
    device = next(model.parameters()).device
    x = torch.cat([prompt_ids, torch.full((batch, gen_length), mask_id, dtype=torch.long)], 1).to(device)
    attention = (
        None if prompt_mask is None else torch.cat([prompt_mask, torch.ones(batch, gen_length, dtype=torch.long)], 1)
    )
    attention = None if attention is None else attention.to(device)
    gen = torch.Generator().manual_seed(seed)
    per_block = steps // blocks
    _tell_sparsediff(model, steps)
    bar = tqdm(total=steps, desc="denoising", disable=not progress, leave=False)
    for b in range(blocks):
        start, end = prompt_len + b * block_length, prompt_len + (b + 1) * block_length
        counts = _transfer_counts((x[:, start:end] == mask_id).sum(1).cpu(), per_block)
        prefix = None
        for i in range(per_block):
            offset = start if prefix is not None else 0  # logits cover x[:, offset:]
            if not prefix_cache:
                logits = _logits(model, x, attention, prompt_len, mask_id, cfg_scale)
            elif prefix is None:
                logits, prefix = logits_keeping_prefix(model, x, attention, start)
            else:
                logits = logits_after_prefix(model, x, attention, prefix)
            masked = x[:, offset:] == mask_id
            logits[..., mask_id] = -torch.inf  # never predict the mask itself
            if temperature > 0:
                u = torch.rand(logits.shape, generator=gen, dtype=torch.float64).clamp_min(1e-20).to(device)
                noisy = logits.double() / temperature - torch.log(-torch.log(u))
            else:
                noisy = logits
            x0 = noisy.argmax(-1)
            if remasking == "low_confidence":
                confidence = logits.float().softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
            else:
                confidence = torch.rand(x0.shape, generator=gen).to(device)
            confidence[:, end - offset :] = -torch.inf
            confidence = torch.where(masked, confidence, -torch.inf)
            x0 = torch.where(masked, x0, x[:, offset:])
            for row in range(batch):
                k = int(counts[row, i])
                if k:
                    chosen = confidence[row].topk(k).indices
                    x[row, offset + chosen] = x0[row, chosen]
            bar.update()
    bar.close()
    return x


def _logits(model, x: Tensor, attention: Tensor | None, prompt_len: int, mask_id: int, cfg_scale: float) -> Tensor:
    if cfg_scale <= 0:
        return model(input_ids=x, attention_mask=attention).logits
    unprompted = x.clone()
    unprompted[:, :prompt_len] = mask_id
    both = torch.cat([x, unprompted])
    mask = None if attention is None else torch.cat([attention, attention])
    cond, uncond = model(input_ids=both, attention_mask=mask).logits.chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)


def logits_keeping_prefix(model, x: Tensor, attention: Tensor | None, start: int):
    """Logits of the whole sequence, and its key/value cache cut back to the first `start` tokens."""
    out = model(input_ids=x, attention_mask=attention, use_cache=True)
    prefix = out.cache
    prefix.crop(start - prefix.get_seq_length())
    return out.logits, prefix


def logits_after_prefix(model, x: Tensor, attention: Tensor | None, prefix) -> Tensor:
    """Logits of x[:, start:] attending to the kept prefix and to themselves; the cache is cut
    back to the prefix afterwards, ready for the next step."""
    start = prefix.get_seq_length()
    positions = torch.arange(start, x.shape[1], device=x.device).expand(x.shape[0], -1)
    logits = model(input_ids=x[:, start:], attention_mask=attention, cache=prefix, position_ids=positions,
                   use_cache=True).logits  # fmt: skip
    prefix.crop(start - prefix.get_seq_length())
    return logits


def _tell_sparsediff(model, steps: int) -> None:
    """A SparseD state on the model learns the step count (for its dense fraction) and restarts."""
    from sparsediff.integrations.transformers import state_of

    state = state_of(model)
    if state is not None:
        state.reset()
        state.total_steps = steps


def generate_text(model, tokenizer, prompts: Sequence[str], **kwargs) -> list[str]:
    """Decode answers for text prompts with the tokenizer's mask token."""
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; masked diffusion needs one (tokenizer.mask_token)")
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    out = masked_diffusion_generate(
        model, ids, mask_id=tokenizer.mask_token_id, pad_id=tokenizer.pad_token_id or 0, **kwargs
    )
    gen_length = kwargs.get("gen_length", 64)
    return [tokenizer.decode(row[-gen_length:], skip_special_tokens=True) for row in out.tolist()]


def dlm_tokenizer(words: Sequence[str]):
    """A word-level tokenizer with <pad>, <mask>, <unk>, </s> and the given words (built locally)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(("<pad>", "<mask>", "<unk>", "</s>", *dict.fromkeys(words)))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", mask_token="<mask>", unk_token="<unk>", eos_token="</s>"
    )


def tiny_dlm(
    vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, context: int = 4096,
    mask_token_id: int = 1, seed: int = 0,
):  # fmt: skip
    """A bidirectional Llama (`is_causal=False`) with random weights: a LLaDA-like denoiser."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        is_causal=False,
        pad_token_id=0,
        mask_token_id=mask_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()
