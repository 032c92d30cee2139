"""Needle retrieval: a long-context task with an exact answer, for training a tiny diffusion LM.

A context of filler tokens hides `needles` pairs `<marker> <value>`; after `?` come `queries`
markers, and the answer is their values in that order, then `</s>` up to `answer_tokens` (LLaDA
pads its answers with end-of-text the same way, so decoding takes that many steps, as real
generation does, and SparseD has steps to be sparse in):

    f3 f9 C 7 f1 f1 ... A 2 f8 ... ? A C   ->   2 7 </s> </s> ...

The answer needs attention from the end of the sequence to wherever the needles sit (long range)
and from each marker to its neighbour. `difficulty` is the share of filler tokens drawn from the
value vocabulary: at 0 the values stand out by themselves, at 1 only the markers tell them from
noise. The curriculum raises difficulty, then length, then needles, when accuracy is high: one
needle among digits in up to 512 tokens comes first (a previous-token head, then a search over the
whole context); matching several markers to their values (associative recall) comes last, as it
stayed at chance for 2,400 steps even at 24 tokens.
Held-out examples come from seeds training never uses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sparsediff.memory import PeakMemory

MARKERS = tuple("ABCDEFGH")
VALUES = tuple("0123456789")
FILLER = tuple(f"f{i}" for i in range(16))
WORDS = (*MARKERS, *VALUES, *FILLER, "?")
HELD_OUT_SEED = 3 << 30  # held-out seeds start here; training seeds stay below (generators keep 32 bits)


@dataclass(frozen=True)
class Level:
    context: int  # prompt tokens (filler, needles, "?" and queries)
    needles: int
    queries: int
    difficulty: float
    answer_tokens: int = 16  # the values, then </s> to the end


CURRICULUM = (
    Level(64, 1, 1, 0.0),
    Level(24, 1, 1, 1.0),  # the value is the digit after the marker: teaches a previous-token head
    Level(64, 1, 1, 1.0),  # then the same needle in ever longer haystacks of digits
    Level(128, 1, 1, 1.0),
    Level(256, 1, 1, 1.0),
    Level(512, 1, 1, 1.0),  # one needle anywhere in 512 tokens: where the long-context levels start from
    Level(24, 2, 1, 0.0),  # the only digits are the needles' values: the model learns which marker owns which
    Level(24, 4, 1, 0.0),
    Level(24, 4, 4, 0.0),
    Level(64, 4, 4, 1.0),
    Level(512, 8, 4, 1.0),
    # the long-context levels (from the level-5 model, --start-level 11): one needle among digits in
    # 1,024, 2,048 and 4,096 tokens, where SparseD's long-context regime starts; the shipped model
    # is at level 13
    Level(1024, 1, 1, 1.0),
    Level(2048, 1, 1, 1.0),
    Level(4096, 1, 1, 1.0),
)
LONGEST = max(level.context + level.answer_tokens for level in CURRICULUM)  # prompt and answer


def sample(tokenizer, level: Level, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts [count, context], answers [count, answer_tokens]) as token ids; same seed, same batch."""
    if level.queries > level.needles or level.needles > len(MARKERS):
        raise ValueError(f"{level}: queries <= needles <= {len(MARKERS)} markers")
    if level.answer_tokens < level.queries:
        raise ValueError(f"{level}: answer_tokens must hold the {level.queries} values")
    room = level.context - 1 - level.queries
    if room < 2 * level.needles:
        raise ValueError(f"{level}: context too short for {level.needles} needles and {level.queries} queries")
    gen = torch.Generator().manual_seed(seed)
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in WORDS}
    filler = torch.tensor([ids[w] for w in FILLER])
    values = torch.tensor([ids[w] for w in VALUES])
    markers = torch.tensor([ids[w] for w in MARKERS])
    prompts = torch.empty(count, level.context, dtype=torch.long)
    answers = torch.full((count, level.answer_tokens), tokenizer.eos_token_id, dtype=torch.long)
    for i in range(count):
        body = filler[torch.randint(len(filler), (room,), generator=gen)]
        distractor = torch.rand(room, generator=gen) < level.difficulty
        body[distractor] = values[torch.randint(len(values), (int(distractor.sum()),), generator=gen)]
        chosen = markers[torch.randperm(len(markers), generator=gen)[: level.needles]]
        needle_values = values[torch.randint(len(values), (level.needles,), generator=gen)]
        slots = torch.randperm(room // 2, generator=gen)[: level.needles] * 2  # non-overlapping pairs
        body[slots], body[slots + 1] = chosen, needle_values
        asked = torch.randperm(level.needles, generator=gen)[: level.queries]
        prompts[i] = torch.cat([body, torch.tensor([ids["?"]]), chosen[asked]])
        answers[i, : level.queries] = needle_values[asked]
    return prompts, answers


def task_tokenizer():
    from sparsediff.pipelines.dllm import dlm_tokenizer

    return dlm_tokenizer(WORDS)


def level_of(folder: Path) -> Level:
    """The curriculum level a shipped model was trained up to (`task.json`, written on export)."""
    path = Path(folder) / "task.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the needle task's level is written there by train_dlm --export")
    return Level(**json.loads(path.read_text())["level"])


def save_level(folder: Path, level: Level) -> None:
    (Path(folder) / "task.json").write_text(json.dumps({"task": "needles", "level": asdict(level)}, indent=1))


def decode_answers(
    model, tokenizer, prompts: torch.Tensor, length: int, steps: int | None = None, prefix_cache: bool = False
) -> torch.Tensor:
    """[count, length] answers the masked-diffusion sampler decodes (one token per step by default)."""
    from sparsediff.pipelines.dllm import masked_diffusion_generate

    model.eval()
    out = masked_diffusion_generate(
        model, prompts.tolist(), mask_id=tokenizer.mask_token_id, gen_length=length, steps=steps or length,
        progress=False, prefix_cache=prefix_cache,
    )  # fmt: skip
    return out[:, -length:]


def exact_accuracy(model, tokenizer, level: Level, count: int, seed: int = HELD_OUT_SEED) -> float:
    """Share of held-out examples whose whole answer (values and end padding) the sampler decodes right."""
    prompts, answers = sample(tokenizer, level, count, seed)
    return float((decode_answers(model, tokenizer, prompts, level.answer_tokens) == answers).all(1).float().mean())


@dataclass
class SparsedEval:
    accuracy_dense: float
    accuracy_sparse: float
    token_agreement: float  # share of answer tokens SparseD decodes as dense does
    speedup: float
    context_tokens: int
    density: float | None  # SparseD's mean density after the switch
    samples: int
    dense_fraction: float  # share of steps decoded dense before the switch
    keep_ratio: float | None  # SparseD's share of KV blocks kept per query block; None: dense attention
    mass: str  # how the pattern step measured block mass: exact, rows or pooled
    dense_s: float
    sparse_s: float
    steps: int
    prefix_cache: bool = False  # Fast-dLLM's prompt KV cache (the dense reference never has it)
    dense_peak_mb: float | None = None  # largest of the batches' decodes (`PeakMemory`)
    sparse_peak_mb: float | None = None


def _largest(peaks: list[float | None]) -> float | None:
    """The largest peak in MB, or None where memory cannot be measured."""
    known = [p for p in peaks if p is not None]
    return round(max(known)) if known else None


def evaluate_sparsed(
    model, tokenizer, level: Level, samples: int,
    settings: Sequence[tuple[float | None, float, str, bool]] = ((0.3, 0.2, "exact", False),),
    steps: int | None = None, batch: int = 32, progress: bool = True,
) -> list[SparsedEval]:  # fmt: skip
    """Dense and SparseD decoding of the same held-out examples: exact accuracy of each, and time.

    `settings` are (keep ratio, dense fraction, mass estimate, prefix cache), one result each; a
    keep ratio of None decodes with dense attention (with the prefix cache: the cache alone). The
    dense reference decodes each batch once for all of them (no cache), so a curve costs one
    dense pass.
    """
    import sparsediff

    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    steps = steps or level.answer_tokens
    prompts, answers = sample(tokenizer, level, samples, HELD_OUT_SEED)
    batches = [(prompts[i : i + batch], answers[i : i + batch]) for i in range(0, samples, batch)]
    dense_right, dense_s = 0, 0.0
    right, seconds, agree = [0] * len(settings), [0.0] * len(settings), [0] * len(settings)
    densities: list[list[float]] = [[] for _ in settings]
    dense_peaks, peaks = [], [[] for _ in settings]
    with torch.no_grad():
        decode_answers(model, tokenizer, prompts[:1], level.answer_tokens, steps)  # warm-up, untimed
        for p, a in tqdm(batches, desc="dense vs sparsed", disable=not progress):
            with PeakMemory() as peak:
                start = time.perf_counter()
                dense = decode_answers(model, tokenizer, p, level.answer_tokens, steps)
                dense_s += time.perf_counter() - start
            dense_peaks.append(peak.mb)
            dense_right += int((dense == a).all(1).sum())
            for i, (keep_ratio, dense_fraction, mass, cached) in enumerate(settings):
                config = {"keep_ratio": keep_ratio, "schedule": {"dense_fraction": dense_fraction}, "mass": mass}
                ours = sparsediff.sparse(model, "sparsed", **config) if keep_ratio else nullcontext()
                with ours as state, PeakMemory() as peak:
                    start = time.perf_counter()
                    got = decode_answers(model, tokenizer, p, level.answer_tokens, steps, prefix_cache=cached)
                    seconds[i] += time.perf_counter() - start
                peaks[i].append(peak.mb)
                right[i] += int((got == a).all(1).sum())
                agree[i] += int((got == dense).sum())
                if state is not None and state.sparse_density() is not None:  # of SparseD's plans, after the switch
                    densities[i].append(state.sparse_density())
    return [
        SparsedEval(
            accuracy_dense=dense_right / samples,
            accuracy_sparse=right[i] / samples,
            token_agreement=agree[i] / (samples * level.answer_tokens),
            speedup=round(dense_s / seconds[i], 3),
            context_tokens=level.context + level.answer_tokens,
            density=round(sum(densities[i]) / len(densities[i]), 4) if densities[i] else None,
            samples=samples,
            dense_fraction=dense_fraction,
            keep_ratio=keep_ratio,
            mass=mass,
            dense_s=round(dense_s, 3),
            sparse_s=round(seconds[i], 3),
            steps=steps,
            prefix_cache=cached,
            dense_peak_mb=_largest(dense_peaks),
            sparse_peak_mb=_largest(peaks[i]),
        )
        for i, (keep_ratio, dense_fraction, mass, cached) in enumerate(settings)
    ]
