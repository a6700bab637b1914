"""What the evaluator scores: the finished runs under --runs_dir and the base model (its entries), each with its
training metrics and its model, loaded as it was trained."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import EvalConfig
from ..errors import UserError, warn
from ..methods import METHODS
from ..models.load import resolve_model
from ..models.revision import pinned
from ..train.lock import holder
from ..train.records import (ASIDE, FINISHED, MERGE_FILE, RUN_FILE, read_run, recorded_base, run_status,
                             status_line)
from ..train.trained import as_trained

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
    revision: str | None = None  # the base entry's: the Hub commit the runs trained on


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
        held = holder(folder)  # a finished run trained further: its adapter is rewritten under it
        if status != FINISHED or held:
            why = f"training now (pid {held.get('pid')} on {held.get('host')} since {held.get('since')})" if held else \
                status_line(folder)
            skipped[folder.name] = {"skipped": f"the run is {why}", "status": "running" if held else status,
                                    "model_path": str(folder)}
            warn(f"skipping {folder.name}: the run is {why}")
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


def load_entry_model(entry: Entry, device: str) -> tuple[object, str]:
    """The entry's model as it was trained (train.trained.as_trained) and how it is scored, in words. The base model:
    fp32 on CPU; on CUDA in bf16 (fp32 where the GPU has none) spread with ``device_map="auto"``."""
    from transformers import AutoModelForCausalLM

    if entry.path is not None:
        if not (entry.path / "adapter_config.json").exists():
            raise UserError("no adapter_config.json (the run did not finish saving)")
        return as_trained(entry.path, resolve_model(entry.base_model), device)
    revision = pinned(resolve_model(entry.base_model), entry.revision, "the runs")
    if device == "cpu":
        return AutoModelForCausalLM.from_pretrained(resolve_model(entry.base_model), dtype=torch.float32,
                                                    revision=revision).eval(), "base model, fp32"
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32  # fp16 overflows on some models
    model = AutoModelForCausalLM.from_pretrained(resolve_model(entry.base_model), dtype=dtype, device_map="auto",
                                                 revision=revision)
    return model.eval(), f"base model, {str(dtype).removeprefix('torch.')}"


def root_base(model: str) -> str:
    """The model a run's base came from: a folder `unitune merge` wrote (a run trained on after another, e.g. GRPO
    after SFT) stands for the base of the run merged into it."""
    for _ in range(8):  # a chain of merges, not a cycle
        try:
            model = json.loads((Path(model) / MERGE_FILE).read_text())["base_model"]
        except (OSError, ValueError, KeyError, TypeError):
            break
    return model


def base_entry(entries: list[Entry], fallback: str | None) -> Entry:
    """The "base" entry: the base model most runs share (local folders that exist first; a merged run stands for its
    own base), at the Hub revision most of those runs trained on."""
    counts = Counter(root_base(e.base_model) for e in entries if e.base_model)
    ranked = sorted(counts, key=lambda b: (not Path(b).exists(), -counts[b]))
    base = ranked[0] if ranked else fallback
    revisions = Counter(e.record.get("base_revision") for e in entries if e.base_model == base)  # merged: none
    revision = max(revisions, key=revisions.get) if revisions else None
    datasets = Counter(e.record.get("dataset") for e in entries if e.record.get("dataset"))
    record = {"dataset": max(datasets, key=datasets.get)} if datasets else {}  # scored on the data the runs share
    return Entry("base", None, base, record=record, revision=revision)




def teacher_entries(entries: list[Entry]) -> list[Entry]:
    """Each distillation's --teacher as an entry of its own, once, scored on the run's data beside its students:
    a run folder as a run ("teacher_<name>" unless it is already among the entries), a model as the base is."""
    have = {e.path.resolve() for e in entries if e.path is not None}
    found: dict[str, Entry] = {}
    for entry in entries:
        teacher = (entry.record.get("settings") or {}).get("teacher")
        if not teacher or teacher in found:
            continue
        run = Path(teacher)
        if (run / RUN_FILE).is_file():
            if run.resolve() not in have:
                found[teacher] = Entry(f"teacher_{run.name}", (read_run(run) or {}).get("method"), recorded_base(run),
                                       run, read_run(run) or {})
        else:
            found[teacher] = Entry(f"teacher_{Path(teacher).name}", "teacher", teacher,
                                   record={"dataset": entry.record.get("dataset")})
    return list(found.values())
