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


def test_the_tools_render_as_given_and_the_render_cache_keys_on_them(tokenizer):
    """The cache key is sorted JSON; the text is rendered from the objects as given, as TRL and the model see them."""
    tok = with_template(tokenizer, "qwen2_5")
    chat, tools = chat_format(tok), row_tools(ROW)
    prompt = ROW["prompt"]
    expected = tok.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=True)
    assert chat.generation_prompt(prompt, tools=tools) == expected
    assert chat.generation_prompt(prompt, tools=tools) == expected  # from the cache
    assert chat.generation_prompt(prompt) != expected  # other tools (none): another key


def test_tool_calls_as_json_text_and_empty_call_lists_and_arrow_filled_tools():
    from unitune.messages import clean_message

    call = {"type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"1 + 1\"}"}}
    assert clean_message({"role": "assistant", "content": None, "tool_calls": json.dumps([call])})["tool_calls"] == [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "1 + 1"}}}]
    assert clean_message({"role": "assistant", "content": "hi", "tool_calls": []}) == {"role": "assistant",
                                                                                      "content": "hi"}
    with pytest.raises(UserError, match="a message's tool_calls is not JSON"):
        clean_message({"role": "assistant", "content": "", "tool_calls": "[{"})
    filled = [{"type": "function", "function": {"name": "f", "parameters": {"x": {"type": "string"}, "y": None}}}]
    assert row_tools({"tools": filled}) == [{"type": "function", "function": {"name": "f", "parameters": {
        "x": {"type": "string"}}}}]


def test_the_prompt_of_an_episode_ends_at_the_reply_to_the_last_user_turn():
    from unitune.data.views import pair_row, prompt_messages

    assert [m["role"] for m in prompt_messages({"messages": ROW["messages"]}, "conversational")] == ["system", "user"]
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"}]
    assert prompt_messages({"messages": chat}, "conversational") == chat[:3]
    # a repeated prompt turn is found whatever other keys the replies' messages carry
    chosen = [{"role": "user", "content": "q", "name": "me"}, {"role": "assistant", "content": "yes"}]
    rejected = [{"role": "user", "content": "q", "name": "me"}, {"role": "assistant", "content": "no"}]
    pair = pair_row({"prompt": "q", "chosen": chosen, "rejected": rejected}, "preference")
    assert [m["content"] for m in pair["chosen"]] == ["yes"] and [m["content"] for m in pair["rejected"]] == ["no"]
