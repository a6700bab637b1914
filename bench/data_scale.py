"""Data at scale: how long unitune takes from a data file to the first optimizer step, against plain TRL on the
same rows, the cached second run, `unitune check`'s throughput and the peak memory of preparation.

    .venv/bin/python bench/data_scale.py                       # 10k rows; prints a JSON line last
    .venv/bin/python bench/data_scale.py --rows 500            # a quick run-through
    .venv/bin/python bench/data_scale.py --rows 10000 --scale_rows 100000   # adds data_prep_scaling
    .venv/bin/python bench/data_scale.py --generate pairs 1000 pairs.jsonl  # only write generated rows

The rows are generated here, seeded: UltraFeedback-shaped pairs (a prompt string, chosen/rejected message lists
that repeat the user turn, replies of 80-200 words) and Tulu-shaped conversations (2-8 turns, a third with a system
turn). As in bench/run.py, each contender runs in its own process (`--child`), on the embedded model, offline.

Times (seconds, one run each: take them on a quiet machine):
- ``first_step_s``: from the contender's start (its libraries imported) to the end of its first optimizer step;
- ``prep_s``: the same up to the trainer's first step, less the model's loading (``first_step_vs_trl``);
- ``data_s``: the data work alone (``data_prep_vs_trl``, ``data_prep_cached_share``): unitune's ``training_rows``
  (load, convert, length plan, cache); TRL's ``load_dataset`` and its trainer's ``_prepare_dataset``. What ``prep_s``
  adds to it (building the trainer, wrapping the model in PEFT) is the same work for both;
- ``data_prep_peak_rss_mb``: unitune's peak RSS before its first step, less that of a process that imported the
  same libraries and loaded the model (``baseline_rss_mb``);
- unitune's second run reads the same file again (its prepared-data cache, when it has one, is warm).
TRL gets the pairs as implicit-prompt conversations (it takes no string prompt beside message replies) and the
conversations as they are, both through ``datasets.load_dataset("json")``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
STARTED = time.perf_counter()
MAX_LENGTH = 1024

WORDS = ("the a model data train answer question result value system user method reason step because which when "
         "then first second number list write code function return error check each every table row column file "
         "read make test small large fast slow memory token batch loss layer weight update learn rate example "
         "people city river history science music letter story plan note simple clear short long good better").split()


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def paragraph(rng: random.Random, low: int, high: int) -> str:
    total, parts = rng.randint(low, high), []
    while total > 0:
        n = min(total, rng.randint(8, 20))
        parts.append(sentence(rng, n))
        total -= n
    return " ".join(parts)


def pair(rng: random.Random) -> dict:
    """UltraFeedback's shape: prompt string; chosen and rejected are [user, assistant] with the prompt repeated."""
    prompt = paragraph(rng, 10, 60)
    user = {"role": "user", "content": prompt}
    chosen, rejected = paragraph(rng, 80, 200), paragraph(rng, 80, 200)
    return {"prompt": prompt, "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}]}


def conversation(rng: random.Random) -> dict:
    """Tulu's shape: 2-8 turns (1-4 exchanges), a third of them opening with a system turn."""
    messages = [{"role": "system", "content": sentence(rng, rng.randint(6, 20))}] if rng.random() < 1 / 3 else []
    for _ in range(rng.randint(1, 4)):
        messages += [{"role": "user", "content": paragraph(rng, 5, 60)},
                     {"role": "assistant", "content": paragraph(rng, 20, 200)}]
    return {"messages": messages}


def generate(kind: str, rows: int, path: Path, seed: int = 0) -> Path:
    rng = random.Random(f"{kind}-{seed}")
    make = pair if kind == "pairs" else conversation
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            handle.write(json.dumps(make(rng)) + "\n")
    return path


# ---------------------------------------------------------------- contenders (each in a child process)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_step_callback(marks: dict):
    from transformers import TrainerCallback

    class FirstStep(TrainerCallback):
        """Marks the first step's start and end, then stops the run."""

        def on_step_begin(self, args, state, control, **kwargs):
            marks.setdefault("step_begin", time.perf_counter())
            marks.setdefault("rss_before_step_mb", peak_rss_mb())

        def on_step_end(self, args, state, control, **kwargs):
            marks["step_end"] = time.perf_counter()
            control.should_training_stop, control.should_save = True, False  # the save is no data work

    return FirstStep()


def settings(extra: list[str]) -> dict:
    """``key=value`` words (values as JSON where they parse) as config fields: e.g. ``num_proc=1``."""
    found = {}
    for word in extra:
        key, value = word.split("=", 1)
        try:
            found[key] = json.loads(value)
        except json.JSONDecodeError:
            found[key] = value
    return found


def timed_calls(marks: dict, key: str, owner, name: str) -> None:
    """Wrap ``owner.name`` to add its time to ``marks[key]``."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            marks[key] = marks.get(key, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def unitune_child(method: str, path: str, out: str, extra: list[str]) -> dict:
    """`unitune train --max_steps 1` on the file, stopped after the first step (the command's own code path). Its data
    work: ``training_rows`` (load, convert, length plan, cache), and its trainers' cut to max_length."""
    from unitune.config import TrainConfig
    from unitune.train import run as train_run

    marks: dict = {}
    timed_calls(marks, "model_s", train_run, "load_model")
    timed_calls(marks, "data_s", train_run, "training_rows")
    from unitune.train.methods import dpo, sft  # what their trainers still do to the rows: cut them to max_length

    timed_calls(marks, "data_s", dpo.PretokenizedDPOTrainer, "_prepare_dataset")
    timed_calls(marks, "data_s", sft, "truncated")
    original = train_run.build_trainer

    def build(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(first_step_callback(marks))
        return trainer

    train_run.build_trainer = build
    cfg = TrainConfig(method=method, dataset=path, output_dir=str(Path(out) / "run"), max_steps=1, save_steps=10**6,
                      per_device_train_batch_size=1, gradient_accumulation_steps=1, max_length=MAX_LENGTH,
                      **settings(extra))
    train_run.run_training(cfg)
    return marks


def trl_child(method: str, path: str, out: str) -> dict:
    """Plain TRL: the file through datasets.load_dataset, TRL's trainer with its CPU-friendly settings. Its data work:
    the load and the trainer's ``_prepare_dataset`` (rendering, tokenising, truncating: all it does to rows)."""
    import torch
    import trl
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune.models.load import resolve_model

    marks: dict = {}
    source = resolve_model(None)
    start = time.perf_counter()
    ds = load_dataset("json", data_files=path, split="train")
    if method == "dpo":
        ds = ds.remove_columns("prompt")  # implicit-prompt conversations: TRL extracts the shared user turn
    marks["data_s"] = time.perf_counter() - start
    config, trainer_class = (trl.DPOConfig, trl.DPOTrainer) if method == "dpo" else (trl.SFTConfig, trl.SFTTrainer)
    timed_calls(marks, "data_s", trainer_class, "_prepare_dataset")
    args = config(output_dir=out, max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=1,
                  save_strategy="no", report_to="none", max_length=MAX_LENGTH, use_cpu=not torch.cuda.is_available(),
                  bf16=False, gradient_checkpointing=False, logging_steps=1)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source)
    marks["model_s"] = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(source)
    trainer = trainer_class(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                            peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", r=16,
                                                   lora_alpha=32, lora_dropout=0.05))
    trainer.add_callback(first_step_callback(marks))
    trainer.train()
    return marks


def check_child(method: str, path: str, extra: list[str]) -> dict:
    from unitune.config import CheckConfig
    from unitune.data.check import run_check

    start = time.perf_counter()
    report, _ = run_check(CheckConfig(dataset=path, method=method, max_length=MAX_LENGTH, **settings(extra)))
    seconds = time.perf_counter() - start
    rows = sum(s["rows"] for s in report["splits"])
    return {"check_s": seconds, "rows": rows, "check_rows_per_s": rows / seconds}


def run_child(args) -> dict:
    global STARTED
    import datasets, peft, torch, transformers, trl  # noqa: E401, F401  imports are not data work

    import unitune.train.run  # noqa: F401

    STARTED = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if args.child == "check":
            result = check_child(args.method, args.path, args.extra)
        else:
            marks = (unitune_child(args.method, args.path, out, args.extra) if args.child == "unitune"
                     else trl_child(args.method, args.path, out))
            result = {"first_step_s": marks["step_end"] - STARTED,
                      "prep_s": marks["step_begin"] - STARTED - marks.get("model_s", 0.0),
                      "data_s": marks["data_s"],
                      "model_s": marks.get("model_s", 0.0), "step_s": marks["step_end"] - marks["step_begin"],
                      "rss_before_step_mb": marks["rss_before_step_mb"]}
    return result | {"peak_rss_mb": peak_rss_mb()}


def in_child(kind: str, method: str, path: Path, env: dict, extra: list[str] = ()) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--method", method, "--path", str(path), "--", *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {method} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {kind} {method} on {path.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()), flush=True)
    return result


def baseline_rss_mb(env: dict) -> float:
    """Peak RSS of a process that imports unitune's training stack and loads the model: what data work adds to."""
    code = ("import resource, sys; sys.path.insert(0, %r); import unitune.train.run, trl; "
            "from transformers import AutoModelForCausalLM; from unitune.models.load import resolve_model; "
            "AutoModelForCausalLM.from_pretrained(resolve_model(None)); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)") % str(ROOT / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def measure(rows: int, methods: list[str], folder: Path, env: dict) -> dict:
    found: dict = {}
    for method in methods:
        path = generate("pairs" if method == "dpo" else "conversations", rows, folder / f"{method}-{rows}.jsonl")
        first = in_child("unitune", method, path, env)
        second = in_child("unitune", method, path, env)
        trl = in_child("trl", method, path, env)
        check = in_child("check", method, path, env)
        found[method] = {"rows": rows, "unitune": first, "unitune_second": second, "trl": trl, "check": check}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--scale_rows", type=int, default=0, help="also run at this many rows: data_prep_scaling")
    parser.add_argument("--methods", nargs="+", default=["dpo", "sft"], choices=["dpo", "sft"])
    parser.add_argument("--generate", nargs=3, metavar=("KIND", "ROWS", "PATH"), help="pairs|conversations N file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        kind, rows, path = args.generate
        print(generate(kind, int(rows), Path(path)))
        return
    if args.child:
        print(json.dumps(run_child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # a fresh datasets cache and run home: the first run finds nothing prepared, the second what the first left
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(folder / "datasets-cache"),
               "UNITUNE_HOME": os.environ.get("UNITUNE_HOME", str(Path.home() / ".cache" / "unitune"))}
        print(f"data scale bench on {cpu_name()}: {args.rows} rows, methods {', '.join(args.methods)}", flush=True)
        base_rss = baseline_rss_mb(env)
        runs = measure(args.rows, args.methods, folder, env)
        scaled = measure(args.scale_rows, args.methods, folder, env) if args.scale_rows else None
    summary = {"cpu": cpu_name(), "rows": args.rows, "baseline_rss_mb": base_rss, "runs": runs, "scaled_runs": scaled}
    for method, run in runs.items():
        summary[f"{method}_data_prep_vs_trl"] = run["trl"]["data_s"] / run["unitune"]["data_s"]
        summary[f"{method}_first_step_vs_trl"] = run["trl"]["prep_s"] / run["unitune"]["prep_s"]
        summary[f"{method}_data_prep_cached_share"] = run["unitune_second"]["data_s"] / run["unitune"]["data_s"]
        summary[f"{method}_check_rows_per_s"] = run["check"]["check_rows_per_s"]
        summary[f"{method}_data_prep_peak_rss_mb"] = run["unitune"]["rss_before_step_mb"] - base_rss
        if scaled:
            big = scaled[method]
            summary[f"{method}_data_prep_scaling"] = (big["unitune"]["data_s"] /
                                                      (args.scale_rows / args.rows * run["unitune"]["data_s"]))
            summary[f"{method}_data_prep_vs_trl_scaled"] = big["trl"]["data_s"] / big["unitune"]["data_s"]
            summary[f"{method}_data_prep_cached_share_scaled"] = (big["unitune_second"]["data_s"] /
                                                                  big["unitune"]["data_s"])
    lead = runs.get("dpo") or next(iter(runs.values()))  # the keys: DPO's (the pairs) when it ran
    name = "dpo" if "dpo" in runs else next(iter(runs))
    summary.update(data_prep_vs_trl=summary[f"{name}_data_prep_vs_trl"],
                   first_step_vs_trl=summary[f"{name}_first_step_vs_trl"],
                   data_prep_cached_share=summary[f"{name}_data_prep_cached_share"],
                   check_rows_per_s=lead["check"]["check_rows_per_s"],
                   data_prep_peak_rss_mb=summary[f"{name}_data_prep_peak_rss_mb"],
                   data_prep_scaling=summary.get(f"{name}_data_prep_scaling"))
    (ROOT / "bench" / "results_data_scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "scaled_runs")}))


if __name__ == "__main__":
    main()
