"""Write the generated parts of docs/ from the code: the configuration reference (docs/configuration.md, from the
config dataclasses) and the table of chat templates in docs/templates.md (how each of TRL's shipped templates is
masked). tests/test_docs.py fails when either is out of date.

    .venv/bin/python scripts/make_docs.py            # rewrite them
    .venv/bin/python scripts/make_docs.py --check    # exit 1 when one is out of date
"""

from __future__ import annotations

import copy
import re
import sys
import textwrap
import typing
from dataclasses import MISSING, fields
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIGURATION = DOCS / "configuration.md"
TEMPLATES = DOCS / "templates.md"
START, END = "<!-- template table: scripts/make_docs.py -->", "<!-- end of template table -->"
# TRL's shipped templates that are not text chat: vision models and the diffusion model.
NOT_TEXT = {"idefics3", "lfm2_2_5_vl", "llava_next", "qwen2_5_vl", "qwen3_vl", "smolvlm", "diffusion_gemma"}

INTRO = """# Configuration reference

Every flag of every command, with its default and what it does. This page is generated from the config
dataclasses in `src/unitune/config/` by `scripts/make_docs.py` (a test fails when it is out of date), as are the
flags themselves and `unitune COMMAND --help`.

Any flag can also come from a YAML file: `--config file.yaml`, whose keys are the flag names (flags on the command
line win; an unknown key is refused with the closest valid one). Every command also takes `--debug` (a full
traceback instead of the one-line error) and `--verbose` (library warnings and loading bars too). The seed scripts
take the same flags: `code/SFT.py` is `unitune train`, `code/unified_evaluation.py` is `unitune eval` and
`code/check_dataset.py` is `unitune check`.
"""


def shown_default(f) -> str:
    """A field's default as the docs show it ("" where the help says what happens without it)."""
    if f.metadata.get("required"):
        return "required"
    value = None if f.default is MISSING else f.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        return " ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def command_section(name: str, cls) -> list[str]:
    lines = [f"## `unitune {name}`", "", " ".join((cls.__doc__ or "").split()), ""]
    hints = typing.get_type_hints(cls)
    rows: list[str] = []
    for f in fields(cls):
        if "section" in f.metadata:
            if rows:
                lines += rows + [""]
                rows = []
            lines += [f"**{f.metadata['section']}**", ""]
        if not rows:
            rows = ["| flag | default | what it does |", "|---|---|---|"]
        kind = typing.get_args(hints[f.name])
        value = " N..." if typing.get_origin(hints[f.name]) is list or list in map(typing.get_origin, kind) else ""
        help_text = f.metadata["help"].replace("|", "\\|")
        if f.metadata.get("methods") and not re.match(r"^[A-Z/]+[:\s]", help_text):  # "GRPO: ..." says it already
            help_text += f" (only for {', '.join(f.metadata['methods'])})"
        rows.append(f"| `--{f.name}{value}` | {shown_default(f)} | {help_text} |")
    if rows:
        lines += rows + [""]
    elif not fields(cls):
        lines += ["No flags.", ""]
    return lines


def configuration_page() -> str:
    from unitune.cli import COMMANDS

    lines = [INTRO]
    links = ", ".join(f"[`{name}`](#unitune-{name})" for name in COMMANDS)
    lines += textwrap.wrap(f"Commands: {links}.", 116, break_on_hyphens=False, break_long_words=False) + [""]
    for name, command in COMMANDS.items():
        lines += command_section(name, command.config)
    return "\n".join(lines).rstrip() + "\n"


def shipped_templates() -> dict[str, str]:
    """TRL's copies of the model repos' own text chat templates (``trl/chat_templates``), by name."""
    import trl

    folder = Path(trl.__file__).parent / "chat_templates"
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.jinja"))
            if not p.stem.endswith("_training") and p.stem not in NOT_TEXT}


def template_table(tokenizer) -> str:
    """How each shipped template is masked, and what happens to system turns, on ``tokenizer``."""
    from unitune.templates import chat_format

    lines = ["| template (TRL's copy) | loss mask from | system turns |", "|---|---|---|"]
    for name, text in shipped_templates().items():
        tok = copy.copy(tokenizer)
        tok.chat_template = text
        chat = chat_format(tok)
        system = "folded into the first user turn" if chat.folds_system else "kept"
        lines.append(f"| `{name}` | {chat.description} | {system} |")
    return "\n".join(lines)


def written_table() -> str:
    text = TEMPLATES.read_text(encoding="utf-8")
    return text[text.index(START) + len(START): text.index(END)].strip()


def templates_page(tokenizer) -> str:
    text = TEMPLATES.read_text(encoding="utf-8")
    return text[: text.index(START) + len(START)] + "\n" + template_table(tokenizer) + "\n" + text[text.index(END):]


def main(check: bool) -> int:
    from unitune.models.load import load_tokenizer, resolve_model

    pages = {CONFIGURATION: configuration_page(), TEMPLATES: templates_page(load_tokenizer(resolve_model(None)))}
    stale = [path for path, text in pages.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    if check:
        for path in stale:
            print(f"{path} is out of date: run scripts/make_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(pages[path], encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
