"""Conversations with tool calls (SFT on tool-use episodes, the bundled calculator task): the assistant's calls are
trained as part of its turn, the tools' results never are, the row's tools are rendered into the prompt, and a
template that drops tool calls is refused in one line."""

import json

import pyarrow.parquet as pq
import pytest

from unitune.cli import main
from unitune.data.formats import row_tools
from unitune.data.load import BUNDLED, resolve_dataset
from unitune.data.rows import EMPTY_REPLY, row_problem
from unitune.data.tool_tasks import SPLIT_SIZES, generate_splits
from unitune.errors import UserError
from unitune.templates import chat_format
from unitune.tools import TOOL_TEMPLATE, calculator

from conftest import with_template

ROW = generate_splits()["train_sft"][0]


def arrow_filled(messages):
    """Messages as Arrow hands them back: every message has every key any message has, None where absent."""
    keys = {k for m in messages for k in m}
    return [{k: m.get(k) for k in keys} for m in messages]


def test_committed_calculator_parquet_matches_generator_and_its_answers_are_right():
    assert resolve_dataset("calculator") == str(BUNDLED["calculator"])
    for split, rows in generate_splits().items():
        table = pq.read_table(BUNDLED["calculator"] / "data" / f"{split}-00000-of-00001.parquet").to_pylist()
        assert len(table) == SPLIT_SIZES[split]
        for got, row in zip(table, rows):
            assert [{k: v for k, v in m.items() if v is not None} for m in got["messages"]] == row["messages"], split
            assert got["answer"] == row["answer"] == calculator(row["messages"][2]["tool_calls"][0]["function"][
                "arguments"]["expression"])
            assert got["messages"][-1]["content"].endswith(f"Answer: {row['answer']}")


@pytest.mark.parametrize("template", ["qwen2_5", "llama3_1"])
def test_calls_are_trained_and_tool_results_are_not(tokenizer, template):
    chat = chat_format(with_template(tokenizer, template))
    text, _, mask, starts = chat.tokens(arrow_filled(ROW["messages"]), tools=row_tools(ROW))
    trained = "".join(text[a:b] for a, b, m in zip(starts, starts[1:] + [len(text)], mask) if m)
    untrained = "".join(text[a:b] for a, b, m in zip(starts, starts[1:] + [len(text)], mask) if not m)
    call = ROW["messages"][2]["tool_calls"][0]["function"]["arguments"]["expression"]
    assert '"name": "calculator"' in trained and call in trained  # the call, as the template writes it
    assert ROW["messages"][-1]["content"] in trained  # the final reply
    assert "Evaluates an arithmetic expression" in untrained  # the tools listed in the prompt, from the row
    assert ROW["messages"][1]["content"] in untrained
    result_at = text.index(ROW["answer"], text.index(call) + len(call))  # the tool's result, before the reply
    assert not any(m for a, m in zip(starts, mask) if result_at <= a < result_at + len(ROW["answer"]))


def test_a_template_that_drops_tool_calls_is_refused_in_one_line(tokenizer):
    """SmolLM2's own template renders only each message's content: the call would not be in the text."""
    with pytest.raises(UserError) as caught:
        chat_format(tokenizer).tokens(ROW["messages"], tools=row_tools(ROW))
    assert "the call of tool 'calculator' does not lie inside its reply's trained span" in str(caught.value)
    assert "--chat_template with a template that renders tool calls" in str(caught.value)


def test_a_turn_that_only_calls_a_tool_is_a_reply_and_one_with_nothing_is_empty():
    messages = arrow_filled(ROW["messages"])
    assert row_problem({"messages": messages}, "conversational") is None
    messages[2]["tool_calls"] = None
    assert row_problem({"messages": messages}, "conversational") == EMPTY_REPLY


def test_tools_as_a_json_string_or_a_list_and_bad_json_is_one_line():
    schemas = json.loads(ROW["tools"])
    assert row_tools(ROW) == row_tools({"tools": schemas}) == schemas and row_tools({}) is None
    with pytest.raises(UserError, match="a row's 'tools' is not JSON"):
        row_tools({"tools": "[{"})


def test_check_show_tokens_shows_the_call_trained_and_the_result_not(capsys, tiny_model_dir):
    code = main(["check", "--model_name", str(tiny_model_dir), "--dataset", "calculator", "--method", "sft",
                 "--chat_template", str(TOOL_TEMPLATE), "--show_tokens", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    split = next(s for s in json.loads(out)["splits"] if s["split"] == "train_sft")
    assert split["rows"] == SPLIT_SIZES["train_sft"] and not split.get("bad_rows")
    view = split["token_view"][0]
    trained = "".join(seg["text"] for seg in view if seg["trained"])
    untrained = "".join(seg["text"] for seg in view if not seg["trained"])
    assert "<tool_call>" in trained and "<tool_response>" in untrained and "</tool_response>" not in trained
