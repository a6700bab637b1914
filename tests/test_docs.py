"""The documentation matches the code: the generated pages are current, the README stays short and links every page
of docs/, and every link between the pages leads to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import TEXT_TEMPLATES, load_script

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
make_docs = load_script("make_docs")


def test_configuration_page_is_generated_from_the_configs():
    assert make_docs.CONFIGURATION.read_text(encoding="utf-8") == make_docs.configuration_page(), \
        "run scripts/make_docs.py to update docs/configuration.md"


def test_configuration_page_lists_every_flag_of_every_command():
    from dataclasses import fields

    from unitune.cli import COMMANDS

    page = make_docs.CONFIGURATION.read_text(encoding="utf-8")
    for name, command in COMMANDS.items():
        assert f"## `unitune {name}`" in page
        for f in fields(command.config):
            assert re.search(rf"\| `--{f.name}( N\.\.\.)?` \|", page), f"--{f.name} of {name} is not documented"
    assert "| `--method` | required |" in page and "| `--lora_r` | `16` |" in page


def test_template_table_matches_code(tokenizer):
    from unitune.templates import chat_format

    template = tokenizer.chat_template
    assert make_docs.written_table() == make_docs.template_table(tokenizer), "run scripts/make_docs.py"
    assert tokenizer.chat_template == template  # the table is made on copies of the tokenizer
    assert len(make_docs.written_table().splitlines()) == 2 + len(TEXT_TEMPLATES)
    assert chat_format(tokenizer).how in ("markers", "trl", "turns")


def test_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert readme.lstrip().startswith("# unitune") and "make demo" in readme and "make test" in readme
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in readme, f"the README does not link docs/{page.name}"


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves():
    """Links between the pages lead to a file that exists, and a #section to a heading of that file."""
    pages = [ROOT / "README.md", ROOT / "RUNS_STRUCTURE.md", *DOCS.glob("*.md")]
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = page.parent / target if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)} -> {target}#{anchor}")
    assert not broken, "\n".join(broken)
