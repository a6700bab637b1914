"""GRPO with tool calls: the functions (--tools) and the environment (--environment) a run gives the model, the
built-in calculator, and the checks made before anything loads: each tool describable to the model (type hints and a
Google-style docstring, as TRL's GRPOTrainer needs), and a chat template that renders tools and whose tool calls TRL
can read back out of a reply (trl.chat_template_utils)."""

from __future__ import annotations

import ast
import inspect
import operator
from pathlib import Path
from typing import Callable

import trl

from .errors import UserError, first_line
from .plugins import load_named, split_spec

TEMPLATES = Path(trl.__file__).parent / "chat_templates"  # TRL's copies of the model repos' templates
TOOL_TEMPLATE = TEMPLATES / "qwen2_5.jinja"  # ChatML with <tool_call> JSON: any ChatML tokenizer (SmolLM2's) renders it
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """
    Evaluates an arithmetic expression and returns its value.

    Args:
        expression: The arithmetic to evaluate: numbers, + - * / // % ** and parentheses, e.g. "4837 * 2919".
    """

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError(f"exponent {right} is too large")
            return _OPERATORS[type(node.op)](left, right)
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")

    try:
        tree = ast.parse(str(expression).replace("^", "**").replace("×", "*"), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r}") from None
    result = value(tree.body)
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return f"{result:.10g}" if isinstance(result, float) else str(result)


BUILTIN_TOOLS: dict[str, Callable] = {"calculator": calculator}


def describe(tool: Callable, where: str) -> dict:
    """The JSON schema the model is shown for ``tool`` (transformers.utils.get_json_schema, as TRL renders it)."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(tool)
    except Exception as err:  # DocstringParsingException, TypeHintParsingException
        raise UserError(f"tool '{tool.__name__}' from {where} cannot be described to the model ({first_line(err)}); "
                        "give it type hints and a Google-style docstring with an Args: line per argument") from None


def load_tools(specs: list[str] | None) -> list[Callable]:
    """--tools: built-in names, ``path/file.py:fn`` or ``package.module:fn``, several functions of one file as
    ``file.py:fn1,fn2``; each checked to be describable."""
    tools = []
    for spec in specs or []:
        if spec in BUILTIN_TOOLS:
            tools.append(BUILTIN_TOOLS[spec])
            continue
        where, names = split_spec(spec)
        if not where or not names:
            raise UserError(f"unknown tool '{spec}'; use a built-in ({', '.join(BUILTIN_TOOLS)}), "
                            "path/to/file.py:function or package.module:function")
        tools.extend(load_named(where, name, "tool", "--tools") for name in names.split(","))
    for tool in tools:
        describe(tool, "--tools")
    names = [tool.__name__ for tool in tools]
    if len(set(names)) < len(names):
        raise UserError(f"--tools names two tools alike ({', '.join(names)}); the model calls a tool by its name")
    return tools


def load_environment(spec: str | None) -> type | None:
    """--environment ``path/file.py:Class``: a class with ``reset(**row)``, public tool methods and optionally
    ``get_reward()``; TRL makes one instance per rollout."""
    if not spec:
        return None
    where, name = split_spec(spec)
    if not where:
        raise UserError(f"--environment {spec}: give path/to/file.py:Class or package.module:Class")
    found = load_named(where, name, "environment", "--environment", kind="class")
    if not inspect.isclass(found) or not callable(getattr(found, "reset", None)):
        raise UserError(f"--environment {spec} is not a class with a reset(**row) method; see docs/methods.md, "
                        "GRPO with tools")
    methods = environment_tools(found)
    if not methods:
        raise UserError(f"--environment {spec} has no tool methods (public methods besides reset and get_reward)")
    for method in methods:
        describe(method, f"--environment {spec}")
    return found


def environment_tools(cls: type) -> list[Callable]:
    """The methods TRL offers the model as tools: every public function of the class but reset and get_reward."""
    return [fn for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name not in ("reset", "get_reward")]


def check_template(tokenizer, model: str) -> None:
    """Refuse, in one line, a chat template that cannot carry tool calls: one that drops the tool list, the calls or
    their results, or one whose calls TRL cannot parse out of a reply. Sets the tokenizer's response parser."""
    from trl.chat_template_utils import add_response_schema, supports_tool_calling

    fix = (f"pass --chat_template with a tool-capable template, e.g. {TOOL_TEMPLATE} (TRL ships the Qwen, Llama 3.1, "
           f"GLM-4, gpt-oss, Nemotron 3, LFM2.5 and Gemma 4 ones in {TEMPLATES})")
    if not supports_tool_calling(tokenizer):
        raise UserError(f"the chat template of {model} renders no tool calls (it drops the tools, the calls or their "
                        f"results), so the model could not use --tools; {fix}")
    if getattr(tokenizer, "response_template", None) or getattr(tokenizer, "response_schema", None):
        return
    try:
        add_response_schema(tokenizer)
    except ValueError:
        raise UserError(f"TRL cannot read tool calls back out of replies in the chat template of {model} (it parses "
                        f"the formats of the templates it ships); {fix}") from None


def run_tools(cfg, tokenizer, model: str) -> dict:
    """The trainer arguments of a run's --tools and --environment ({} without them), checked with its template."""
    if not (cfg.tools or cfg.environment):
        return {}
    tools, environment = load_tools(cfg.tools), load_environment(cfg.environment)
    check_template(tokenizer, model)
    return {"tools": tools or None, "environment_factory": environment}


def carries_tools(tokenizer) -> bool:
    """Whether check_template passes (then the tokenizer has its response parser)."""
    try:
        return check_template(tokenizer, "") is None
    except UserError:
        return False
