"""`unitune eval` of runs trained with tools: the replies call them (evaluate.tool_replies), every entry of an
evaluation answers with the same tools, and tool code from a run record runs only with --trust_reward_code. The
model's choices are scripted here (generate_ids stands in for it); test_real_model.py runs the embedded model."""

import json
import re

import pytest

from unitune.config import EvalConfig
from unitune.errors import UserError
from unitune.evaluate import tool_replies
from unitune.evaluate.entries import Entry
from unitune.evaluate.tool_replies import replies_with_tools, run_call, tool_setup
from unitune.models.load import load_tokenizer
from unitune.tools import calculator

from conftest import with_template


def scripted(answer_after_tool=True):
    """Stands in for the model: call the calculator on the question's arithmetic; once a result is back, answer."""
    def generate_ids(model, tokenizer, encoded, max_new_tokens, batch_size, desc=None):
        out = []
        for ids in encoded:
            text = tokenizer.decode(ids)
            results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, re.S)
            if results and answer_after_tool:
                reply = f"So it is {results[-1]}.\nAnswer: {results[-1]}<|im_end|>"
            else:
                expression = re.findall(r"What is (\d+ [-+*] \d+)\?", text)[-1]
                reply = "<tool_call>\n" + json.dumps({"name": "calculator", "arguments": {"expression": expression}}) \
                    + "\n</tool_call><|im_end|>"
            out.append(tokenizer(reply, add_special_tokens=False)["input_ids"])
        return out
    return generate_ids


PROMPTS = [[{"role": "user", "content": "What is 12 * 34?"}], [{"role": "user", "content": "What is 5 + 6?"}]]


def test_replies_call_the_tool_and_answer_with_its_result(tokenizer, monkeypatch):
    monkeypatch.setattr(tool_replies, "generate_ids", scripted())
    episodes, counts = replies_with_tools(None, with_template(tokenizer, "qwen2_5"), PROMPTS, [{}, {}], [calculator],
                                          None, rounds=3, max_new_tokens=32, batch_size=2, desc=None)
    assert counts == {"tool_calls": 2, "tool_failures": 0}
    first = episodes[0]
    assert first[0]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "12 * 34"}}
    assert first[1] == {"role": "tool", "name": "calculator", "content": "408"}
    assert first[2]["content"].endswith("Answer: 408") and episodes[1][2]["content"].endswith("Answer: 11")


def test_a_model_that_keeps_calling_stops_after_the_rounds(tokenizer, monkeypatch):
    monkeypatch.setattr(tool_replies, "generate_ids", scripted(answer_after_tool=False))
    episodes, counts = replies_with_tools(None, with_template(tokenizer, "qwen2_5"), PROMPTS[:1], [{}], [calculator],
                                          None, rounds=2, max_new_tokens=32, batch_size=2, desc=None)
    assert counts["tool_calls"] == 2 and [m["role"] for m in episodes[0]] == ["assistant", "tool"] * 2 + ["assistant"]


def test_a_failing_or_unknown_tool_is_answered_with_its_error():
    def broken(expression: str) -> str:
        raise RuntimeError("the tool broke")
    assert run_call({"broken": broken}, {"function": {"name": "broken", "arguments": {"expression": "1"}}}) == \
        "{'error': 'the tool broke'}"
    assert run_call({}, {"function": {"name": "abacus", "arguments": {}}}) == "{'error': 'Tool abacus not found.'}"
    assert run_call({"calculator": calculator}, {"function": {"name": "calculator", "arguments": {"x": 1}}}) \
        .startswith("{'error': ")


def entry(name, path, **settings):
    return Entry(name, "grpo", "base", path, {"settings": settings})


def test_every_entry_gets_the_tools_a_run_trained_with(tiny_model_dir):
    entries = [Entry("base", None, "base"), entry("sft", tiny_model_dir), entry("grpo", tiny_model_dir,
                                                                                tools=["calculator"])]
    setup = tool_setup(entries, EvalConfig())
    assert setup.tools == ("calculator",) and setup.source == "run grpo" and setup.rounds == 3
    assert setup.template == load_tokenizer(str(tiny_model_dir)).chat_template  # the base answers in the run's
    assert tool_setup(entries[:2], EvalConfig()) is None
    assert tool_setup(entries[:2], EvalConfig(tools=["calculator"])).source == "--tools"


def test_runs_with_other_tools_or_tool_code_are_refused_in_one_line(tiny_model_dir, tmp_path):
    code = tmp_path / "mine.py"
    code.write_text('def add(a: int, b: int) -> int:\n    """\n    Adds.\n\n    Args:\n        a: One.\n'
                    '        b: Two.\n    """\n    return a + b\n')
    runs = [entry("a", tiny_model_dir, tools=["calculator"]), entry("b", tiny_model_dir, tools=[f"{code}:add"])]
    with pytest.raises(UserError, match="the runs trained with different tools .* evaluate them apart"):
        tool_setup(runs, EvalConfig())
    with pytest.raises(UserError, match=r"run b calls tool code .* only with --trust_reward_code"):
        tool_setup(runs[1:], EvalConfig())
    assert tool_setup(runs[1:], EvalConfig(trust_reward_code=True)).tools == (f"{code}:add",)


def test_the_base_is_scored_on_the_runs_data_and_a_merged_run_stands_for_its_base(tmp_path):
    """Runs trained on the calculator data, one of them on a merged SFT run: the base entry is the model the first
    run started from, scored on the calculator data (not the demo data, the default when no --dataset is given)."""
    from unitune.evaluate.entries import base_entry

    merged = tmp_path / "sft_merged"
    merged.mkdir()
    (merged / "unitune_merge.json").write_text(json.dumps({"run": "runs/sft", "base_model": "org/base"}))
    runs = [Entry("sft", "sft", "org/base", tmp_path, {"dataset": "/data/calculator"}),
            Entry("grpo", "grpo", str(merged), tmp_path, {"dataset": "/data/calculator"})]
    base = base_entry(runs, None)
    assert base.base_model == "org/base" and base.record == {"dataset": "/data/calculator"}
    assert base_entry([], "fallback").record == {}


def test_generation_prompts_are_the_prompt_column_not_the_whole_episode():
    """The calculator's test rows hold a prompt and the whole episode (messages): the model is asked the prompt; the
    episode's call and result would hand it the answer."""
    from unitune.data.load import resolve_dataset
    from unitune.data.views import prompt_messages
    from unitune.evaluate.heldout import EvalData

    data = EvalData(resolve_dataset("calculator"), EvalConfig(max_samples=5), {})
    prompts = [prompt_messages(row, data.gen_format) for row in data.gen_rows]
    assert data.gen_format == "prompt_only" and len(prompts) == 5
    assert all([m["role"] for m in p] == ["system", "user"] for p in prompts)


def test_an_environment_observation_joins_the_prompt_and_tools_apply_to_their_data(tmp_path):
    from unitune.evaluate.tool_replies import ToolSetup, bound_tools, observed
    from unitune.tools import load_environment

    env = tmp_path / "game.py"
    env.write_text('from __future__ import annotations\nfrom dataclasses import dataclass\n\n\n@dataclass\nclass Game:\n'
                   '    score: int = 0\n\n    def reset(self, **row) -> str:\n        return " Start at " + row["start"]\n\n'
                   '    def move(self, step: int) -> int:\n        """\n        Moves.\n\n        Args:\n'
                   '            step: How far.\n        """\n        return step\n')
    game = load_environment(f"{env}:Game")  # a dataclass, annotations postponed: the module is registered
    tools, observation = bound_tools([calculator], game, {"start": "5."})
    assert [t.__name__ for t in tools] == ["calculator", "move"] and tools[1](3) == 3
    assert observed(PROMPTS[0], observation)[-1]["content"] == "What is 12 * 34? Start at 5."
    setup = ToolSetup(("calculator",), None, 3, "run x", None, "calculator")
    from unitune.data.load import resolve_dataset
    assert setup.applies(resolve_dataset("calculator")) and not setup.applies(resolve_dataset(None))
    assert ToolSetup(("calculator",), None, 3, "--tools").applies(resolve_dataset(None))


def test_a_generation_split_of_implicit_pairs_still_gives_prompts(tmp_path):
    """GRPO's formats come first (a prompt column); implicit pairs, which GRPO takes none of, still give prompts."""
    from unitune.evaluate.heldout import EvalData

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"chosen": [{"role": "user", "content": f"q{i}"},
                                                   {"role": "assistant", "content": "yes"}],
                                        "rejected": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": "no"}]}) + "\n" for i in range(3)))
    found = EvalData(str(data), EvalConfig(gen_split="train", sft_split="none", prefs_split="none"), {})
    assert found.gen_format == "preference_implicit" and len(found.gen_rows) == 3
