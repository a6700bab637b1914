"""Unit tests of the gaps (no training, no subprocess, no model; one test uses the tokenizer): preference metrics on
ties, NaN and no pairs; preference pairs with a system turn; reward loading errors."""

import pytest
from datasets import Dataset

from unitune.train import rewards
from unitune.data.load import pair_row, row_views
from unitune.errors import UserError
from unitune.train.rewards import RewardLog, build_rewards, load_reward
from unitune.evaluate.scoring import preference_metrics

NAN = float("nan")


# ---------------------------------------------------------------- preference_metrics

def test_lower_chosen_loss_is_correct_and_a_tie_is_not():
    """Hand-computed: pair 0 right (1 < 3), pair 1 a tie (documented: ties count as wrong), pair 2 wrong."""
    m = preference_metrics([1.0, 2.0, 4.0], [3.0, 2.0, 1.0])
    assert (m["preference_correct"], m["preference_total"]) == (1, 3)
    assert m["preference_accuracy"] == pytest.approx(1 / 3)
    assert (m["avg_chosen_loss"], m["avg_rejected_loss"], m["loss_margin"]) == pytest.approx((7 / 3, 2.0, -1 / 3))
    assert preference_metrics([0.5], [0.5])["preference_accuracy"] == 0.0


@pytest.mark.parametrize("chosen,rejected", [([NAN, 1.0], [2.0, 3.0]), ([1.0, 1.0], [NAN, 3.0]),
                                             ([NAN, 1.0], [NAN, 3.0])])
def test_nan_pair_is_never_correct_and_accuracy_stays_a_number(chosen, rejected):
    m = preference_metrics(chosen, rejected)
    assert (m["preference_correct"], m["preference_total"], m["preference_accuracy"]) == (1, 2, 0.5)


def test_nan_pair_does_not_poison_the_average_losses():
    m = preference_metrics([NAN, 1.0], [2.0, 3.0])  # averaged over the pairs both of whose losses are numbers
    assert (m["avg_chosen_loss"], m["avg_rejected_loss"], m["loss_margin"]) == (1.0, 3.0, 2.0)


def test_no_pairs():
    m = preference_metrics([], [])
    assert (m["preference_correct"], m["preference_total"]) == (0, 0) and all(m[k] is None for k in (
        "preference_accuracy", "avg_chosen_loss", "avg_rejected_loss", "loss_margin"))


# ---------------------------------------------------------------- pair_row with a system turn
SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hi?"}
GOOD = {"role": "assistant", "content": "Hello."}
BAD = {"role": "assistant", "content": "Go away."}
SPLIT = {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}


@pytest.mark.parametrize("row,fmt", [
    ({"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, "preference_implicit"),
    ({"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}, "preference"),
    ({"prompt": [SYSTEM, USER], "chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, "preference"),
    ({"prompt": [SYSTEM, USER], "chosen": "Hello.", "rejected": "Go away."}, "preference"),
    ({"prompt": "Hi?", "chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, "preference"),
], ids=["implicit", "prompt_messages", "repeated_prompt_messages", "text_replies", "repeated_prompt_text"])
def test_system_turn_stays_in_the_prompt(row, fmt):
    assert pair_row(row, fmt) == SPLIT
    prompt, replies = row_views(row, fmt)
    assert prompt == [SYSTEM, USER] and all(turn["role"] == "assistant" for reply in replies for turn in reply)


def test_rendered_pair_has_the_system_turn_before_both_replies(tokenizer):
    from unitune.templates import render_pairs

    pair = render_pairs(Dataset.from_list([pair_row({"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]},
                                                     "preference_implicit")]), tokenizer)[0]
    assert pair["prompt"].count("Be brief.") == 1 and pair["prompt"].index("Be brief.") < pair["prompt"].index("Hi?")
    assert (pair["chosen"], pair["rejected"]) == ("Hello.<|im_end|>", "Go away.<|im_end|>")


# ---------------------------------------------------------------- reward loading
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


def test_a_second_signal_exits_at_once_but_a_duplicate_does_not(monkeypatch):
    """SLURM signals every process of a step and torchrun forwards the signal again: the same stop, delivered
    twice within a few seconds, must not cut the checkpoint short; a later second signal exits at once."""
    import signal

    from unitune.train import lifecycle

    clock, exits = [100.0], []
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lifecycle.os, "_exit", exits.append)
    stop = lifecycle.GracefulStop()
    stop._handle(signal.SIGTERM, None)
    assert stop.signal == signal.SIGTERM and exits == []
    clock[0] += 0.5
    stop._handle(signal.SIGTERM, None)  # the duplicate
    assert exits == []
    clock[0] += 10
    stop._handle(signal.SIGINT, None)  # the user insists
    assert exits == [130]


def test_a_bar_in_a_log_file_prints_whole_lines(capsys):
    """stderr is not a terminal here, as in a log file: each refresh is its own line, no carriage returns."""
    from unitune.console import bar

    progress = bar(total=3, desc="training", unit="step", mininterval=0, delay=0)
    for _ in range(3):
        progress.update(1)
    progress.close()
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    assert all(line.startswith("training: ") for line in err.splitlines())
    assert "3/3" in err.splitlines()[-1]


def test_dataset_bars_only_for_long_preparations(monkeypatch):
    import datasets

    from unitune import console as output

    monkeypatch.setattr(output, "_quiet", True)
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with output.dataset_bars(output.LONG_DATA_ROWS - 1):
            assert datasets.are_progress_bars_disabled()
        with output.dataset_bars(output.LONG_DATA_ROWS):
            assert not datasets.are_progress_bars_disabled()
        assert datasets.are_progress_bars_disabled()
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
