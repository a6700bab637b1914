"""Loading GRPO reward functions: built-ins, files and modules; every failure is one line naming the function."""

import pytest

from unitune.errors import UserError
from unitune.train import rewards
from unitune.train.rewards import RewardLog, build_rewards, load_reward

REWARDS = "def brevity(prompts, completions, **_):\n    return [1.0 / len(c) for c in completions]\n\n" \
          "def helper(x):\n    return x\n\n_private = print\n"


def load_error(spec: str) -> str:
    with pytest.raises(UserError) as caught:
        load_reward(spec)
    message = str(caught.value)
    assert "\n" not in message, message  # the CLI prints it as one line
    return message


def test_builtin_and_file_functions_load(tmp_path):
    assert load_reward("accuracy") is rewards.accuracy and load_reward("unitune.train.rewards:length") is rewards.length
    (tmp_path / "mine.py").write_text(REWARDS)
    assert load_reward(f"{tmp_path / 'mine.py'}:brevity")(None, ["ab", "abcd"]) == [0.5, 0.25]


def test_unknown_builtin_lists_the_builtins():
    assert load_error("acuracy").startswith("unknown reward 'acuracy'; use a built-in (accuracy, format, length, "
                                            "reference), path/to/file.py:function or package.module:function")


def test_missing_file(tmp_path):
    assert load_error(f"{tmp_path / 'nope.py'}:f") == f"reward file not found: {tmp_path / 'nope.py'}; check the " \
                                                      "path in --reward_funcs"


@pytest.mark.parametrize("spec,where", [("{file}:score", "{file}"), ("unitune.train.rewards:score", "unitune.train.rewards")])
def test_missing_function_lists_the_public_functions(tmp_path, spec, where):
    (tmp_path / "mine.py").write_text(REWARDS)
    message = load_error(spec.format(file=tmp_path / "mine.py"))
    assert message.startswith(f"no function 'score' in {where.format(file=tmp_path / 'mine.py')}; functions there: ")
    if where == "{file}":
        assert message.endswith("functions there: brevity, helper")  # not _private
    else:
        assert "accuracy" in message and "reference" in message


@pytest.mark.parametrize("code", [
    "x = 1 / 0\n",
    'raise RuntimeError("config missing\\nsee the docs")\n',
], ids=["zero_division", "multi_line_message"])
def test_file_that_raises_at_import_is_one_line_naming_it(tmp_path, code):
    (tmp_path / "broken.py").write_text(code)
    message = load_error(f"{tmp_path / 'broken.py'}:f")
    assert message.startswith(f"reward file {tmp_path / 'broken.py'} failed to import (") and "Error: " in message


def test_module_that_cannot_be_imported():
    assert load_error("no_such_reward_pkg.sub:f").startswith("cannot import reward module 'no_such_reward_pkg.sub' "
                                                             "(No module named 'no_such_reward_pkg')")


def test_module_that_raises_at_import_is_a_user_error(tmp_path, monkeypatch):
    (tmp_path / "unitune_units_broken_reward.py").write_text("x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "unitune_units_broken_reward" in load_error("unitune_units_broken_reward:f")


@pytest.mark.parametrize("name,column", [("accuracy", "answer"), ("reference", "chosen")])
def test_builtin_needing_a_missing_column_names_it(name, column):
    with pytest.raises(UserError) as caught:
        build_rewards(["length", name], ["prompt", "text"], RewardLog())
    assert str(caught.value).startswith(f"reward '{name}' needs a '{column}' column, found [prompt, text]")
    funcs, why = build_rewards(["length", name], ["prompt", column], RewardLog())
    assert [f.__name__ for f in funcs] == ["length", name] and why == f"length, {name} (from --reward_funcs)"
