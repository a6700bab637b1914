"""`unitune demo`: the main job. Trains the seed's five methods on the embedded model and bundled data,
evaluates every run plus the base model, writes the report and prints the metrics table.

    make demo                      # == unitune demo
    unitune demo --methods all     # and the methods after the seed's (MORE_DEMOS)

Step budgets are sized so the whole pipeline ends within 10 minutes on a 2-core CPU; see the README
for the measured table.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import EvalConfig, TrainConfig
from .evaluate.report import markdown_table, ordered, write_report
from .evaluate.run import run_eval
from .train.run import run_training

# method -> flags over the TrainConfig defaults. Why these values:
# - no gradient accumulation: more optimizer steps in the budget (the seed's 4 x 4 = 16 rows per step
#   would leave ~6 steps per method); each run reads exactly the rows it trains on, once;
# - learning rates above the seed's defaults where a few dozen steps at the default barely move the
#   preference margins (measured, see README "The demo");
# - GRPO adds the dense `reference` reward (token F1 against the chosen reply) to accuracy + format:
#   the base model rarely hits the answer format, so those alone give little signal in 10 steps.
DEMO_PLAN: dict[str, dict] = {
    "sft": {"max_steps": 12, "per_device_train_batch_size": 8, "learning_rate": 2e-4},
    "dpo": {"max_steps": 10, "per_device_train_batch_size": 4, "learning_rate": 3e-4},
    "orpo": {"max_steps": 12, "per_device_train_batch_size": 4, "learning_rate": 5e-4},
    "kto": {"max_steps": 12, "per_device_train_batch_size": 4, "learning_rate": 3e-4},
    "grpo": {"max_steps": 10, "per_device_train_batch_size": 8, "learning_rate": 3e-4, "max_completion_length": 24,
             "num_generations": 4, "reward_funcs": ["accuracy", "format", "reference"]},
}
MORE_DEMOS: dict[str, dict] = {  # in `--methods all`, or named
    "rloo": DEMO_PLAN["grpo"],  # the same rewards and sampling: the two compare on the same footing
}
DEMO_EVAL = {"batch_size": 50, "max_new_tokens": 32}


def run_demo(runs_dir: str = "runs/demo", methods: list[str] | None = None, max_samples: int = 100) -> dict:
    started = time.time()
    every = DEMO_PLAN | MORE_DEMOS
    chosen = list(every) if methods and "all" in methods else methods or list(DEMO_PLAN)
    plan = {m: flags for m, flags in every.items() if m in chosen}
    for number, (method, flags) in enumerate(plan.items(), 1):
        print(f"\n=== unitune demo [{number}/{len(plan) + 1}]: train {method} "
              f"({time.time() - started:.0f}s elapsed) ===", flush=True)
        rows = flags["max_steps"] * flags["per_device_train_batch_size"]  # one pass: prepare only what is used
        cfg = TrainConfig(method=method, output_dir=str(Path(runs_dir) / f"{method}_demo"), overwrite_output_dir=True,
                          gradient_accumulation_steps=1, max_train_samples=rows, save_steps=10_000, **flags)
        run_training(cfg)
    print(f"\n=== unitune demo [{len(plan) + 1}/{len(plan) + 1}]: evaluate every run and the base model "
          f"({time.time() - started:.0f}s elapsed) ===", flush=True)
    # GRPO's rewards score every entry, so the base and the other methods have a mean_reward to compare with.
    rewarded = [flags for flags in plan.values() if "reward_funcs" in flags]
    rewards = {"reward_funcs": rewarded[0]["reward_funcs"]} if rewarded else {}
    eval_cfg = EvalConfig(runs_dir=runs_dir, methods=list(plan), max_samples=max_samples, **DEMO_EVAL, **rewards)
    results = run_eval(eval_cfg)
    report = write_report(runs_dir, eval_cfg.output)
    print("\n" + markdown_table(ordered(results)))
    print(f"\nunitune demo: done in {time.time() - started:.0f}s; report: {report}")
    return results
