"""The unified evaluator: every run under runs_dir plus the base model -> evaluation_results.json.

    unitune eval --runs_dir runs          # == python code/unified_evaluation.py
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from pathlib import Path

import torch

from ..answers import check_answer
from ..config import EvalConfig, parse_columns
from ..data.load import resolve_dataset
from ..data.views import prompt_messages
from ..errors import UserError, warn
from ..fast.generation import generate_replies
from ..files import write_json_atomic
from ..methods import is_reward_model
from ..models.load import load_tokenizer, resolve_model
from ..tools import carries_tools
from ..train.lock import now_text
from ..train.rewards import completion_text, episode_text
from ..train.trained import qlora_dtype
from .cache import base_key
from .cache import load as load_cached
from .cache import save as save_cached
from .entries import Entry, base_entry, discover, load_entry_model, teacher_entries, training_metrics
from .heldout import EvalData
from .rewarded import RewardSetup, reward_model_metrics, reward_setups, rewarded_metrics
from .scoring import mean_loss, preference_metrics, reply_nll, score_replies, token_weighted
from .tool_replies import ToolSetup, replies_with_tools, tool_setup


def evaluate_entry(entry: Entry, data: EvalData, cfg: EvalConfig, rewards: RewardSetup | None,
                   device: str, tools: ToolSetup | None = None) -> dict:
    started = time.time()
    if entry.path is not None and is_reward_model(entry.method):
        return evaluate_reward_model(entry, data, cfg, started)
    model, scored_as = load_entry_model(entry, device)
    tokenizer = load_tokenizer(str(entry.path)) if entry.path else \
        load_tokenizer(resolve_model(entry.base_model), entry.revision)
    if tools is not None and tools.template and entry.path is None:
        tokenizer.chat_template = tools.template  # the base is asked as the tool runs were, tools listed
    if tools is not None and not carries_tools(tokenizer):  # a run whose template cannot: its replies as they are
        tools, untooled = None, f"replies without the tools ({tools.label}): its chat template renders no tool calls"
        warn(f"{entry.name}: {untooled}")
    else:
        untooled = None
    result: dict = {"method": entry.method or ("base" if entry.path is None else None),
                    **training_metrics(entry.path), "scored_as": scored_as}
    if not cfg.skip_perplexity and data.sft:
        test_loss = token_weighted(reply_nll(model, tokenizer, data.sft, cfg.batch_size, f"{entry.name}: test loss"))
        result.update(test_loss=test_loss, perplexity=math.exp(test_loss))
    else:
        result.update(test_loss=None, perplexity=None)
    if data.pairs:
        scored = score_replies(model, tokenizer, [(p, [c, r]) for p, c, r in data.pairs], cfg.batch_size,
                               f"{entry.name}: pairs")
        chosen, rejected = mean_loss([s[0] for s in scored]), mean_loss([s[1] for s in scored])
        result.update(preference_metrics(chosen, rejected))
    else:
        result.update(preference_metrics([], []))
    result.update(generation_metrics(model, tokenizer, data, cfg, entry, rewards, tools))
    if untooled:
        result["tools_note"] = untooled
    return result | where_from(entry, data, started)


def evaluate_reward_model(entry: Entry, data: EvalData, cfg: EvalConfig, started: float) -> dict:
    """An RM run scores replies and writes none: its reward accuracy and margin on the test pairs, no LM metrics."""
    if not (entry.path / "adapter_config.json").exists():
        raise UserError("no adapter_config.json (the run did not finish saving)")
    return {"method": entry.method, **training_metrics(entry.path),
            "scored_as": "adapter and score head merged into the base, fp32" + (
                " (the dequantised 4-bit base it trained on)" if qlora_dtype(entry.path) is not None else ""),
            **reward_model_metrics(str(entry.path), data.pairs, cfg.batch_size), **where_from(entry, data, started)}


def where_from(entry: Entry, data: EvalData, started: float) -> dict:
    """The model and data an entry was scored on, and when."""
    return dict(model_name=entry.record.get("model_name", entry.base_model) if entry.path else entry.base_model,
                model_path=str(entry.path) if entry.path else resolve_model(entry.base_model),
                dataset=data.dataset, splits=data.splits, eval_time_seconds=round(time.time() - started, 2),
                evaluated_at=now_text())


def generation_metrics(model, tokenizer, data: EvalData, cfg: EvalConfig, entry: Entry,
                       rewards: RewardSetup | None, tools: ToolSetup | None = None) -> dict:
    """task_accuracy (rows with an answer), mean_reward (see reward_setups) and generation samples; with ``tools``
    the replies call them (tool_replies), and the answer is what the model wrote after the tools' results."""
    rows = data.gen_rows
    if rows:
        prompts = [prompt_messages(row, data.gen_format) for row in rows]
    else:
        prompts = [p for p, _ in data.sft][: cfg.max_generation_samples]
    scored = rows and "answer" in rows[0]
    rewarded = rewards is not None and bool(rows)
    wanted = prompts if scored or (rewarded and not rewards.withheld) else prompts[: cfg.max_generation_samples]
    out: dict = {"task_accuracy": None}
    if tools is None:
        replies = shown = generate_replies(model, tokenizer, wanted, cfg.max_new_tokens, cfg.batch_size,
                                           desc=f"{entry.name}: generating")
    else:
        episodes, counts = replies_with_tools(model, tokenizer, wanted, (rows or [{}] * len(wanted))[:len(wanted)],
                                              *tools.loaded(), tools.rounds, cfg.max_new_tokens, cfg.batch_size,
                                              desc=f"{entry.name}: generating with tools")
        replies, shown = [completion_text(e) for e in episodes], [episode_text(e) for e in episodes]
        out.update(counts, tools=tools.label)
    if scored:
        answer_format = data.answer_format(cfg.answer_format, prompts)
        out["task_accuracy"] = sum(check_answer(reply, str(row["answer"]), answer_format)
                                   for row, reply in zip(rows, replies)) / len(rows)
        out["answer_format"] = answer_format
    if rewarded:
        out.update(rewarded_metrics(rewards, data, wanted, replies, rows))
    out["generation_samples"] = [{"prompt": p[-1]["content"] if p else "", "response": r}
                                 for p, r in zip(wanted, shown)][: cfg.max_generation_samples]
    return out


def run_eval(cfg: EvalConfig) -> dict:
    entries, skipped = discover(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not cfg.skip_base:
        entries.insert(0, base_entry(entries, cfg.base_model))
    entries += teacher_entries(entries)
    rewards = reward_setups(entries, cfg)
    tools = tool_setup(entries, cfg)
    benchmarks = None
    if cfg.lm_eval_tasks:  # an unknown task or a missing lm-eval fails now, before any model loads
        from .harness import check_tasks, task_manager

        benchmarks = task_manager(cfg.lm_eval_include_path)
        check_tasks(benchmarks, cfg.lm_eval_tasks)
    data_cache: dict[tuple[str, str], EvalData] = {}
    recorded = [parse_columns((e.record.get("settings") or {}).get("columns")) for e in entries]
    results: dict = {}
    for number, entry in enumerate(entries, 1):
        print(f"unitune eval [{number}/{len(entries)}]: {entry.name}", flush=True)
        try:
            dataset = resolve_dataset(cfg.dataset or entry.record.get("dataset"))
            # a run's own --columns; the base gets the first run's, as it gets the data the runs share
            columns = cfg.column_map or recorded[number - 1] or (next(filter(None, recorded), {})
                                                                  if entry.path is None else {})
            reused, saved_as = None, None
            asked = tools if tools is not None and tools.applies(dataset) else None  # the tool runs' questions
            if entry.path is None and cfg.reuse_base:
                saved_as = base_key(resolve_model(entry.base_model), dataset, columns, rewards.get(entry.name), cfg,
                                    device, entry.revision, asked)
                reused = load_cached(saved_as)
            if reused is not None:
                print("unitune eval: base: its results from an earlier evaluation with the same model, data, settings "
                      "and versions (--reuse_base false scores it again)", flush=True)
                results[entry.name] = reused
                continue
            key = (dataset, json.dumps(columns, sort_keys=True))
            if key not in data_cache:
                data_cache[key] = EvalData(dataset, cfg, columns)
            torch.manual_seed(0)
            results[entry.name] = evaluate_entry(entry, data_cache[key], cfg, rewards.get(entry.name), device, asked)
            if saved_as is not None:
                save_cached(saved_as, results[entry.name])
        except Exception as err:  # a broken run must not stop the others
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            warn(f"{entry.name}: {message}")
            results[entry.name] = {"error": f"{type(err).__name__}: {message}",
                                   "model_path": str(entry.path) if entry.path else None}
    results.update(skipped)
    try:
        if benchmarks is not None:
            run_benchmarks(benchmarks, entries, results, cfg, device)
    finally:  # what was measured is kept, even when lm-eval stops with an error
        merged = save_results(Path(cfg.output), results)
        kept = len(merged) - len(results)
        print(f"unitune eval: results written to {cfg.output}" + (f" (with the earlier results of {kept} other "
                                                                   "entries)" if kept else ""), flush=True)
    if all("error" in results[e.name] for e in entries):
        raise UserError(f"no run could be evaluated (see the errors in {cfg.output}); check the run folders")
    return merged


def save_results(path: Path, results: dict) -> dict:
    """Merge this evaluation's entries into the results file, each dated (ISO, local time with its offset): an entry
    evaluated again is replaced, every other one is kept, also one whose run folder is gone (the report marks it:
    its results may be all that is left of a run deleted for space). Two evaluations at once merge in turn."""
    now = now_text()
    for result in results.values():
        result.setdefault("evaluated_at", now)  # a scored entry has its own (a cached base: when it was scored)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: merged unguarded
            fcntl.flock(folder, fcntl.LOCK_EX)  # released with the descriptor
        merged = earlier_results(path)
        for name, result in results.items():
            merged[name] = kept_over(merged.get(name), result)
        write_json_atomic(path, merged)
    finally:
        os.close(folder)
    return merged


def kept_over(earlier: dict | None, result: dict) -> dict:
    """The entry to keep: this evaluation's, unless it only says why it could not score (skipped: training again now;
    an error such as an unreachable Hub) while the earlier one has numbers, which stay, dated, with the reason."""
    failed = "skipped" in result or "error" in result
    if failed and earlier is not None and not ("skipped" in earlier or "error" in earlier):
        why = result.get("skipped") or result.get("error")
        return {**earlier, "not_reevaluated": f"{why} ({result.get('evaluated_at')})"}
    return result


def earlier_results(path: Path) -> dict:
    """The results file's entries; a file that is not a JSON object is moved aside (never lost) and starts anew."""
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
        if isinstance(earlier, dict):
            return earlier
    except (OSError, ValueError):
        pass
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(aside)
    warn(f"{path} could not be read as results; moved it to {aside} and wrote this evaluation's results alone")
    return {}


def run_benchmarks(manager, entries: list[Entry], results: dict, cfg: EvalConfig, device: str) -> None:
    """lm-eval's tasks on every entry that evaluated and writes text (not a reward model), merged into its results
    under "lm_eval"."""
    from .harness import run_tasks

    for entry in (e for e in entries if "error" not in results[e.name] and not is_reward_model(e.method)):
        print(f"unitune eval: lm-eval {', '.join(cfg.lm_eval_tasks)} on {entry.name}", flush=True)
        revision = entry.record.get("base_revision") if entry.path else entry.revision
        results[entry.name]["lm_eval"] = run_tasks(manager, cfg.lm_eval_tasks, resolve_model(entry.base_model),
                                                   str(entry.path) if entry.path else None, cfg.lm_eval_limit,
                                                   cfg.batch_size, device, revision)
