"""Greedy replies that call tools, for `unitune eval` of a run trained with --tools/--environment: the model's tool
calls are read out of its reply (TRL's parser for the template), run, and their results fed back as ``tool`` messages
until it answers without a call or has made ``rounds`` rounds of calls, as GRPO's rollouts went in training. A tool
that raises is answered with its error, as TRL does. Each round re-renders the conversations with the template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data.load import resolve_dataset
from ..errors import UserError
from ..fast.generation import generate_ids
from ..models.load import load_tokenizer
from ..templates import chat_format
from ..tools import BUILTIN_TOOLS, check_template, describe, environment_tools, load_environment, load_tools


def run_call(tools: dict[str, Callable], call: dict) -> str:
    """One tool call's result as the model reads it: the value, or ``{'error': ...}`` (TRL's form)."""
    function = call.get("function") or {}
    try:
        tool = tools.get(function.get("name"))
        if tool is None:
            raise ValueError(f"Tool {function.get('name')} not found.")
        return str(tool(**(function.get("arguments") or {})))
    except Exception as err:  # the model's mistake or the tool's: fed back, never fatal
        return str({"error": str(err)})


def bound_tools(functions: list[Callable], environment: type | None, row: dict) -> tuple[list[Callable], str | None]:
    """The tools of one prompt: the functions, and a fresh environment's methods, reset with the row; and what
    ``reset`` returned, which TRL adds to the prompt's last message."""
    if environment is None:
        return list(functions), None
    instance = environment()
    observation = instance.reset(**row)
    return list(functions) + [getattr(instance, fn.__name__) for fn in environment_tools(environment)], observation


def observed(prompt: list[dict], observation: str | None) -> list[dict]:
    """The prompt with an environment's ``reset`` observation appended to its last message, as TRL's GRPO does."""
    if not observation:
        return prompt
    return prompt[:-1] + [{**prompt[-1], "content": prompt[-1]["content"] + observation}]


def replies_with_tools(model, tokenizer, prompts: list[list[dict]], rows: list[dict], functions: list[Callable],
                       environment: type | None, rounds: int, max_new_tokens: int, batch_size: int,
                       desc: str | None = "Generating with tools") -> tuple[list[list[dict]], dict]:
    """Each prompt's episode (its assistant and tool messages, in order) and counts of the tool calls made and
    failed."""
    from trl.chat_template_utils import parse_response

    check_template(tokenizer, tokenizer.name_or_path or "the model")
    chat = chat_format(tokenizer)
    bound = [bound_tools(functions, environment, row) for row in rows]
    tools = [own for own, _ in bound]
    prompts = [observed(prompt, observation) for prompt, (_, observation) in zip(prompts, bound)]
    schemas = [[describe(tool, "the run's tools") for tool in own] for own in tools]
    episodes: list[list[dict]] = [[] for _ in prompts]
    calls = failed = 0
    active = list(range(len(prompts)))
    for round_ in range(rounds + 1):
        texts = [chat.generation_prompt(prompts[i] + episodes[i], tools=schemas[i]) for i in active]
        encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        outputs = generate_ids(model, tokenizer, encoded, max_new_tokens, batch_size,
                               desc=f"{desc} ({round_ + 1})" if desc else None)
        going = []
        for i, prefix, ids in zip(active, encoded, outputs):
            message = parse_response(tokenizer, ids, prefix=prefix, tools=schemas[i])
            episodes[i].append(message)
            if not message.get("tool_calls") or round_ == rounds:
                continue
            named = {tool.__name__: tool for tool in tools[i]}
            for call in message["tool_calls"]:
                result = run_call(named, call)
                calls += 1
                failed += result.startswith("{'error'")
                episodes[i].append({"role": "tool", "name": (call.get("function") or {}).get("name", ""),
                                    "content": result})
            going.append(i)
        active = going
        if not active:
            break
    return episodes, {"tool_calls": calls, "tool_failures": failed}



@dataclass(frozen=True)
class ToolSetup:
    """The tools every entry of an evaluation generates with, and where they came from."""

    tools: tuple[str, ...]
    environment: str | None
    rounds: int
    source: str
    template: str | None = None  # the chat template of the run the tools came from: the base answers in it too
    dataset: str | None = None  # the data of the run the tools came from: the entries asked those questions get them

    def applies(self, dataset: str) -> bool:
        return self.dataset is None or resolve_dataset(self.dataset) == dataset

    @property
    def label(self) -> str:
        return ", ".join([*self.tools, *filter(None, [self.environment])]) + f" ({self.rounds} rounds)"

    def loaded(self) -> tuple[list[Callable], type | None]:
        return load_tools(list(self.tools)), load_environment(self.environment)


def tool_setup(entries, cfg) -> ToolSetup | None:
    """--tools/--environment of the eval, else the tools of the runs that trained with them, for every entry asked
    their questions (on their data): the base and an SFT run answer with the same calculator as the GRPO run they are
    compared with, the base in that run's chat template (else the first run's). Runs with different tools are
    evaluated apart (or with --tools). Code named in a run record (not a built-in) runs only with
    --trust_reward_code."""
    runs = [entry for entry in entries if entry.path is not None]
    if cfg.tools or cfg.environment:
        setup = ToolSetup(tuple(cfg.tools or ()), cfg.environment, cfg.max_tool_calling_iterations, "--tools",
                          load_tokenizer(str(runs[0].path)).chat_template if runs else None)
    else:
        found = {}
        for entry in entries:
            settings = entry.record.get("settings") or {}
            if settings.get("tools") or settings.get("environment"):
                found.setdefault((tuple(settings.get("tools") or ()), settings.get("environment"),
                                  settings.get("max_tool_calling_iterations") or 3), []).append(entry.name)
        if not found:
            return None
        if len(found) > 1:
            raise UserError("the runs trained with different tools (" + "; ".join(
                f"{', '.join(names)}: {', '.join([*key[0], *filter(None, [key[1]])])}" for key, names in found.items())
                + "); evaluate them apart with --runs, or give every entry the same with --tools")
        (tools, environment, rounds), names = next(iter(found.items()))
        run = next(entry for entry in runs if entry.name == names[0])
        setup = ToolSetup(tools, environment, rounds, f"run {names[0]}", load_tokenizer(str(run.path)).chat_template,
                          run.record.get("dataset"))
        code = [spec for spec in (*tools, environment) if spec and spec not in BUILTIN_TOOLS]
        if code and not cfg.trust_reward_code:
            raise UserError(f"run {names[0]} calls tool code ({', '.join(code)}), which runs only with "
                            "--trust_reward_code; or pass --tools to generate with other tools")
    setup.loaded()  # a bad tool fails now, before any model loads
    asked = f"every entry on {Path(setup.dataset).name}" if setup.dataset else "every entry"
    print(f"unitune eval: {asked} generates with tools: {setup.label}, from {setup.source}", flush=True)
    return setup
