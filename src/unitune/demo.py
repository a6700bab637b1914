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
_GRPO_SAMPLING = {k: v for k, v in DEMO_PLAN["grpo"].items() if k != "reward_funcs"}
# run name -> its flags, for `--methods all` or a method named; "method" when it is not the name, "with" for the
# method whose choice brings it along, "needs" for a run it needs first, and {runs_dir} in a flag is the demo's folder.
MORE_DEMOS: dict[str, dict] = {
    "rloo": DEMO_PLAN["grpo"],  # the same rewards and sampling: the two compare on the same footing
    # a reward model on the preference pairs (30 steps: 0.95 reward accuracy on the held-out pairs), then GRPO on it
    "rm": {"max_steps": 30, "per_device_train_batch_size": 8, "learning_rate": 3e-4},
    "grpo_rm": {"method": "grpo", "with": "rm", **_GRPO_SAMPLING, "reward_model": "{runs_dir}/rm_demo"},
    # the student learns the demo's SFT run on its own samples
    "distill": {"needs": "sft", "max_steps": 10, "per_device_train_batch_size": 8, "learning_rate": 3e-4,
                "max_completion_length": 24, "teacher": "{runs_dir}/sft_demo"},
}
DEMO_EVAL = {"batch_size": 50, "max_new_tokens": 32}


def demo_plan(methods: list[str] | None) -> dict[str, dict]:
    """The runs to train, by name, for --methods (None: the seed's five; "all": every one)."""
    every = DEMO_PLAN | MORE_DEMOS
    if methods and "all" in methods:
        return every
    chosen = list(methods or DEMO_PLAN)
    chosen += [flags["needs"] for name, flags in every.items() if name in chosen and "needs" in flags]
    return {name: flags for name, flags in every.items() if flags.get("with", flags.get("method", name)) in chosen}


def run_demo(runs_dir: str = "runs/demo", methods: list[str] | None = None, max_samples: int = 100) -> dict:
    started = time.time()
    plan = demo_plan(methods)
    for number, (name, given) in enumerate(plan.items(), 1):
        flags = {k: v.format(runs_dir=runs_dir) if isinstance(v, str) else v for k, v in given.items()
                 if k not in ("with", "needs")}
        method = flags.pop("method", name)
        print(f"\n=== unitune demo [{number}/{len(plan) + 1}]: train {name} "
              f"({time.time() - started:.0f}s elapsed) ===", flush=True)
        rows = flags["max_steps"] * flags["per_device_train_batch_size"]  # one pass: prepare only what is used
        cfg = TrainConfig(method=method, output_dir=str(Path(runs_dir) / f"{name}_demo"), overwrite_output_dir=True,
                          gradient_accumulation_steps=1, max_train_samples=rows, save_steps=10_000, **flags)
        run_training(cfg)
    print(f"\n=== unitune demo [{len(plan) + 1}/{len(plan) + 1}]: evaluate every run and the base model "
          f"({time.time() - started:.0f}s elapsed) ===", flush=True)
    # One yardstick for mean_reward, so the base and the other runs compare: GRPO's rewards, else the demo's RM.
    rewarded = [flags for flags in plan.values() if "reward_funcs" in flags]
    rewards = {"reward_funcs": rewarded[0]["reward_funcs"]} if rewarded else \
        {"reward_model": str(Path(runs_dir) / "rm_demo")} if "rm" in plan else {}
    eval_cfg = EvalConfig(runs_dir=runs_dir, runs=[f"{name}_demo" for name in plan], max_samples=max_samples,
                          **DEMO_EVAL, **rewards)
    results = run_eval(eval_cfg)
    report = write_report(runs_dir, eval_cfg.output)
    print("\n" + markdown_table(ordered(results)))
    print(f"\nunitune demo: done in {time.time() - started:.0f}s; report: {report}")
    return results
