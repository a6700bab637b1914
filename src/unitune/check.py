"""`unitune check`: what a dataset holds and what it can feed, before any training step.

    unitune check --dataset my.jsonl --method dpo --max_length 512     # == python code/check_dataset.py
"""

from __future__ import annotations

import hashlib
import json

from .config import CheckConfig
from .data import FORMATS, as_text, detect_format, load_split, resolve_dataset, row_views, split_names
from .lengths import Lengths, measure
from .methods import METHODS
from .models import load_tokenizer, resolve_model


def role_problems(row: dict, fmt: str) -> list[str]:
    problems = []
    conversations = [row["messages"]] if fmt == "conversational" else []
    if fmt in ("preference", "preference_implicit"):
        conversations = [c for c in (row["chosen"], row["rejected"]) if isinstance(c, list)]
    for conv in conversations:
        roles = [m["role"] for m in conv]
        if any(a == b == "user" for a, b in zip(roles, roles[1:])):
            problems.append("two user turns in a row")
        if fmt == "conversational" and roles and roles[-1] == "user":
            problems.append("trailing user turn (nothing to learn)")
    return problems


def check_split(dataset: str, split: str, cfg: CheckConfig, lengths: Lengths) -> dict:
    ds = load_split(dataset, split)
    fmt = detect_format(ds.column_names)
    report: dict = {"split": split, "rows": len(ds), "columns": ds.column_names, "format": fmt,
                    "format_description": FORMATS[fmt][1] if fmt else "unknown",
                    "feeds": [m for m, spec in METHODS.items() if detect_format(ds.column_names, spec.formats)]}
    if fmt is None or len(ds) == 0:
        return report
    empty_prompts = empty_replies = same_pairs = duplicates = 0
    roles: dict[str, int] = {}
    seen = set()
    for row in ds:
        prompt, replies = row_views(row, fmt)
        key = hashlib.sha1(json.dumps([row[c] for c in FORMATS[fmt][0]], sort_keys=True,
                                      default=str).encode()).hexdigest()
        duplicates += key in seen
        seen.add(key)
        if fmt != "text":
            empty_prompts += not as_text(prompt).strip()
        empty_replies += sum(not as_text(reply).strip() for reply in replies)
        if fmt in ("preference", "preference_implicit") and len(replies) == 2 and replies[0] == replies[1]:
            same_pairs += 1
        for problem in role_problems(row, fmt):
            roles[problem] = roles.get(problem, 0) + 1
    report.update(measure(ds, fmt, lengths, cfg.max_length))
    del report["tokens"]
    report.update(empty_prompts=empty_prompts, empty_replies=empty_replies, duplicates=duplicates,
                  chosen_equals_rejected=same_pairs, role_order=roles)
    return report


def template_report(tokenizer) -> dict:
    template = tokenizer.chat_template or ""
    return {"has_chat_template": bool(template), "marks_assistant_spans": "{% generation %}" in template
            or "{%- generation %}" in template}


def run_check(cfg: CheckConfig) -> tuple[dict, bool]:
    """(report, ok): ok is False when a split cannot feed --method."""
    dataset = resolve_dataset(cfg.dataset)
    splits = [cfg.split] if cfg.split else split_names(dataset)
    tokenizer = load_tokenizer(resolve_model(cfg.model_name))
    lengths = Lengths(tokenizer)
    report = {"dataset": dataset, "model": cfg.model_name or "smollm2-135m-instruct", **template_report(tokenizer),
              "splits": [check_split(dataset, s, cfg, lengths) for s in splits]}
    ok = True
    if cfg.method:
        for split in report["splits"]:
            split["feeds_requested_method"] = cfg.method in split["feeds"]
            ok &= split["feeds_requested_method"]
    return report, ok


def render(report: dict, method: str | None) -> str:
    lines = [f"dataset: {report['dataset']}   tokenizer: {report['model']}   chat template: "
             f"{'yes' if report['has_chat_template'] else 'NO'}"
             f"{' (marks assistant spans)' if report['marks_assistant_spans'] else ' (no assistant markers: unitune computes assistant masks itself)' if report['has_chat_template'] else ''}"]
    header = f"{'split':<14}{'rows':>6}  {'format':<20}{'feeds':<24}{'prompt tok min/med/p95/max':<28}" \
             f"{'reply tok min/med/p95/max':<27}{'truncated':>10}"
    lines += [header, "-" * len(header)]
    notes = []
    for s in report["splits"]:
        def fmt_stats(key):
            v = s.get(key)
            return "/".join(str(v[k]) for k in ("min", "median", "p95", "max")) if v else "-"
        trunc = s.get("truncated", {})
        lines.append(f"{s['split']:<14}{s['rows']:>6}  {s['format'] or 'UNKNOWN':<20}{','.join(s['feeds']) or '-':<24}"
                     f"{fmt_stats('prompt_tokens'):<28}{fmt_stats('reply_tokens'):<27}{trunc.get('rows', 0):>10}")
        if trunc.get("rows"):
            notes.append(f"{s['split']}: {trunc['rows']} rows exceed --max_length {trunc['max_length']} "
                         f"(by up to {trunc['max_cut']} tokens, mean {trunc['mean_cut']})")
        for key, label in (("empty_prompts", "empty prompts"), ("empty_replies", "empty replies"),
                           ("duplicates", "duplicate rows"), ("chosen_equals_rejected", "pairs with chosen == rejected"),
                           ("prompt_over_max_length", "prompts alone at or over --max_length")):
            if s.get(key):
                notes.append(f"{s['split']}: {s[key]} {label}")
        for problem, count in (s.get("role_order") or {}).items():
            notes.append(f"{s['split']}: {count} rows with {problem}")
        if s["format"] is None:
            notes.append(f"{s['split']}: no known format in columns [{', '.join(s['columns'])}]")
        if method and not s.get("feeds_requested_method", True):
            notes.append(f"{s['split']}: cannot feed --method {method} (needs one of: "
                         + "; ".join('+'.join(FORMATS[f][0]) for f in METHODS[method].formats) + ")")
    return "\n".join(lines + ([""] + notes if notes else ["", "no problems found"]))
