"""`unitune check`: what a dataset holds and what it can feed, before any training step.

    unitune check --dataset my.jsonl --method dpo --max_length 512     # == python code/check_dataset.py
"""

from __future__ import annotations

import hashlib
import json

from ..config import CheckConfig
from ..methods import GENERATING, METHODS, is_reward_model
from ..models.load import generation_config, load_tokenizer, resolve_model
from ..templates import chat_format, eos_ids, use_template_file
from .formats import FORMATS, as_text, conversational, detect_format, row_tools
from .lengths import Lengths, measure
from .load import resolve_dataset, split_names
from .pipeline import DataSettings, prepare, prepare_rows
from .rows import describe
from .stream import first_rows
from .views import prompt_messages, row_views


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


STREAM_ROWS = 1000  # check --streaming: the rows read from each split's stream without --sample


def check_split(dataset: str, split: str, cfg: CheckConfig, lengths: Lengths) -> dict:
    settings = DataSettings(cfg.column_map, max_bad_rows=None)
    if cfg.streaming:  # the first rows of the stream, never the whole split
        first = first_rows(dataset, split, settings, cfg.sample or STREAM_ROWS)
        prepared = prepare_rows(first, dataset, split, None, settings, required=False)
    else:
        prepared = prepare(dataset, split, None, settings, required=False)
    source, columns = prepared.source_format, prepared.columns
    report: dict = {"split": split, "rows": prepared.read, "columns": columns, "format": source,
                    "streamed": cfg.streaming,
                    "format_description": FORMATS[source][1] if source else "unknown",
                    "feeds": [m for m, spec in METHODS.items() if detect_format(columns, spec.formats)]}
    if source is None or prepared.read == 0:
        return report
    report["bad_rows"] = prepared.bad  # {kind: row numbers}; the numbers below are over the usable rows
    ds, fmt = prepared.rows, prepared.format
    if len(ds) == 0:
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
    if cfg.sample and cfg.sample < len(ds):  # lengths (rendering, tokenising: the cost) on a seeded sample
        report["sampled"] = cfg.sample
        report.update(measure(ds.shuffle(seed=0).select(range(cfg.sample)), fmt, lengths, cfg.max_length))
    else:
        report.update(measure(ds, fmt, lengths, cfg.max_length))
    del report["tokens"]
    report.update(empty_prompts=empty_prompts, empty_replies=empty_replies, duplicates=duplicates,
                  chosen_equals_rejected=same_pairs, role_order=roles)
    if cfg.show_tokens:
        report["token_view"] = [row_tokens(row, fmt, lengths.tokenizer, cfg.method)
                                for row in ds.select(range(min(cfg.show_tokens, len(ds))))]
    return report


def template_report(tokenizer, source: str) -> dict:
    """How the chat template is masked, and whether generation stops at its end-of-turn token."""
    if not tokenizer.chat_template:
        return {"has_chat_template": False}
    chat = chat_format(tokenizer)
    eos = eos_ids(tokenizer, generation_config(source))
    eot = chat.end_of_turn
    return {"has_chat_template": True, "masking": chat.how, "masking_description": chat.description,
            "end_of_turn": eot, "system_folded": chat.folds_system,
            "stops_at_end_of_turn": eot is None or tokenizer.convert_tokens_to_ids(eot) in eos}


def token_segments(text: str, mask: list[int], starts: list[int]) -> list[dict]:
    """{text, trained} segments that concatenate to exactly ``text``. Token i covers text from its start to the
    next token's start, so a token that splits a multi-byte character neither repeats nor drops it."""
    bounds = [0, *starts[1:], len(text)]
    segments: list[dict] = []
    for i, trained in enumerate(mask):
        piece = text[bounds[i]: max(bounds[i], bounds[i + 1])]
        if not piece:
            continue
        if segments and segments[-1]["trained"] == bool(trained):
            segments[-1]["text"] += piece
        else:
            segments.append({"text": piece, "trained": bool(trained)})
    return segments


def row_tokens(row: dict, fmt: str, tokenizer, method: str | None = None) -> list[dict]:
    """One row as the trainer sees it: conversations with every reply trained (SFT), pairs as prompt + chosen with
    the scored reply trained, prompts alone untrained (and every row for GRPO, RLOO and distill, which sample the
    replies); plain strings as prompt + reply, the reply trained. A reward model (rm) trains on the whole of
    prompt + chosen (its score, read at the last token, sees every token), so all of it is marked."""
    prompt, replies = row_views(row, fmt)
    if method in GENERATING:
        prompt, replies = prompt_messages(row, fmt), []
    if is_reward_model(method) and replies:
        whole = chat_format(tokenizer).render(prompt + replies[0]) if conversational(row, fmt) else \
            as_text(prompt) + as_text(replies[0])
        return [{"text": whole, "trained": True}]
    if conversational(row, fmt):
        chat = chat_format(tokenizer)
        if not replies:
            text = chat.generation_prompt(prompt, tools=row_tools(row))
            return [{"text": text, "trained": False}]
        conversation = row["messages"] if fmt == "conversational" else prompt + replies[0]
        text, _, mask, starts = chat.tokens(conversation, last_only=fmt != "conversational", tools=row_tools(row))
        return token_segments(text, mask, starts)
    head = as_text(prompt) if fmt != "text" else ""
    text = head + (as_text(replies[0]) if replies else "")
    starts = [a for a, _ in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    return token_segments(text, [int(a >= len(head)) for a in starts], starts)


def render_tokens(report: dict, color: bool) -> str:
    mark = ("\033[1;42m", "\033[0m") if color else ("[[", "]]")
    lines = ["", f"token view: the trained text is {'highlighted' if color else 'inside [[...]]'}; the rest is "
                 "context the model reads but is not trained on"]
    for split in report["splits"]:
        for number, segments in enumerate(split.get("token_view", [])):
            lines.append(f"--- {split['split']} row {number}")
            lines.append("".join(f"{mark[0]}{seg['text']}{mark[1]}" if seg["trained"] else seg["text"]
                                 for seg in segments))
    return "\n".join(lines)


def run_check(cfg: CheckConfig, name: str | None = None) -> tuple[dict, bool]:
    """(report, ok) of one source (``name``: one of --dataset; None: the first, or the bundled data): ok is False
    when a split cannot feed --method."""
    dataset = resolve_dataset(name or (cfg.dataset or [None])[0])
    splits = [cfg.split] if cfg.split else split_names(dataset)
    source = resolve_model(cfg.model_name)
    tokenizer = load_tokenizer(source)
    use_template_file(tokenizer, cfg.chat_template)
    lengths = Lengths(tokenizer)
    report = {"dataset": dataset, "model": cfg.model_name or "smollm2-135m-instruct",
              **template_report(tokenizer, source), "splits": [check_split(dataset, s, cfg, lengths) for s in splits]}
    ok = True
    if cfg.method:
        for split in report["splits"]:
            split["feeds_requested_method"] = cfg.method in split["feeds"]
            ok &= split["feeds_requested_method"]
    return report, ok


def render(report: dict, method: str | None) -> str:
    masks = f"yes, masks from {report['masking_description']}" if report["has_chat_template"] else "NO"
    lines = [f"dataset: {report['dataset']}   tokenizer: {report['model']}   chat template: {masks}"]
    width = max([24] + [len(",".join(s["feeds"])) + 2 for s in report["splits"]])  # the feeds column
    header = f"{'split':<14}{'rows':>6}  {'format':<20}{'feeds':<{width}}{'prompt tok min/med/p95/max':<28}" \
             f"{'reply tok min/med/p95/max':<27}{'truncated':>10}"
    lines += [header, "-" * len(header)]
    notes = []
    if not report.get("stops_at_end_of_turn", True):
        notes.append(f"the template ends a reply with {report['end_of_turn']}, which is not among the EOS ids of the "
                     "tokenizer or generation_config.json: generation would not stop after a reply (unitune's runs "
                     "add it to their generation_config.json)")
    if report.get("system_folded"):
        notes.append("the template rejects system messages: training puts a row's system text at the start of its "
                     "first user turn")
    for s in report["splits"]:
        def fmt_stats(key):
            v = s.get(key)
            return "/".join(str(v[k]) for k in ("min", "median", "p95", "max")) if v else "-"
        trunc = s.get("truncated", {})
        lines.append(f"{s['split']:<14}{s['rows']:>6}  {s['format'] or 'UNKNOWN':<20}"
                     f"{','.join(s['feeds']) or '-':<{width}}{fmt_stats('prompt_tokens'):<28}"
                     f"{fmt_stats('reply_tokens'):<27}{trunc.get('rows', 0):>10}")
        if s.get("streamed"):
            notes.append(f"{s['split']}: the first {s['rows']} rows of its stream checked (--streaming)")
        if s.get("sampled"):
            notes.append(f"{s['split']}: token lengths and truncation measured on a random {s['sampled']} of its "
                         f"{s['rows']} rows (--sample); every row was counted and checked for unusable rows")
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
        if s.get("bad_rows"):
            notes.append(f"{s['split']}: rows that cannot be used (training drops them, or stops when more than --max_bad_rows are): {describe(s['bad_rows'])}")
        if s["format"] is None:
            notes.append(f"{s['split']}: no known format in columns [{', '.join(s['columns'])}]")
        if method and not s.get("feeds_requested_method", True):
            notes.append(f"{s['split']}: cannot feed --method {method} (needs one of: "
                         + "; ".join('+'.join(FORMATS[f][0]) for f in METHODS[method].formats) + ")")
    return "\n".join(lines + ([""] + notes if notes else ["", "no problems found"]))
