"""Every shipped YAML config loads, validates, and plans a run (dry run on the tiny model)."""

from pathlib import Path

import pytest

from unitune.cli import main, parse_config
from unitune.config import EvalConfig, TrainConfig
from unitune.methods import METHODS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRAIN = sorted(p for p in EXAMPLES.glob("*.yaml") if p.stem != "eval")


def test_one_example_per_method():
    assert sorted(p.stem for p in TRAIN) == sorted(METHODS)


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.stem)
def test_train_example_validates_and_plans(path, tiny_model_dir, tmp_path, capsys):
    cfg = parse_config(TrainConfig, ["--config", str(path)], "unitune train")
    assert cfg.method == path.stem
    code = main(["train", "--config", str(path), "--model_name", str(tiny_model_dir), "--dry-run",
                 "--output_dir", str(tmp_path / "out"), "--max_train_samples", "16"])
    assert code == 0, capsys.readouterr().err
    assert f"plan: {path.stem} on 16 rows" in capsys.readouterr().out


def test_eval_example_validates():
    cfg = parse_config(EvalConfig, ["--config", str(EXAMPLES / "eval.yaml")], "unitune eval")
    assert cfg.runs_dir == "runs" and cfg.output == "runs/evaluation_results.json"
