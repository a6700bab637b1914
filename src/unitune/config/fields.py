"""How a config field becomes a flag: its help and default (``opt``), values typed as the command line types them
(YAML included), unknown keys refused, and the checks the configs share."""

from __future__ import annotations

import types
import typing
from dataclasses import field, fields
from pathlib import Path

from ..answers import FORMATS as ANSWER_FORMATS
from ..errors import UserError, closest


def opt(default, help: str, **extra):
    """A config field: its default and its help line (shown by --help). ``section="..."`` starts a group of flags
    in --help: this field and the ones after it, until the next section. ``methods=(...)`` names the only methods
    a field applies to (the web UI shows it for those)."""
    return field(default=default, metadata={"help": help, **extra})


def parse_columns(text) -> dict[str, str]:
    """--columns "prompt=question,chosen=good" (or a YAML mapping) as {key unitune reads: data column}."""
    if not text:
        return {}
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    mapping = {}
    for part in str(text).split(","):
        key, sep, column = part.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise UserError(f"--columns expects KEY=COLUMN[,KEY=COLUMN...], got '{part}'; e.g. "
                            "--columns prompt=question,chosen=good,rejected=bad")
        mapping[key.strip()] = column.strip()
    return mapping


COLUMNS_HELP = ("map the data's columns to the keys unitune reads: KEY=COLUMN[,KEY=COLUMN...], e.g. "
                "prompt=question,chosen=good,rejected=bad or messages=dialog")


ANSWER_FORMAT_HELP = ("how answers are written, for task accuracy and the GRPO accuracy/format rewards: "
                      f"{', '.join(ANSWER_FORMATS)} (auto: from the data's answer column and prompts; "
                      "see unitune.answers)")


def _answer_format(cfg) -> None:
    if cfg.answer_format not in ANSWER_FORMATS:
        raise UserError(f"unknown --answer_format '{cfg.answer_format}'"
                        f"{closest(str(cfg.answer_format), ANSWER_FORMATS)}; use one of: {', '.join(ANSWER_FORMATS)}")


def _positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be greater than 0, got {value}; pass a positive value")


def _template_file(path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise UserError(f"--chat_template {path} is not a file; pass a Jinja template file (.jinja)")


def as_bool(value) -> bool:
    lowered = str(value).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got '{value}'")


def base_type(hint):
    """`int | None` -> int; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _typed(kind, value):
    """One value converted as its flag converts it (YAML reads `2e-4` as a string and `true` as a bool)."""
    if value is None:
        return None
    if kind is bool:
        return as_bool(value)
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        return [_typed(item, v) for v in (value if isinstance(value, list) else [value])]
    if kind is str:
        return str(value).lower() if isinstance(value, bool) else value if isinstance(value, (dict, list)) else str(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return kind(value)


def from_mapping(cls, values: dict, source: str = "config"):
    """Build a config from a mapping, rejecting unknown keys with the closest valid one; every value goes through
    the conversion its flag has, so a config file's types match the command line's."""
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise UserError(f"unknown key '{key}' in {source}{closest(key, known)}; "
                            "valid keys are the flags listed by --help")
    hints = typing.get_type_hints(cls)
    values = dict(values)
    for key, value in values.items():
        kind = base_type(hints[key])
        try:
            values[key] = _typed(kind, value)
        except (TypeError, ValueError):
            name = kind.__name__
            raise UserError(f"{key}: {value!r} in {source} is not a valid {name}; give a {name} as on the "
                            f"command line (--{key})") from None
    for f in fields(cls):
        if f.metadata.get("required") and values.get(f.name) is None:
            choices = f.metadata.get("choices")
            raise UserError(f"--{f.name} is required" + (f"; choose from: {', '.join(choices)}" if choices else ""))
    return cls(**values)


def _choice(value: str, flag: str, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {flag} '{value}'{closest(value, choices)}; choose from: {', '.join(choices)}")
