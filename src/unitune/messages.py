"""Messages as chat templates read them: Arrow's None fill dropped, a missing content made empty, tool calls given as
JSON strings parsed (templates expect mappings), and empty call lists dropped."""

from __future__ import annotations

import json

from .errors import UserError


def clean_message(message: dict) -> dict:
    """A message with every key a template may read (tool calls, a tool's name) but the None values Arrow gives the
    keys other rows' messages have; a tool call's JSON-string arguments parsed, as templates expect a mapping."""
    cleaned = {k: v for k, v in message.items() if v is not None}
    cleaned["content"] = message.get("content") or ""
    calls = cleaned.pop("tool_calls", None)
    if isinstance(calls, str):  # kept as a JSON string (as Arrow keeps differing shapes)
        try:
            calls = json.loads(calls)
        except ValueError:
            raise UserError(f"a message's tool_calls is not JSON ({calls[:60]!r}); give a list of calls") from None
    if calls:  # an empty list is no call (some templates branch on the key alone)
        cleaned["tool_calls"] = [_parsed_call(call) for call in calls]
    return cleaned


def _parsed_call(call: dict) -> dict:
    call = without_nones(call)  # Arrow's struct: other calls' argument names, as None
    function = dict(call.get("function") or {})
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except ValueError:
            pass  # the template shows it as it is
    return {**call, "function": function} if function else call


def without_nones(value):
    """A JSON value without the None entries Arrow adds to structs (other rows' keys)."""
    if isinstance(value, dict):
        return {k: without_nones(v) for k, v in value.items() if v is not None}
    return [without_nones(v) for v in value] if isinstance(value, list) else value
