"""Where a GRPO step's time goes: generation, rewards, log-prob passes, the training forward and the backward pass.

    .venv/bin/python bench/profile_grpo.py            # unitune's GRPO
    .venv/bin/python bench/profile_grpo.py --trl      # plain TRL GRPOTrainer, hand-tuned for CPU

Same model, data, LoRA, rewards and generation settings as `make bench`'s GRPO (bench/run.py). Each phase is timed
around TRL's own methods; "backward + optimizer" is the rest of the step. Prints the medians after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import run

PHASES = {  # TRL GRPOTrainer method -> phase
    "_generate": "generation",
    "_calculate_rewards": "rewards",
    "_get_per_token_logps_and_entropies": "log-prob passes",  # also inside the training forward: subtracted there
    "_compute_loss": "training forward",
}


def timed(trainer, spent: dict) -> None:
    """Wrap the trainer's phase methods to add their wall time to ``spent`` (per step)."""
    for method, phase in PHASES.items():
        inner = getattr(trainer, method)

        def wrapper(*args, _inner=inner, _phase=phase, **kwargs):
            start = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                spent[_phase] = spent.get(_phase, 0.0) + time.perf_counter() - start
                if _phase == "log-prob passes" and spent.get("_in_loss"):
                    spent["_inside_loss"] = spent.get("_inside_loss", 0.0) + time.perf_counter() - start

        setattr(trainer, method, wrapper)
    loss = trainer._compute_loss

    def compute_loss(*args, **kwargs):
        spent["_in_loss"] = True
        try:
            return loss(*args, **kwargs)
        finally:
            spent["_in_loss"] = False

    trainer._compute_loss = compute_loss


def profile(trainer) -> dict:
    from transformers import TrainerCallback

    steps: list[dict] = []
    spent: dict = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            spent.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - self.start
            inside = spent.get("_inside_loss", 0.0)
            split = {"generation": spent.get("generation", 0.0), "rewards": spent.get("rewards", 0.0),
                     "log-prob passes": spent.get("log-prob passes", 0.0) - inside,
                     "training forward": spent.get("training forward", 0.0)}
            split["backward + optimizer"] = total - sum(split.values())
            split["step"] = total
            steps.append(split)

    timed(trainer, spent)
    trainer.add_callback(Clock())
    trainer.train()
    kept = steps[run.WARMUP:]
    split = {k: statistics.median(s[k] for s in kept) for k in kept[0]}
    logs = [e for e in trainer.state.log_history if "completions/mean_length" in e][run.WARMUP:]
    split["generated tokens per step"] = statistics.median(run.GRPO_COMPLETIONS * e["completions/mean_length"]
                                                          for e in logs)
    split["rewards logged"] = [e.get("reward") for e in logs]
    return split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trl", action="store_true", help="profile plain TRL GRPOTrainer (hand-tuned)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer = run.trl_grpo_trainer(out) if args.trl else run.unitune_grpo_trainer(out)
        with run.unitune_speedups("grpo_trl" if args.trl else "grpo_unitune"):
            split = profile(trainer)
    step = split["step"]
    for phase, seconds in split.items():
        if isinstance(seconds, float) and phase != "generated tokens per step":
            print(f"{phase:>22}: {seconds:6.2f} s  {100 * seconds / step:5.1f}%")
    print(json.dumps(split))


if __name__ == "__main__":
    main()
