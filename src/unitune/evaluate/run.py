"""The unified evaluator: every run under runs_dir plus the base model -> evaluation_results.json.

    unitune eval --runs_dir runs          # == python code/unified_evaluation.py
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..answers import check_answer
from ..config.train import EvalConfig, parse_columns
from ..data.load import prompt_messages, resolve_dataset, row_views, split_names
from ..data.canonical import load_rows, usable_rows
from ..errors import UserError, first_line, warn
from ..fast.generation import generate_replies
from ..methods import METHODS
from ..models.load import load_tokenizer, resolve_model
from ..train.lifecycle import ASIDE, FINISHED, run_status, status_line
from .cache import base_key, load as load_cached, save as save_cached
from ..files import RUN_FILE, read_run, recorded_base, write_json_atomic
from .scoring import mean_loss, preference_metrics, reply_nll, score_replies, token_weighted

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
    missing = [name for name in cfg.runs or [] if run_status(root / name) is None]
    if missing:
        raise UserError(f"--runs: no run named {', '.join(missing)} in {root}; give folder names of runs under "
                        "--runs_dir, or omit --runs to evaluate them all")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if cfg.runs and folder.name not in cfg.runs:
            continue
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
        entries.append(Entry(folder.name, method, recorded_base(folder) or cfg.base_model,
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
        self.sft = self._sft_items(*usable_rows(rows.get("sft"), METHODS["sft"].formats, "a test split"))
        self.pairs = self._pairs(*usable_rows(rows.get("prefs"), METHODS["dpo"].formats, "a test split"))
        gen, self.gen_format = usable_rows(rows.get("gen"), None, "a test split")
        self.gen_rows = list(gen) if gen is not None else []
        self._answer_formats: dict[str, str] = {}

    def answer_format(self, requested: str, prompts) -> str:
        """--answer_format resolved on this data's generation rows (said once per format asked for)."""
        if requested not in self._answer_formats:
            from ..train.rewards import answer_format_of

            chosen, why = answer_format_of(requested, [{"prompt": p, "answer": row.get("answer")}
                                                       for p, row in zip(prompts, self.gen_rows)])
            print(f"unitune eval: answers checked as {chosen} ({why})", flush=True)
            self._answer_formats[requested] = chosen
        return self._answer_formats[requested]

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
class RewardSetup:
    """The rewards behind one entry's mean_reward, as its GRPO run trained with them (or --reward_funcs)."""

    names: list[str]  # []: the defaults for the data, as in training
    weights: list[float] | None = None  # one per function, then one for the model; None: all 1
    model: str | None = None  # a sequence-classification reward model
    answer_format: str = "auto"
    source: str = "the run's own"
    withheld: str | None = None  # why mean_reward is not computed

    def label(self, names: list[str]) -> str:
        parts = [n.rsplit(":", 1)[-1] for n in names] + ([f"reward model {self.model}"] if self.model else [])
        weights = f", weights {', '.join(f'{w:g}' for w in self.weights)}" if self.weights else ""
        return f"{' + '.join(parts)} ({self.source}{weights})"


def reward_setups(entries: list[Entry], cfg: EvalConfig) -> dict[str, RewardSetup]:
    """Each entry's rewards for mean_reward. With --reward_funcs on the eval command line: those, for every entry
    (one yardstick). Otherwise each GRPO run's own functions, weights, reward model and answer format; the base and
    other runs get none. Code a run record names (a file or a module) is imported only with --trust_reward_code:
    a runs folder someone sent must not run their Python."""
    from ..train.rewards import BUILTINS, load_reward

    if cfg.reward_funcs:
        for name in cfg.reward_funcs:  # a bad name fails now, not after every entry has generated
            load_reward(name)
        shared = RewardSetup(list(cfg.reward_funcs), answer_format=cfg.answer_format, source="--reward_funcs")
        return {entry.name: shared for entry in entries}
    setups = {}
    for entry in entries:
        if entry.method != "grpo":
            continue
        settings = entry.record.get("settings") or {}
        setup = RewardSetup(list(settings.get("reward_funcs") or []), settings.get("reward_weights"),
                            settings.get("reward_model"), settings.get("answer_format") or "auto")
        code = [n for n in setup.names if n not in BUILTINS]
        if code and not cfg.trust_reward_code:
            setup.withheld = (f"not computed: run {entry.name} names reward code ({', '.join(code)}), which runs "
                              "only with --trust_reward_code")
            warn(f"mean_reward {setup.withheld}")
        setups[entry.name] = setup
    return setups


def common_base(entries: list[Entry], fallback: str | None) -> str | None:
    """The base model most runs share (local folders that exist first), for the "base" entry."""
    counts = Counter(e.base_model for e in entries if e.base_model)
    ranked = sorted(counts, key=lambda b: (not Path(b).exists(), -counts[b]))
    return ranked[0] if ranked else fallback


def evaluate_entry(entry: Entry, data: EvalData, cfg: EvalConfig, rewards: RewardSetup | None,
                   device: str) -> dict:
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


def generation_metrics(model, tokenizer, data: EvalData, cfg: EvalConfig, entry: Entry,
                       rewards: RewardSetup | None) -> dict:
    """task_accuracy (rows with an answer), mean_reward (see reward_setups) and generation samples."""
    rows = data.gen_rows
    if rows:
        prompts = [prompt_messages(row, data.gen_format) for row in rows]
    else:
        prompts = [p for p, _ in data.sft][: cfg.max_generation_samples]
    scored = rows and "answer" in rows[0]
    rewarded = rewards is not None and bool(rows)
    wanted = prompts if scored or (rewarded and not rewards.withheld) else prompts[: cfg.max_generation_samples]
    replies = generate_replies(model, tokenizer, wanted, cfg.max_new_tokens, cfg.batch_size,
                               desc=f"{entry.name}: generating")
    out: dict = {"task_accuracy": None}
    if scored:
        answer_format = data.answer_format(cfg.answer_format, prompts)
        out["task_accuracy"] = sum(check_answer(reply, str(row["answer"]), answer_format)
                                   for row, reply in zip(rows, replies)) / len(rows)
        out["answer_format"] = answer_format
    if rewarded:
        out.update(rewarded_metrics(rewards, data, wanted, replies, rows))
    out["generation_samples"] = [{"prompt": p[-1]["content"] if p else "", "response": r}
                                 for p, r in zip(wanted, replies)][: cfg.max_generation_samples]
    return out


def rewarded_metrics(setup: RewardSetup, data: EvalData, prompts, replies: list[str], rows: list[dict]) -> dict:
    """mean_reward and which rewards made it; a reward that fails leaves it null with the reason (the entry's
    other metrics stand)."""
    from ..train.rewards import RewardLog, build_rewards, default_rewards

    if setup.withheld:
        return {"mean_reward": None, "mean_reward_note": setup.withheld}
    names = setup.names
    try:
        names = names or ([] if setup.model else default_rewards(list(rows[0]))[0])
        answer_format = data.answer_format(setup.answer_format, prompts)
        funcs = build_rewards(names, list(rows[0]), RewardLog(), answer_format)[0] if names else []
        value = mean_reward(funcs, setup, prompts, replies, rows)
    except Exception as err:  # guarded like training: one line naming the function, never a lost entry
        why = f"not computed: {first_line(err, typed=not isinstance(err, UserError))}"
        warn(f"mean_reward {why}")
        return {"mean_reward": None, "mean_reward_note": why, "mean_reward_funcs": setup.label(names)}
    return {"mean_reward": value, "mean_reward_funcs": setup.label(names)}


def mean_reward(funcs, setup: RewardSetup, prompts, replies: list[str], rows: list[dict]) -> float:
    """Mean over replies of the weighted sum of the reward functions (and the reward model), as GRPO sums them."""
    from ..train.rewards import reward_columns, weighted_mean

    scores = reward_columns(funcs, prompts, replies, rows)
    if setup.model:
        scores.append(reward_model_scores(setup.model, prompts, replies))
    return weighted_mean(scores, setup.weights)


@functools.lru_cache(maxsize=2)
def reward_model(model_id: str):
    """A reward model and its tokenizer, loaded once per evaluation (every GRPO run may name the same one), with
    TRL's padding fix: a tokenizer without a pad token pads with EOS."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model(model_id)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.to("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def reward_model_scores(model_id: str, prompts, replies: list[str], batch_size: int = 16) -> list[float]:
    """A sequence-classification reward model's score for each prompt + reply, as TRL's GRPOTrainer computes it:
    the conversation through the reward tokenizer's chat template, right-padded, the first logit."""
    tokenizer, model = reward_model(model_id)
    texts = [tokenizer.apply_chat_template(list(p) + [{"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(prompts, replies)]
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start: start + batch_size], return_tensors="pt", padding=True, padding_side="right",
                          add_special_tokens=False).to(model.device)
        scores += model(**batch).logits[:, 0].float().tolist()
    return scores


def run_eval(cfg: EvalConfig) -> dict:
    entries, skipped = discover(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not cfg.skip_base:
        entries.insert(0, Entry("base", None, common_base(entries, cfg.base_model)))
    rewards = reward_setups(entries, cfg)
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
            if entry.path is None and cfg.reuse_base:
                saved_as = base_key(resolve_model(entry.base_model), dataset, columns, rewards.get(entry.name), cfg,
                                    device)
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
            results[entry.name] = evaluate_entry(entry, data_cache[key], cfg, rewards.get(entry.name), device)
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
        write_json_atomic(Path(cfg.output), results)
        print(f"unitune eval: results written to {cfg.output}", flush=True)
    if all("error" in results[e.name] for e in entries):
        raise UserError(f"no run could be evaluated (see the errors in {cfg.output}); check the run folders")
    return results


def run_benchmarks(manager, entries: list[Entry], results: dict, cfg: EvalConfig, device: str) -> None:
    """lm-eval's tasks on every entry that evaluated, merged into its results under "lm_eval"."""
    from .harness import run_tasks

    for entry in (e for e in entries if "error" not in results[e.name]):
        print(f"unitune eval: lm-eval {', '.join(cfg.lm_eval_tasks)} on {entry.name}", flush=True)
        results[entry.name]["lm_eval"] = run_tasks(manager, cfg.lm_eval_tasks, resolve_model(entry.base_model),
                                                   str(entry.path) if entry.path else None, cfg.lm_eval_limit,
                                                   cfg.batch_size, device)
