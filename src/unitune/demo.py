"""`unitune demo`: the main job on the embedded model and bundled data.

    make demo          # == unitune demo
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import TrainConfig
from .train import run_training

# Step budgets sized for a 2-core CPU; each row: method -> flags over the TrainConfig defaults.
DEMO_PLAN: dict[str, dict] = {
    "sft": {"max_steps": 30, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1},
}


def run_demo(runs_dir: str = "runs") -> list[Path]:
    started = time.time()
    outputs = []
    for number, (method, flags) in enumerate(DEMO_PLAN.items(), 1):
        print(f"\n=== unitune demo [{number}/{len(DEMO_PLAN)}]: {method} ===", flush=True)
        cfg = TrainConfig(method=method, output_dir=str(Path(runs_dir) / f"{method}_demo"),
                          overwrite_output_dir=True, **flags)
        outputs.append(run_training(cfg))
    print(f"\nunitune demo: {len(outputs)} run(s) in {runs_dir}/ ({time.time() - started:.0f}s)")
    return outputs
