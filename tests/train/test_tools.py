"""GRPO with tool calls (unitune.tools): the built-in calculator, loading --tools and --environment with one-line
errors, the template check, and a whole GRPO run whose rollouts call the tools through TRL's loop. The model's
choices in that run are scripted (a random tiny model calls no tool); the embedded model calls them for real in
test_real_model.py."""

import json
import re

import pytest
import trl

from unitune.cli import main, parse_config
from unitune.config import TrainConfig
from unitune.errors import UserError
from unitune.models.load import load_tokenizer
from unitune.tools import TEMPLATES, TOOL_TEMPLATE, calculator, check_template, load_environment, load_tools
from unitune.train.rewards import accuracy, completion_text, episode_text

from conftest import read_json

TOOLS_FILE = '''
def add(a: int, b: int) -> int:
    """
    Adds two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


def broken(expression: str) -> str:
    """
    A calculator that always fails.

    Args:
        expression: The arithmetic to evaluate.
    """
    raise RuntimeError("the tool broke")


def undocumented(x: int) -> int:
    return x


class Counter:
    def reset(self, **row):
        self.count = 0

    def increment(self, step: int) -> int:
        """
        Adds step to the counter.

        Args:
            step: How much to add.
        """
        self.count += step
        return self.count

    def get_reward(self) -> float:
        return float(self.count)


class NoReset:
    pass
'''


@pytest.fixture
def tools_file(tmp_path):
    path = tmp_path / "my_tools.py"
    path.write_text(TOOLS_FILE)
    return path


@pytest.mark.parametrize("expression,value", [("4837 * 2919", "14119203"), ("7 / 2", "3.5"), ("6 / 3", "2"),
                                              ("(3 + 4) * 2 ^ 3", "56"), ("-5 + 2", "-3")])
def test_calculator_values(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize("expression,error", [("__import__('os')", "not arithmetic"), ("2 ** 1000", "too large"),
                                              ("1 / 0", "division by zero"), ("3 +", "cannot parse")])
def test_calculator_refuses_with_an_error_the_model_reads(expression, error):
    with pytest.raises((ValueError, ZeroDivisionError), match=error):
        calculator(expression)


def test_tools_load_from_builtins_files_and_several_names(tools_file):
    tools = load_tools(["calculator", f"{tools_file}:add,broken"])
    assert [t.__name__ for t in tools] == ["calculator", "add", "broken"]
    assert load_environment(f"{tools_file}:Counter").__name__ == "Counter"


@pytest.mark.parametrize("spec,message", [
    ("{file}:undocumented", "tool 'undocumented' from --tools cannot be described to the model"),
    ("{file}:missing", "no function 'missing' in {file}; functions there: add, broken, undocumented, Counter, NoReset"),
    ("{dir}/nowhere.py:add", "tool file not found: {dir}/nowhere.py; check the path in --tools"),
    ("abacus", "unknown tool 'abacus'; use a built-in (calculator)"),
    ("calculator,calculator", "unknown tool"),
])
def test_a_tool_spec_that_cannot_load_is_one_line(tools_file, spec, message):
    spec, message = (s.format(file=tools_file, dir=tools_file.parent) for s in (spec, message))
    with pytest.raises(UserError) as caught:
        load_tools([spec])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_environment_without_reset_or_tools_is_refused(tools_file):
    with pytest.raises(UserError, match="is not a class with a reset"):
        load_environment(f"{tools_file}:NoReset")
    with pytest.raises(UserError, match="not a class with a reset"):
        load_environment(f"{tools_file}:add")


def test_tools_are_grpo_flags_and_file_paths_are_kept_absolute(tools_file, monkeypatch):
    monkeypatch.chdir(tools_file.parent)
    cfg = parse_config(TrainConfig, ["--method", "grpo", "--tools", "calculator", "my_tools.py:add"], "t")
    assert cfg.tools == ["calculator", f"{tools_file}:add"]
    with pytest.raises(UserError, match="--tools and --environment are GRPO's"):
        parse_config(TrainConfig, ["--method", "sft", "--tools", "calculator"], "t")
    with pytest.raises(UserError, match="--eval_generation replies without the tools"):
        parse_config(TrainConfig, ["--method", "grpo", "--tools", "calculator", "--eval_generation", "8"], "t")


@pytest.mark.parametrize("template,refused", [(None, "renders no tool calls"), ("llama3.jinja", "renders no tool"),
                                              ("qwen2_5.jinja", None), ("llama3_1.jinja", None)])
def test_a_template_that_cannot_carry_tool_calls_is_refused(embedded_dir, template, refused):
    tokenizer = load_tokenizer(str(embedded_dir))
    if template:
        tokenizer.chat_template = (TEMPLATES / template).read_text()
    if refused:
        with pytest.raises(UserError) as caught:
            check_template(tokenizer, "m")
        assert refused in str(caught.value) and f"--chat_template with a tool-capable template, e.g. {TOOL_TEMPLATE}" \
            in str(caught.value)
    else:
        check_template(tokenizer, "m")
        assert tokenizer.response_template  # TRL's parser for the template's tool calls is set


def test_the_model_answer_is_its_own_text_not_the_tools_result():
    """A reward reads what the model wrote: the calculator's result alone is not a right answer."""
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}
    episode = [{"role": "assistant", "content": "", "tool_calls": [call]},
               {"role": "tool", "name": "calculator", "content": "Answer: 42"},
               {"role": "assistant", "content": "I do not know."}]
    assert "42" not in completion_text(episode)
    assert accuracy(None, [episode], ["42"], "tagged") == [0.0]
    episode[-1]["content"] = "6 * 7 = 42.\nAnswer: 42"
    assert accuracy(None, [episode], ["42"], "tagged") == [1.0]
    assert episode_text(episode) == ('[calls calculator({"expression": "6 * 7"})][calculator returned Answer: 42]'
                                     "6 * 7 = 42.\nAnswer: 42")


def scripted_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
    """Stands in for the policy's sampling (TRL's _generate_single_turn): call the first tool the system prompt
    offers on the question's arithmetic, then answer with what the tool returned."""
    tokenizer = self.processing_class
    out = []
    for ids in prompt_ids:
        text = tokenizer.decode(ids)
        results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, re.S)
        if results:
            reply = f"The tool says {results[-1]}.\nAnswer: {results[-1]}<|im_end|>"
        else:
            tool = re.search(r'"name": "(\w+)"', text).group(1)
            expression = re.findall(r"What is (\d+ [-+*] \d+)\?", text)[-1]
            arguments = {"step": 3} if tool == "increment" else {"expression": expression}
            call = json.dumps({"name": tool, "arguments": arguments})
            reply = f"<tool_call>\n{call}\n</tool_call><|im_end|>"
        out.extend([tokenizer(reply, add_special_tokens=False)["input_ids"]] * (len(ids) and 1))
    return out, None


@pytest.mark.parametrize("tool", ["calculator", "broken"])
def test_grpo_rollouts_call_the_tools_and_a_failing_tool_is_fed_back(tiny_args, tools_file, tmp_path, monkeypatch,
                                                                     tool):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"What is {a} * {b}?"}],
                                        "answer": str(a * b)}) + "\n" for a, b in [(12, 34), (56, 78)] * 4))
    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted_turn)
    spec = "calculator" if tool == "calculator" else f"{tools_file}:broken"
    argv = tiny_args("grpo", "--dataset", str(data), "--tools", spec, "--chat_template", str(TOOL_TEMPLATE),
                     "--num_generations", "2", "--max_completion_length", "96")
    assert main(argv) == 0
    out = tmp_path / "grpo_run"
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    logs = [e for e in read_json(out / "trainer_state.json")["log_history"] if "tools/call_frequency" in e]
    assert logs and all(e["tools/call_frequency"] > 0 for e in logs)
    if tool == "calculator":
        assert '[calls calculator({"expression": "12 * 34"})][calculator returned 408]' in rows[0]["completion"] or \
            '[calls calculator({"expression": "56 * 78"})][calculator returned 4368]' in rows[0]["completion"]
        assert all(row["rewards"]["accuracy"] == 1.0 for row in rows)  # the answer the model wrote after the result
        assert all(e["tools/failure_frequency"] == 0 for e in logs)
    else:
        assert "[broken returned {'error': 'the tool broke'}]" in rows[0]["completion"]
        assert all(row["rewards"]["accuracy"] == 0.0 for row in rows)
        assert all(e["tools/failure_frequency"] > 0 for e in logs)
    assert read_json(out / "unitune_run.json")["settings"]["tools"] == [spec]


def test_a_bad_tool_or_template_stops_the_run_before_the_data_loads(tiny_args, tools_file, capsys):
    assert main(tiny_args("grpo", "--tools", f"{tools_file}:undocumented")) == 2
    err = capsys.readouterr().err
    assert "cannot be described to the model" in err and "Traceback" not in err and "plan:" not in err
    assert main(tiny_args("grpo", "--tools", "calculator")) == 2  # the embedded template renders no tools
    err = capsys.readouterr().err
    assert "renders no tool calls" in err and "plan:" not in err


def test_an_environment_gives_its_methods_as_tools_and_its_reward(tiny_args, tools_file, tmp_path, monkeypatch):
    """--environment: one Counter per rollout, reset with the row; its increment() is the tool the rollouts call, and
    its get_reward() (the count) is the only reward when no --reward_funcs is given."""
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": "What is 1 + 2?"}]}) + "\n"
                            for _ in range(8)))
    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted_turn)
    argv = tiny_args("grpo", "--dataset", str(data), "--environment", f"{tools_file}:Counter", "--chat_template",
                     str(TOOL_TEMPLATE), "--num_generations", "2", "--max_completion_length", "96")
    assert main(argv) == 0
    logs = read_json(tmp_path / "grpo_run" / "trainer_state.json")["log_history"]
    rewarded = [e for e in logs if "rewards/Counter/mean" in e]
    assert rewarded and all(e["rewards/Counter/mean"] == 3.0 and e["tools/failure_frequency"] == 0 for e in rewarded)
