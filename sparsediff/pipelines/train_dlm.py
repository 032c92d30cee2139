"""Train the tiny diffusion LM on needle retrieval with the masked-diffusion objective; resumable.

    python -m sparsediff.pipelines.train_dlm --run runs/tiny-dlm --minutes 60
    python -m sparsediff.pipelines.train_dlm --run runs/tiny-dlm --export assets/tiny-dlm
    # the long-context levels, from the 512-token model just exported (the shipped model is their export)
    python -m sparsediff.pipelines.train_dlm --run runs/tiny-dlm-long --init assets/tiny-dlm --start-level 11 \
        --batch-tokens 16384 --threads 2 --minutes 60

Objective (LLaDA's SFT form): the prompt stays visible; each answer token is masked with
probability t ~ U(0.05, 1) (at least one per example) and the loss is the mean cross-entropy over
the masked tokens. LLaDA weights them by 1/t (an ELBO); on the first, unpadded 1-4 token answers
that weight only added variance (a one-token answer is always masked, yet weighted 1 to 20). Every
`--eval-every` steps the model decodes held-out examples of the current curriculum level with the
sampler; at `--promote-at` exact accuracy it moves to the next level (longer contexts, more
needles, more distractors), up to `--last-level`. Batches are fixed by (seed, step), so a resumed
run sees what an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sparsediff.pipelines.dllm import tiny_dlm
from sparsediff.pipelines.needles import (
    CURRICULUM,
    LONGEST,
    Level,
    exact_accuracy,
    sample,
    save_level,
    task_tokenizer,
)
from sparsediff.pipelines.training import load_checkpoint, log, save_atomic, save_on_sigterm


def batch_size(level: Level, args) -> int:
    """Examples per step: `--batch`, or as many as fit `--batch-tokens` (long levels take fewer)."""
    return max(1, args.batch_tokens // level.context) if args.batch_tokens else args.batch


def masked_batch(tokenizer, level: Level, batch: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs with masked answer tokens, targets: the masked tokens' ids, -100 elsewhere)."""
    prompts, answers = sample(tokenizer, level, batch, seed=seed * 1_000_003 + step)
    gen = torch.Generator().manual_seed(seed * 7_919 + step)
    t = 0.05 + 0.95 * torch.rand(batch, 1, generator=gen)
    masked = torch.rand(answers.shape, generator=gen) < t
    masked[torch.arange(batch), torch.randint(answers.shape[1], (batch,), generator=gen)] = True
    inputs = torch.cat([prompts, torch.where(masked, tokenizer.mask_token_id, answers)], 1)
    targets = torch.cat([torch.full_like(prompts, -100), torch.where(masked, answers, -100)], 1)
    return inputs, targets


def train(args) -> None:
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    tokenizer = task_tokenizer()
    model = tiny_dlm(len(tokenizer), hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.heads,
                     context=LONGEST, seed=args.seed)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    step, level_index, ckpt_path = 0, args.start_level, run / "ckpt.pt"
    if args.init and not ckpt_path.exists():  # a new run from exported weights (rotary positions: any length)
        model.load_state_dict(type(model).from_pretrained(args.init).state_dict())
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, level_index = ckpt["step"], ckpt["level"]
        print(f"resumed {ckpt_path} at step {step}, level {level_index}")
    log(run, {"step": step, "start": {k: v for k, v in vars(args).items() if k != "export"}})

    def checkpoint() -> None:
        save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "level": level_index},
                    ckpt_path)  # fmt: skip

    start = last_ckpt = time.monotonic()
    losses: list[float] = []
    bar = tqdm(desc="tiny-dlm", unit="step", initial=step)
    model.train()
    save_on_sigterm()
    try:
        while time.monotonic() - start < args.minutes * 60:
            level = CURRICULUM[level_index]
            inputs, targets = masked_batch(tokenizer, level, batch_size(level, args), args.seed, step)
            loss = F.cross_entropy(model(input_ids=inputs).logits.transpose(1, 2), targets, ignore_index=-100)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr and resume")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
            opt.step()
            step += 1
            losses.append(loss.item())
            bar.update()
            if step % 50 == 0:
                mean = sum(losses) / len(losses)
                losses.clear()
                bar.set_postfix(loss=f"{mean:.3f}", level=level_index)
                log(run, {"step": step, "loss": mean, "level": level_index})
            if step % args.eval_every == 0:
                accuracy = exact_accuracy(model, tokenizer, level, args.eval_examples)
                log(run, {"step": step, "level": level_index, "accuracy": accuracy, "context": level.context})
                bar.write(f"step {step}: level {level_index} {level}: exact accuracy {accuracy:.3f}")
                if accuracy >= args.promote_at and level_index < min(args.last_level, len(CURRICULUM) - 1):
                    level_index += 1
                    log(run, {"step": step, "promoted_to": level_index})
            if time.monotonic() - last_ckpt > args.ckpt_minutes * 60:
                checkpoint()
                last_ckpt = time.monotonic()
    except KeyboardInterrupt:
        bar.write(f"interrupted at step {step}; saving")
    finally:
        checkpoint()
        bar.close()


def whole_log(run: Path) -> str:
    """The run's log, after the log of the model it started from (`--init`): the training of
    every level the exported weights went through."""
    path = run / "log.jsonl"
    text = path.read_text() if path.exists() else ""
    first = json.loads(text.splitlines()[0]) if text else {}
    init = first.get("start", {}).get("init")
    earlier = Path(init) / "training_log.jsonl" if init else None
    if earlier is None or not earlier.exists():
        return text
    before = earlier.read_text()
    return before if before.endswith(text) else before + text  # exported over its own start: already whole


def export(args) -> None:
    """The model (safetensors) and tokenizer, loadable with from_pretrained, plus the training log."""
    tokenizer = task_tokenizer()
    model = tiny_dlm(len(tokenizer), hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.heads,
                     context=LONGEST)  # fmt: skip
    ckpt = load_checkpoint(Path(args.run) / "ckpt.pt")
    model.load_state_dict(ckpt["model"])
    model.save_pretrained(args.export)
    tokenizer.save_pretrained(args.export)
    (Path(args.export) / "training_log.jsonl").write_text(whole_log(Path(args.run)))
    save_level(Path(args.export), CURRICULUM[ckpt["level"]])
    print(f"exported step {ckpt['step']} (level {ckpt['level']}) to {args.export}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder (checkpoint and log)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=32, help="examples per step")
    parser.add_argument("--batch-tokens", type=int, help="instead of --batch: examples per step = this // context")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="1 was fastest for small models here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-examples", type=int, default=128)
    parser.add_argument("--promote-at", type=float, default=0.9)
    parser.add_argument("--last-level", type=int, default=len(CURRICULUM) - 1,
                        help="stop promoting here and keep training this level (the one to ship)")  # fmt: skip
    parser.add_argument("--ckpt-minutes", type=float, default=10.0)
    parser.add_argument("--init", help="start a new run from an exported model folder (e.g. assets/tiny-dlm)")
    parser.add_argument("--start-level", type=int, default=0, help="curriculum level a new run starts at")
    parser.add_argument("--export", help="write the model and tokenizer to this folder instead of training")
    args = parser.parse_args()
    export(args) if args.export else train(args)


if __name__ == "__main__":
    main()
