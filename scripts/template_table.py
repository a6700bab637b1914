"""Rewrite the README's table of supported chat templates from the code (tests/test_templates.py checks it).

    .venv/bin/python scripts/template_table.py
"""

from pathlib import Path

from unitune.templates import template_table
from unitune.models.load import load_tokenizer, resolve_model

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- template table: scripts/template_table.py -->", "<!-- end of template table -->"


def readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index(START) + len(START): text.index(END)].strip()


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    table = template_table(load_tokenizer(resolve_model(None)))
    README.write_text(text[: text.index(START) + len(START)] + "\n" + table + "\n" + text[text.index(END):],
                      encoding="utf-8")
    print(f"wrote {table.count(chr(10)) - 1} templates into {README}")
