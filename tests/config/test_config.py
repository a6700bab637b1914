"""Flag parsing, defaults and YAML: the one config source."""

import pytest

from unitune.cli import parse_config
from unitune.config import TrainConfig
from unitune.errors import UserError
from unitune.methods import METHODS


def parse(*argv):
    return parse_config(TrainConfig, list(argv), "unitune train")


def test_seed_defaults():
    cfg = parse("--method", "sft")
    assert (cfg.num_train_epochs, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (3, 4, 4)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.05)
    assert cfg.use_qlora == "auto"
    assert cfg.model_name is None and cfg.dataset is None and cfg.eval_split is None
    assert cfg.output_dir == "runs/sft_smollm2-135m-instruct"


@pytest.mark.parametrize("method,lr", [("sft", 2e-4), ("dpo", 5e-5), ("orpo", 8e-6), ("kto", 5e-5), ("grpo", 5e-5)])
def test_learning_rate_per_method(method, lr):
    assert parse("--method", method).learning_rate == lr
    assert METHODS[method].learning_rate == lr


def test_flags_override_and_types():
    cfg = parse("--method", "dpo", "--learning_rate", "1e-5", "--max_train_samples", "32", "--model_name",
                "org/Some-Model", "--train_on_prompt", "--reward_weights", "1", "0.5",
                "--reward_funcs", "accuracy", "format")
    assert cfg.learning_rate == 1e-5 and cfg.max_train_samples == 32
    assert cfg.output_dir == "runs/dpo_Some-Model"
    assert cfg.train_on_prompt is True
    assert cfg.reward_weights == [1.0, 0.5] and cfg.reward_funcs == ["accuracy", "format"]


@pytest.mark.parametrize("argv,expected", [((), "auto"), (("--use_qlora",), "true"),
                                           (("--use_qlora", "false"), "false"), (("--use_qlora", "true"), "true")])
def test_use_qlora_forms(argv, expected):
    assert parse("--method", "sft", *argv).use_qlora == expected


def test_dashed_alias_and_bool_values():
    assert parse("--method", "sft", "--dry-run").dry_run is True
    assert parse("--method", "sft", "--train_on_prompt", "false").train_on_prompt is False


def test_yaml_under_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: orpo\nlearning_rate: 0.001\nlora_r: 8\n")
    cfg = parse("--config", str(path), "--lora_r", "4")
    assert cfg.method == "orpo" and cfg.learning_rate == 0.001 and cfg.lora_r == 4


def test_unknown_flag_suggests():
    with pytest.raises(UserError, match=r"unknown flag '--learning_rat'.*--learning_rate"):
        parse("--method", "sft", "--learning_rat", "1")


def test_unknown_method_lists_choices():
    with pytest.raises(UserError, match=r"unknown method 'dpp'.*'dpo'.*sft, dpo, orpo, kto, grpo"):
        parse("--method", "dpp")


def test_method_required():
    with pytest.raises(UserError, match="--method is required"):
        parse()


def test_yaml_values_typed_like_flags(tmp_path):
    """PyYAML reads 2e-4 as a string and true as a bool: each value goes through its flag's conversion."""
    from unitune.cli import parse_config
    from unitune.config import TrainConfig

    config = tmp_path / "c.yaml"
    config.write_text("method: sft\nlearning_rate: 2e-4\nuse_qlora: true\nnum_train_epochs: '1'\nlora_r: 8.0\n"
                      "train_on_prompt: 'yes'\nreward_funcs: [length, format]\nreward_weights: [1, '0.5']\n")
    cfg = parse_config(TrainConfig, ["--config", str(config)], "unitune train")
    assert cfg.learning_rate == 2e-4 and cfg.use_qlora == "true" and cfg.num_train_epochs == 1.0
    assert cfg.lora_r == 8 and cfg.train_on_prompt is True
    assert cfg.reward_funcs == ["length", "format"] and cfg.reward_weights == [1.0, 0.5]
    assert parse_config(TrainConfig, ["--config", str(config), "--learning_rate", "1e-5"], "t").learning_rate == 1e-5


@pytest.mark.parametrize("line,message", [
    ("lora_r: abc", "lora_r: 'abc' in"),
    ("lora_r: 2.5", "lora_r: 2.5 in"),
    ("train_on_prompt: maybe", "train_on_prompt: 'maybe' in"),
    ("learning_rate: fast", "learning_rate: 'fast' in"),
])
def test_yaml_wrong_type_is_one_line(capsys, tmp_path, line, message):
    from unitune.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"method: sft\n{line}\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "is not a valid" in err and "as on the command line" in err, err


def test_yaml_single_value_for_a_list_flag():
    from unitune.config.fields import _typed

    assert _typed(list[str], "length") == ["length"] and _typed(list[float], 1) == [1.0]
