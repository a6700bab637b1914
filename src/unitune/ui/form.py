"""The Train form, generated from TrainConfig: one input per field, with its help, default, section and the methods
it applies to (unitune.config), so a new flag appears in the UI by itself. The form's values become the same mapping a
YAML config holds, checked by the same code as the command line."""

from __future__ import annotations

import shlex
import typing
from dataclasses import MISSING, dataclass, fields

from ..config import TrainConfig, base_type, from_mapping

# Flags the form leaves out: resume is the Runs tab's Resume button; resume_from_checkpoint (a checkpoint folder of
# another run) and dry_run (the plan, printed) are for the command line.
BUTTON_FLAGS = ("resume", "resume_from_checkpoint", "dry_run")
DEFAULT_METHOD = "sft"


@dataclass(frozen=True)
class FormField:
    name: str
    kind: str  # bool, choice, int, float, list or text
    default: object
    help: str
    section: str
    methods: tuple[str, ...] | None  # None: every method
    choices: tuple[str, ...] | None

    def applies_to(self, method: str) -> bool:
        return self.methods is None or method in self.methods


def form_fields(cls=TrainConfig) -> list[FormField]:
    hints = typing.get_type_hints(cls)
    found, section = [], "settings"
    for f in fields(cls):
        meta = f.metadata
        section = meta.get("section", section)
        if f.name in BUTTON_FLAGS:
            continue
        hint = base_type(hints[f.name])
        if meta.get("choices"):
            kind = "choice"
        elif typing.get_origin(hint) is list:
            kind = "list"
        else:
            kind = {bool: "bool", int: "int", float: "float"}.get(hint, "text")
        default = None if f.default is MISSING else f.default
        if f.name == "method":
            default = DEFAULT_METHOD
        found.append(FormField(f.name, kind, default, meta["help"], section, meta.get("methods"), meta.get("choices")))
    return found


def _value(field: FormField, raw):
    """A form input's value as the YAML mapping holds it: None when left empty."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if field.kind == "list":
        return raw.replace(",", " ").split() if isinstance(raw, str) else list(raw)
    if field.kind == "int" and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return raw.strip() if isinstance(raw, str) else raw


def to_mapping(values: dict) -> dict:
    """The settings the form changed from their defaults (the method always), in field order; fields of other
    methods are left out."""
    method = values.get("method") or DEFAULT_METHOD
    mapping = {}
    for field in form_fields():
        value = _value(field, values.get(field.name))
        if field.name == "method" or (value is not None and value != field.default and field.applies_to(method)):
            mapping[field.name] = value if field.name != "method" else method
    return mapping


def check(mapping: dict) -> TrainConfig:
    """The config the command line would build from these values; a bad value is the CLI's one-line UserError."""
    return from_mapping(TrainConfig, mapping, "the form")


def command_line(mapping: dict) -> str:
    parts = ["unitune", "train"]
    for key, value in mapping.items():
        if isinstance(value, bool):
            parts += [f"--{key}"] if value else [f"--{key}", "false"]
        elif isinstance(value, list):
            parts += [f"--{key}", *map(str, value)]
        else:
            parts += [f"--{key}", str(value)]
    return shlex.join(parts)


def yaml_text(mapping: dict) -> str:
    import yaml

    return "# unitune train --config this.yaml\n" + yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True)
