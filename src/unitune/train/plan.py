"""The plan printed before training: optimizer steps as the trainers count them, token lengths and truncation, and the
batch that fits this machine's memory."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from ..config import TrainConfig
from ..data.lengths import Lengths, from_ids, measure
from ..data.mix import Source
from ..errors import UserError, warn
from ..machine import memory_limit, world_size
from ..methods import METHODS
from ..models.hardware import Hardware


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def steps_per_epoch(cfg: TrainConfig, examples: int) -> int:
    """Optimizer steps per epoch over ``examples`` (what the trainer iterates), by the trainers' own formulas.

    Most methods: micro-batches per process, then accumulation, rounded up. The sampling methods take whole
    generation batches and TRL's sampler drops a last partial one: GRPO and RLOO's batch counts completions, so a
    step takes batch x accumulation x processes / num_generations prompts; distill samples one per prompt.
    """
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size()
    spec = METHODS[cfg.method]
    if spec.samples:
        from .methods.grpo import num_generations

        prompts = batch // num_generations(cfg, world_size()) if spec.samples_completions else batch
        if examples < prompts:
            raise UserError(f"{cfg.method.upper()} takes {prompts} prompts per optimizer step (batch x accumulation x "
                            f"processes{' / num_generations' if spec.samples_completions else ''}) but the data have "
                            f"{examples}; use more rows or a smaller batch")
        return examples // prompts
    micro = math.ceil(examples / (cfg.per_device_train_batch_size * world_size()))
    return max(math.ceil(micro / cfg.gradient_accumulation_steps), 1)


def planned_steps(cfg: TrainConfig, examples: int) -> int:
    """Optimizer steps the trainer will take: --max_steps, else the epochs times steps_per_epoch."""
    per_epoch = steps_per_epoch(cfg, examples)  # also checks GRPO has a full group of prompts
    return cfg.max_steps or math.ceil(cfg.num_train_epochs * per_epoch)


def length_plan(ds, fmt: str, tokenizer, max_length: int, converted=None) -> dict:
    """Tokens and truncation of the training rows: from the token ids their conversion made (``converted``), else
    measured from the rows as `unitune check` measures them."""
    summary = (from_ids(converted, max_length) if converted is not None else None) or measure(
        ds, fmt, Lengths(tokenizer), max_length)
    if fmt != "text" and summary["prompt_over_max_length"] == len(ds):
        shortest = summary["prompt_tokens"]["min"]
        raise UserError(f"every row's prompt alone is at least --max_length {max_length} tokens (shortest: "
                        f"{shortest}), so nothing would be trained; raise --max_length above {shortest}")
    return summary


def activation_bytes_per_token(source: str) -> int | None:
    """A generous estimate of the fp32 activations one token keeps for the backward pass (LoRA, no checkpointing).

    Measured on SmolLM2-135M (hidden 576, MLP 1536, 30 layers): 1.65 MB per token; this formula gives 2.0 MB.
    """
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(source).get_text_config()
        return 4 * cfg.num_hidden_layers * (16 * cfg.hidden_size + 5 * cfg.intermediate_size)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def merge_batches(cfg: TrainConfig, hw: Hardware, longest: int | None, bytes_per_token: int | None) -> TrainConfig:
    """Fold gradient accumulation into larger micro-batches while the longest row (tokens) fits --max_batch_tokens.

    The effective batch (micro-batch x accumulation) and so the optimizer steps stay the same; TRL normalises the
    loss over the whole effective batch, so the update is the same too. A fold must also keep the estimated
    activations under a quarter of this machine's memory. Sampling methods (GRPO, RLOO, distill) are left alone: they
    generate the completions they train on.
    """
    budget = cfg.max_batch_tokens or 0  # off by default: measured within noise on our CPUs (bench/RESULTS.md)
    if not budget or not longest or not bytes_per_token or METHODS[cfg.method].samples:
        return cfg
    micro, accum = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    fold = max((k for k in range(1, accum + 1) if accum % k == 0
                and micro * k * longest <= budget and micro * k * longest * bytes_per_token <= memory_limit() / 4),
               default=1)
    if fold == 1:
        return cfg
    return replace(cfg, per_device_train_batch_size=micro * fold, gradient_accumulation_steps=accum // fold)


def fit_memory(cfg: TrainConfig, hw: Hardware, lengths: dict, source: str) -> tuple[TrainConfig, Hardware]:
    """The batch plan and checkpointing that fit this machine (printed with the plan).

    With --max_batch_tokens: merge accumulation into larger micro-batches (merge_batches). CUDA: gradient
    checkpointing only when the estimated activations of one micro-batch exceed a quarter of the GPU's memory; below
    that it only costs time (measured in bench/RESULTS.md, GPU mode).
    """
    per_token = activation_bytes_per_token(source)
    longest = (lengths.get("row_tokens") or {}).get("max")
    cfg = merge_batches(cfg, hw, longest, per_token)
    if hw.device == "cuda" and hw.gradient_checkpointing and per_token and longest:
        import torch

        need = cfg.per_device_train_batch_size * longest * per_token * hw.dtype.itemsize / 4
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        if need <= total / 4:
            hw = replace(hw, gradient_checkpointing=False,
                         reason=f"{hw.reason}; no gradient checkpointing: activations ~{need / 2**30:.1f} GiB fit "
                                f"in a quarter of the GPU's {total / 2**30:.0f} GiB")
    return cfg, hw


def print_mix(sources: list[dict], rows: int) -> None:
    """The sources of a mixed split: each one's rows in the mix, its share and its weight."""
    print(f"unitune: data: {len(sources)} sources mixed ({rows:,} rows), drawn at random by weight (seeded by --seed) "
          "until one runs out:", flush=True)
    for source in sources:
        print(f"unitune: data:   {Source(**source).line(rows)}", flush=True)


def print_plan(cfg: TrainConfig, given: TrainConfig, rows: int, examples: int, split: str, out: Path,
               lengths: dict) -> None:
    """The plan: rows, optimizer steps over the ``examples`` the trainer iterates, batch, lr, output; lengths.
    ``rows`` None: a stream (--streaming), whose lengths were measured on its first rows."""
    steps = planned_steps(cfg, examples) if rows is not None else cfg.max_steps
    merged = (f", merged from {given.per_device_train_batch_size} x {given.gradient_accumulation_steps} to fit "
              f"--max_batch_tokens" if cfg is not given else "")
    unit = " completions" if METHODS[cfg.method].samples_completions else ""
    seen = f" ({examples} examples)" if examples != rows else ""
    what = plural(rows, "row") if rows is not None else "a stream"
    print(f"unitune: plan: {cfg.method} on {what} of '{split}'{seen if rows is not None else ''}, "
          f"{plural(steps, 'optimizer step')} (batch {cfg.per_device_train_batch_size}{unit} x accumulation "
          f"{cfg.gradient_accumulation_steps} x {plural(world_size(), 'process')}{merged}), lr {cfg.learning_rate:g}, "
          f"output {out}")
    if rows is None:
        print(f"unitune: plan: rows converted as training reads them; lengths below measured on its first "
              f"{plural(lengths['rows'], 'row')}")
    else:
        print(f"unitune: plan: {lengths['tokens']} tokens per epoch (prompt + reply, at most --max_length each)")
    cut = lengths["truncated"]
    if cut["rows"] and METHODS[cfg.method].scores:  # TRL's RewardTrainer drops a pair longer than max_length
        if cut["rows"] >= rows:
            raise UserError(f"every pair is longer than --max_length {cfg.max_length}, and the reward trainer drops "
                            "such pairs; raise --max_length")
        warn(f"{cut['rows']} pairs exceed --max_length {cfg.max_length} and will be dropped (the reward trainer "
             "keeps only whole pairs); raise --max_length to keep them")
    elif cut["rows"]:
        warn(f"{cut['rows']} rows exceed --max_length {cfg.max_length} and will be truncated (by up to "
             f"{cut['max_cut']} tokens); raise --max_length to keep them whole")
