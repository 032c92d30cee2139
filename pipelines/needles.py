"""Needle retrieval: a long-context task with an exact answer, for training a tiny diffusion LM.

A context of filler tokens hides `needles` pairs `<marker> <value>`; after `?` come `queries`
markers, and the answer is their values in that order:

    f3 f9 C 7 f1 f1 ... A 2 f8 ... ? A C   ->   2 7

The answer needs attention from the end of the sequence to wherever the needles sit (long range)
and from each marker to its neighbour. `difficulty` is the share of filler tokens drawn from the
value vocabulary: at 0 the values stand out by themselves, at 1 only the markers tell them from
noise. The curriculum raises difficulty, then needles and length, when accuracy is high.
Held-out examples come from seeds training never uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


CURRICULUM = (
    Level(64, 1, 1, 0.0),
    Level(64, 2, 2, 0.5),
    Level(64, 4, 2, 1.0),
    Level(128, 4, 4, 1.0),
    Level(256, 6, 4, 1.0),
    Level(512, 8, 4, 1.0),
)


def sample(tokenizer, level: Level, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts [count, context], answers [count, queries]) as token ids; same seed, same batch."""
    if level.queries > level.needles or level.needles > len(MARKERS):
        raise ValueError(f"{level}: queries <= needles <= {len(MARKERS)} markers")
    room = level.context - 1 - level.queries
    if room < 2 * level.needles:
        raise ValueError(f"{level}: context too short for {level.needles} needles and {level.queries} queries")
    gen = torch.Generator().manual_seed(seed)
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in WORDS}
    filler = torch.tensor([ids[w] for w in FILLER])
    values = torch.tensor([ids[w] for w in VALUES])
    markers = torch.tensor([ids[w] for w in MARKERS])
    prompts = torch.empty(count, level.context, dtype=torch.long)
    answers = torch.empty(count, level.queries, dtype=torch.long)
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
        answers[i] = needle_values[asked]
    return prompts, answers


def task_tokenizer():
    from sparsediff.pipelines.dllm import dlm_tokenizer

    return dlm_tokenizer(WORDS)
