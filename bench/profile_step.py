"""Where a training step's time goes: torch.profiler over two steps after two warm-up steps.

    .venv/bin/python bench/profile_step.py                      # unitune SFT, micro-batch 4 (no merging)
    .venv/bin/python bench/profile_step.py --batch 16           # unitune SFT, micro-batch 16
    .venv/bin/python bench/profile_step.py --trl                # plain TRL, hand-tuned (bench's 4 x 4)
    .venv/bin/python bench/profile_step.py --method dpo --rows 25

Same models, data and settings as `make bench` (bench/run.py). Prints the ops that took the most time.
"""

from __future__ import annotations

import argparse
import tempfile

import run
import torch
from torch.profiler import ProfilerActivity, profile, schedule
from transformers import TrainerCallback


class Step(TrainerCallback):
    def __init__(self, prof):
        self.prof = prof

    def on_step_end(self, args, state, control, **kwargs):
        self.prof.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="sft", choices=("sft", "dpo"))
    parser.add_argument("--batch", type=int, default=4, help="unitune's micro-batch (no accumulation)")
    parser.add_argument("--trl", action="store_true", help="profile plain TRL (hand-tuned) instead of unitune")
    parser.add_argument("--rows", type=int, default=25, help="ops to print")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        if args.trl:
            trainer = run.trl_trainer(args.method, out, tuned=True)
        else:
            trainer = run.unitune_trainer(args.method, out, {"per_device_train_batch_size": args.batch,
                                                             "gradient_accumulation_steps": 1,
                                                             "max_batch_tokens": 0})
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available()
                                                          else []),
                     schedule=schedule(wait=0, warmup=2, active=2, repeat=1)) as prof:
            trainer.add_callback(Step(prof))
            trainer.train()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
