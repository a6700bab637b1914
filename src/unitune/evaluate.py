"""The unified evaluator: every run under runs_dir plus the base model -> evaluation_results.json.

    unitune eval --runs_dir runs          # == python code/unified_evaluation.py
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import EvalConfig, parse_columns
from .data import detect_format, prompt_messages, resolve_dataset, row_views, split_names
from .normalize import canonical, drop_bad_rows, load_rows
from .errors import UserError, warn
from .generation import generate_replies
from .methods import METHODS
from .models import load_tokenizer, resolve_model
from .lifecycle import ASIDE, FINISHED, run_status, status_line
from .runs import RUN_FILE, adapter_base, read_run, write_json_atomic
from .scoring import mean_loss, preference_metrics, reply_nll, score_replies, token_weighted
from .tasks import check_answer

TRAINING_KEYS = ("initial_train_loss", "final_train_loss", "best_eval_loss", "final_eval_loss", "total_steps",
                 "training_time_seconds", "training_time_hours")


@dataclass
class Entry:
    """One thing to evaluate: a run folder, or the base model (path None)."""

    name: str
    method: str | None
    base_model: str | None
    path: Path | None = None
    record: dict = field(default_factory=dict)


def discover(cfg: EvalConfig) -> tuple[list[Entry], dict[str, dict]]:
    """The finished runs under --runs_dir, and the unfinished ones with why they are skipped."""
    root = Path(cfg.runs_dir)
    if not root.is_dir():
        raise UserError(f"runs folder not found: {root}; train first (`unitune train --method sft`) or pass "
                        "--runs_dir")
    entries, skipped = [], {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        status = run_status(folder)
        if status is None:
            continue
        if ASIDE in folder.name:  # kept by --overwrite_output_dir, not a run to compare
            print(f"unitune eval: skipping {folder.name}: a previous run moved aside by --overwrite_output_dir",
                  flush=True)
            continue
        if status != FINISHED:
            skipped[folder.name] = {"skipped": f"the run is {status_line(folder)}", "status": status,
                                    "model_path": str(folder)}
            warn(f"skipping {folder.name}: the run is {status_line(folder)}")
            continue
        try:
            record = read_run(folder) or {}
        except (OSError, ValueError):
            record = {}
        prefix = folder.name.split("_")[0].lower()
        method = record.get("method") or (prefix if prefix in METHODS else None)
        if cfg.methods and method not in cfg.methods:
            continue
        entries.append(Entry(folder.name, method, record.get("base_model") or adapter_base(folder) or cfg.base_model,
                             folder, record))
    if not entries:
        unfinished = f" ({len(skipped)} unfinished: {', '.join(skipped)})" if skipped else ""
        raise UserError(f"no finished runs in {root}{unfinished} (a run is a folder with adapter_config.json or "
                        f"{RUN_FILE}); train one with `unitune train --method sft`, or point --runs_dir at your runs")
    return entries, skipped


def training_metrics(folder: Path | None) -> dict:
    """The seed's training keys from trainer_state.json (all null for the base model)."""
    metrics = dict.fromkeys(TRAINING_KEYS)
    if folder is None:
        return metrics
    state = json.loads((folder / "trainer_state.json").read_text())
    history = state.get("log_history", [])
    losses = [e["loss"] for e in history if "loss" in e]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    runtime = next((e["train_runtime"] for e in reversed(history) if "train_runtime" in e), None)
    metrics.update(initial_train_loss=losses[0] if losses else None, final_train_loss=losses[-1] if losses else None,
                   best_eval_loss=min(evals) if evals else None, final_eval_loss=evals[-1] if evals else None,
                   total_steps=state.get("global_step"), training_time_seconds=runtime,
                   training_time_hours=runtime / 3600 if runtime is not None else None)
    return metrics


class EvalData:
    """The first max_samples rows of the test splits of one dataset, loaded once and shared by entries."""

    def __init__(self, dataset: str, cfg: EvalConfig, columns: dict[str, str] | None = None):
        self.dataset = dataset
        available = split_names(dataset)
        self.splits = {kind: split for kind, split in
                       (("sft", cfg.sft_split), ("prefs", cfg.prefs_split), ("gen", cfg.gen_split))
                       if split in available}
        rows = {kind: load_rows(dataset, split, columns or {}) for kind, split in self.splits.items()}
        rows = {kind: ds.select(range(min(cfg.max_samples, len(ds)))) for kind, ds in rows.items()}
        self.sft = self._sft_items(*self._usable(rows.get("sft"), METHODS["sft"].formats))
        self.pairs = self._pairs(*self._usable(rows.get("prefs"), METHODS["dpo"].formats))
        gen, self.gen_format = self._usable(rows.get("gen"), None)
        self.gen_rows = list(gen) if gen is not None else []

    @staticmethod
    def _usable(ds, accepted):
        """(rows in their canonical format without the unusable ones, that format), or (None, None)."""
        source = detect_format(ds.column_names, accepted) if ds is not None else None
        if source is None:
            return None, None
        ds, fmt = canonical(ds, source)
        return drop_bad_rows(ds, fmt, 1.0, "a test split"), fmt

    @staticmethod
    def _sft_items(ds, fmt):
        """(prompt, reply) per row: a conversation's last turn, a pair's chosen reply, a completion."""
        if fmt in (None, "text"):
            return []
        return [(prompt, replies[0][-1:] if fmt == "conversational" else replies[0])
                for prompt, replies in (row_views(row, fmt) for row in ds)]

    @staticmethod
    def _pairs(ds, fmt):
        """(prompt, chosen, rejected) per row."""
        if fmt is None:
            return []
        return [(prompt, chosen, rejected) for prompt, (chosen, rejected) in (row_views(row, fmt) for row in ds)]


def load_entry_model(entry: Entry, device: str):
    """The base model, or base + adapter merged (faster scoring; identical outputs up to rounding)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(entry.base_model), dtype=torch.float32)
    if entry.path is not None:
        if not (entry.path / "adapter_config.json").exists():
            raise UserError("no adapter_config.json (the run did not finish saving)")
        model = PeftModel.from_pretrained(model, str(entry.path)).merge_and_unload()
    return model.to(device).eval()


@dataclass
class RewardPlan:
    """The rewards behind mean_reward, which entries get it, and why it is null where it is not computed."""

    names: list[str] | None  # None: no mean_reward; []: the defaults for the data
    every_entry: bool = False  # --reward_funcs on the eval command line: every entry; else GRPO runs and the base
    withheld: str | None = None

    def applies(self, entry: Entry) -> bool:
        return self.names is not None and (self.every_entry or entry.method in ("grpo", None))


def reward_plan(entries: list[Entry], cfg: EvalConfig) -> RewardPlan:
    """--reward_funcs given here, else the first GRPO run's own rewards. Code a run record names (a file or a module)
    is imported only with --trust_reward_code: a runs folder someone sent must not run their Python."""
    from .rewards import BUILTINS, load_reward

    if cfg.reward_funcs:
        for name in cfg.reward_funcs:  # a bad name fails now, not after every entry has generated
            load_reward(name)
        return RewardPlan(cfg.reward_funcs, every_entry=True)
    for entry in entries:
        if entry.method == "grpo":
            names = (entry.record.get("settings") or {}).get("reward_funcs") or []
            code = [n for n in names if n not in BUILTINS]
            if code and not cfg.trust_reward_code:
                why = (f"not computed: run {entry.name} names reward code ({', '.join(code)}), which runs only with "
                       "--trust_reward_code")
                warn(f"mean_reward {why}")
                return RewardPlan(names, withheld=why)
            return RewardPlan(names)
    return RewardPlan(None)


def common_base(entries: list[Entry], fallback: str | None) -> str | None:
    """The base model most runs share (local folders that exist first), for the "base" entry."""
    counts = Counter(e.base_model for e in entries if e.base_model)
    ranked = sorted(counts, key=lambda b: (not Path(b).exists(), -counts[b]))
    return ranked[0] if ranked else fallback


def evaluate_entry(entry: Entry, data: EvalData, cfg: EvalConfig, rewards: RewardPlan, device: str) -> dict:
    started = time.time()
    model = load_entry_model(entry, device)
    tokenizer = load_tokenizer(str(entry.path) if entry.path else resolve_model(entry.base_model))
    result: dict = {"method": entry.method or ("base" if entry.path is None else None),
                    **training_metrics(entry.path)}
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
    result.update(generation_metrics(model, tokenizer, data, cfg, entry, rewards))
    result.update(model_name=entry.record.get("model_name", entry.base_model) if entry.path else entry.base_model,
                  model_path=str(entry.path) if entry.path else resolve_model(entry.base_model),
                  dataset=data.dataset, splits=data.splits, eval_time_seconds=round(time.time() - started, 2))
    return result


def generation_metrics(model, tokenizer, data: EvalData, cfg: EvalConfig, entry: Entry, rewards: RewardPlan) -> dict:
    """task_accuracy (rows with an answer), mean_reward (see RewardPlan) and generation samples."""
    rows = data.gen_rows
    if rows:
        prompts = [prompt_messages(row, data.gen_format) for row in rows]
    else:
        prompts = [p for p, _ in data.sft][: cfg.max_generation_samples]
    scored = rows and "answer" in rows[0]
    rewarded = rewards.applies(entry) and bool(rows)
    wanted = prompts if scored or (rewarded and not rewards.withheld) else prompts[: cfg.max_generation_samples]
    replies = generate_replies(model, tokenizer, wanted, cfg.max_new_tokens, cfg.batch_size,
                               desc=f"{entry.name}: generating")
    out: dict = {"task_accuracy": None}
    if scored:
        out["task_accuracy"] = sum(check_answer(r, text) for r, text in zip(rows, replies)) / len(rows)
    if rewarded and rewards.withheld:
        out.update(mean_reward=None, mean_reward_note=rewards.withheld)
    elif rewarded:
        out["mean_reward"] = mean_reward(rewards.names, wanted, replies, rows)
    out["generation_samples"] = [{"prompt": p[-1]["content"] if p else "", "response": r}
                                 for p, r in zip(wanted, replies)][: cfg.max_generation_samples]
    return out


def mean_reward(names: list[str], prompts, replies: list[str], rows: list[dict]) -> float:
    """Mean over replies of the run's reward functions summed with equal weights."""
    from .rewards import default_rewards, load_reward

    names = names or default_rewards(list(rows[0]))[0]
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    columns = {k: [row[k] for row in rows] for k in rows[0] if k != "prompt"}
    totals = [0.0] * len(replies)
    for name in names:
        for i, value in enumerate(load_reward(name)(prompts=prompts, completions=completions, **columns)):
            totals[i] += float(value)
    return sum(totals) / len(totals)


def run_eval(cfg: EvalConfig) -> dict:
    entries, skipped = discover(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rewards = reward_plan(entries, cfg)
    if not cfg.skip_base:
        entries.insert(0, Entry("base", None, common_base(entries, cfg.base_model)))
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
            key = (dataset, json.dumps(columns, sort_keys=True))
            if key not in data_cache:
                data_cache[key] = EvalData(dataset, cfg, columns)
            torch.manual_seed(0)
            results[entry.name] = evaluate_entry(entry, data_cache[key], cfg, rewards, device)
        except Exception as err:  # a broken run must not stop the others
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            warn(f"{entry.name}: {message}")
            results[entry.name] = {"error": f"{type(err).__name__}: {message}",
                                   "model_path": str(entry.path) if entry.path else None}
    results.update(skipped)
    write_json_atomic(Path(cfg.output), results)
    print(f"unitune eval: results written to {cfg.output}", flush=True)
    if all("error" in results[e.name] for e in entries):
        raise UserError(f"no run could be evaluated (see the errors in {cfg.output}); check the run folders")
    return results
