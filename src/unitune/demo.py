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

from .config import EvalConfig, MergeConfig, TrainConfig
from .deploy.merge import merge_run
from .evaluate.report import markdown_table, ordered, write_report
from .evaluate.run import run_eval
from .tools import TOOL_TEMPLATE
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
# The calculator task (--methods tools or all): its own folder and evaluation (other data, a tool-capable template, and
# every entry answering with the calculator): SFT on the tool-call episodes, merged, then GRPO with the calculator.
TOOL_DEMO: dict[str, dict] = {
    "sft_tools": {"method": "sft", "max_steps": 20, "per_device_train_batch_size": 8, "learning_rate": 5e-4},
    "grpo_tools": {"method": "grpo", "model_name": "{runs_dir}/sft_tools_merged", "tools": ["calculator"],
                   "max_steps": 10, "per_device_train_batch_size": 8, "learning_rate": 3e-4, "num_generations": 4,
                   "max_completion_length": 96},
}
TOOL_EVAL = {"batch_size": 25, "max_new_tokens": 64, "reward_funcs": ["accuracy", "format"]}  # GRPO's, for every entry


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
    tools = bool(methods) and ("tools" in methods or "all" in methods)
    results = {}
    if plan:
        steps = len(plan) + 1 + 3 * tools
        train_plan(plan, runs_dir, started, steps)
        print(f"\n=== unitune demo [{len(plan) + 1}/{steps}]: evaluate every run and the base model "
              f"({time.time() - started:.0f}s elapsed) ===", flush=True)
        # One yardstick for mean_reward, so the base and the other runs compare: GRPO's rewards, else the demo's RM.
        rewarded = [flags for flags in plan.values() if "reward_funcs" in flags]
        rewards = {"reward_funcs": rewarded[0]["reward_funcs"]} if rewarded else \
            {"reward_model": str(Path(runs_dir) / "rm_demo")} if "rm" in plan else {}
        results = evaluate(EvalConfig(runs_dir=runs_dir, runs=[f"{name}_demo" for name in plan],
                                      max_samples=max_samples, **DEMO_EVAL, **rewards), runs_dir)
    if tools:
        results |= tool_demo(str(Path(runs_dir) / "tools"), started, max_samples, done=len(plan) + bool(plan))
    print(f"\nunitune demo: done in {time.time() - started:.0f}s")
    return results


def train_plan(plan: dict[str, dict], runs_dir: str, started: float, steps: int, done: int = 0) -> None:
    """Train each run of ``plan`` into <runs_dir>/<name>_demo, numbered from ``done`` + 1 of ``steps``."""
    for number, (name, given) in enumerate(plan.items(), done + 1):
        flags = {k: v.format(runs_dir=runs_dir) if isinstance(v, str) else v for k, v in given.items()
                 if k not in ("with", "needs")}
        method = flags.pop("method", name)
        print(f"\n=== unitune demo [{number}/{steps}]: train {name} ({time.time() - started:.0f}s elapsed) ===",
              flush=True)
        rows = flags["max_steps"] * flags["per_device_train_batch_size"]  # one pass: prepare only what is used
        cfg = TrainConfig(method=method, output_dir=str(Path(runs_dir) / f"{name}_demo"), overwrite_output_dir=True,
                          gradient_accumulation_steps=1, max_train_samples=rows, save_steps=10_000, **flags)
        run_training(cfg)


def tool_demo(runs_dir: str, started: float, max_samples: int, done: int) -> dict:
    """SFT on the calculator episodes, its adapter merged (GRPO trains a new one on top), GRPO with the calculator,
    then task accuracy of the base, the SFT run and the GRPO run, each answering with the calculator."""
    steps = done + 3
    template = {"dataset": "calculator", "chat_template": str(TOOL_TEMPLATE)}
    train_plan({"sft_tools": TOOL_DEMO["sft_tools"] | template}, runs_dir, started, steps, done)
    merge_run(MergeConfig(run=str(Path(runs_dir) / "sft_tools_demo"), output=f"{runs_dir}/sft_tools_merged",
                          overwrite=True))
    train_plan({"grpo_tools": TOOL_DEMO["grpo_tools"] | template}, runs_dir, started, steps, done + 1)
    print(f"\n=== unitune demo [{steps}/{steps}]: evaluate the tool runs and the base model, each with the calculator "
          f"({time.time() - started:.0f}s elapsed) ===", flush=True)
    return evaluate(EvalConfig(runs_dir=runs_dir, runs=["sft_tools_demo", "grpo_tools_demo"], max_samples=max_samples,
                               skip_perplexity=True, **TOOL_EVAL), runs_dir)


def evaluate(cfg: EvalConfig, runs_dir: str) -> dict:
    results = run_eval(cfg)
    report = write_report(runs_dir, cfg.output)
    print("\n" + markdown_table(ordered(results)) + f"\n\nreport: {report}")
    return results
