"""`make bench`: unitune against plain TRL on this machine, measured side by side in one run.

    .venv/bin/python bench/run.py            # prints a JSON line last; also writes bench/results.json

Each training contender runs in its own process (clean memory, its own peak RSS) on the embedded
model and the bundled data, with the same rows, LoRA config, effective batch and max length. Steps
after the warm-up are timed one by one and the median is reported. Tokens are real (non-pad) tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WARMUP, TIMED = 2, 8
BATCH, MAX_LENGTH = 4, 1024
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gemm_peak_gflops() -> float:
    """fp32 matmul throughput of this machine now (median of repeats), the MFU denominator."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time and non-pad tokens of every optimizer step."""

        def __init__(self):
            self.times, self.tokens, self._t, self._seen = [], [], 0.0, 0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t, self._seen = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t)
            self.tokens.append(state.num_input_tokens_seen - self._seen)

    return StepTimer()


def summarize(timer, trainer) -> dict:
    times, tokens = timer.times[WARMUP:], timer.tokens[WARMUP:]
    rates = [n / t for n, t in zip(tokens, times)]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"tokens_per_s": statistics.median(rates), "s_per_step": statistics.median(times),
            "tokens_per_step": statistics.median(tokens), "peak_rss_mb": peak_rss_mb(), "losses": losses}


# ---------------------------------------------------------------- contenders (each in a child process)


def unitune_trainer(method: str, out: str, extra: dict | None = None):
    """unitune's own pipeline: its config defaults, data preparation and trainer build."""
    from unitune.config import TrainConfig
    from unitune.methods import METHODS
    from unitune.models import choose_hardware, load_model, load_tokenizer, resolve_model
    from unitune.train import prepare_split, training_args

    cfg = TrainConfig(method=method, output_dir=out, max_steps=WARMUP + TIMED, per_device_train_batch_size=BATCH,
                      gradient_accumulation_steps=1, max_train_samples=(WARMUP + TIMED) * BATCH,
                      save_steps=10**6, learning_rate=None, **(extra or {}))
    spec, hw = METHODS[method], choose_hardware("auto")
    source = resolve_model(None)
    tokenizer = load_tokenizer(source)
    ds = prepare_split(str(ROOT / "src/unitune/assets/demo"), spec.split, cfg.max_train_samples, "x", spec, cfg,
                       tokenizer)
    return spec.module.build(cfg, load_model(source, hw), tokenizer, ds, None, training_args(cfg, hw, Path(out), False))


def trl_rows(split: str, n: int):
    from datasets import load_dataset

    ds = load_dataset(str(ROOT / "src/unitune/assets/demo"), split=split).select(range(n))
    return ds


def trl_sft_trainer(out: str, tuned: bool):
    """Plain TRL SFTTrainer: TRL's defaults, or hand-tuned for CPU (bf16 off, checkpointing off)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from unitune.models import resolve_model

    source = resolve_model(None)
    rows = trl_rows("train_sft", (WARMUP + TIMED) * BATCH)
    # prompt/completion conversations: TRL then puts loss on the reply only, like unitune
    data = Dataset.from_list([{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows])
    tuning = {"bf16": False, "gradient_checkpointing": False} if tuned else {}
    args = SFTConfig(output_dir=out, max_steps=WARMUP + TIMED, per_device_train_batch_size=BATCH,
                     gradient_accumulation_steps=1, learning_rate=2e-4, logging_steps=1, save_strategy="no",
                     report_to="none", max_length=MAX_LENGTH, use_cpu=True, seed=42,
                     include_num_input_tokens_seen="non_padding", **tuning)
    return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(source), args=args, train_dataset=data,
                      processing_class=AutoTokenizer.from_pretrained(source),
                      peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA))


def trl_dpo_trainer(out: str):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from unitune.models import resolve_model

    source = resolve_model(None)
    rows = trl_rows("train_prefs", (WARMUP + TIMED) * BATCH)
    data = Dataset.from_list([{"prompt": r["chosen"][:1], "chosen": r["chosen"][1:], "rejected": r["rejected"][1:]}
                              for r in rows])
    args = DPOConfig(output_dir=out, max_steps=WARMUP + TIMED, per_device_train_batch_size=BATCH,
                     gradient_accumulation_steps=1, learning_rate=5e-5, logging_steps=1, save_strategy="no",
                     report_to="none", max_length=MAX_LENGTH, use_cpu=True, seed=42, bf16=False,
                     gradient_checkpointing=False, include_num_input_tokens_seen="non_padding")
    return DPOTrainer(model=AutoModelForCausalLM.from_pretrained(source), args=args, train_dataset=data,
                      processing_class=AutoTokenizer.from_pretrained(source),
                      peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA))


def run_child(name: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer = {
            "sft_unitune": lambda: unitune_trainer("sft", out),
            "sft_trl_default": lambda: trl_sft_trainer(out, tuned=False),
            "sft_trl_tuned": lambda: trl_sft_trainer(out, tuned=True),
            "dpo_unitune": lambda: unitune_trainer("dpo", out),
            "dpo_trl_tuned": lambda: trl_dpo_trainer(out),
        }[name]()
        timer = step_timer()
        trainer.add_callback(timer)
        trainer.train()
        return summarize(timer, trainer)


def in_child(name: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {name}: {result['tokens_per_s']:.1f} tokens/s, {result['s_per_step']:.2f} s/step, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


# ---------------------------------------------------------------- evaluator and GRPO (in this process)


def bench_eval() -> dict:
    from unitune.config import EvalConfig
    from unitune.evaluate import EvalData
    from unitune.models import load_tokenizer, resolve_model
    from unitune.scoring import mean_loss, reply_nll, score_replies
    from transformers import AutoModelForCausalLM

    source = resolve_model(None)
    tokenizer, model = load_tokenizer(source), AutoModelForCausalLM.from_pretrained(source).eval()
    pairs = EvalData(str(ROOT / "src/unitune/assets/demo"), EvalConfig(max_samples=100)).pairs
    start = time.perf_counter()
    batched = score_replies(model, tokenizer, [(p, [c, r]) for p, c, r in pairs], batch_size=32)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    loop = [(reply_nll(model, tokenizer, [(p, c)], 1, "loop")[0], reply_nll(model, tokenizer, [(p, r)], 1, "loop")[0])
            for p, c, r in pairs]
    loop_s = time.perf_counter() - start
    diff = max(abs(a - b) for got, ref in zip(batched, loop)
               for a, b in zip(mean_loss(got), mean_loss(list(ref))))
    return {"batched_pairs_per_s": len(pairs) / batched_s, "loop_pairs_per_s": len(pairs) / loop_s,
            "max_abs_diff": diff}


def bench_grpo() -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer = unitune_trainer("grpo", out, {"max_completion_length": 32, "num_generations": 4})
        trainer.train()
        logs = [e for e in trainer.state.log_history if "step_time" in e]
        # TRL logs completion lengths: tokens generated per step = completions x mean length. Divided by the
        # whole step time (generation + the policy update), so it is a lower bound on generation speed.
        gen_tokens = [BATCH * e["completions/mean_length"] for e in logs[WARMUP:]]
        steps = [e["step_time"] for e in logs[WARMUP:]]
        return {"s_per_step": statistics.median(steps), "gen_tokens_per_step": statistics.median(gen_tokens),
                "gen_tokens_per_s": statistics.median(gen_tokens) / statistics.median(steps)}


def flops_per_token(tokens_per_step: float) -> float:
    """4N for a LoRA step (forward 2N + activation gradients 2N) plus attention scores, per token."""
    from transformers import AutoConfig

    from unitune.models import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(None))
    n = cfg.num_hidden_layers * (4 * cfg.hidden_size**2 * (1 + cfg.num_key_value_heads / cfg.num_attention_heads) / 2
                                 + 3 * cfg.hidden_size * cfg.intermediate_size) + cfg.vocab_size * cfg.hidden_size
    context = tokens_per_step / BATCH / 2  # mean causal context of a ~uniform row
    attention = 6 * cfg.num_hidden_layers * cfg.hidden_size * context * 2
    return 4 * n + attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child)))
        return
    print(f"bench: {WARMUP} warm-up + {TIMED} timed steps, batch {BATCH}, embedded SmolLM2-135M, bundled data",
          flush=True)
    peak = gemm_peak_gflops()
    print(f"  fp32 GEMM peak: {peak:.0f} GFLOP/s", flush=True)
    runs = {name: in_child(name) for name in ("sft_unitune", "sft_trl_tuned", "sft_trl_default",
                                              "dpo_unitune", "dpo_trl_tuned")}
    ev, grpo = bench_eval(), bench_grpo()
    sft = runs["sft_unitune"]
    mfu = sft["tokens_per_s"] * flops_per_token(sft["tokens_per_step"]) / (peak * 1e9)
    same = [abs(a - b) / b for a, b in zip(sft["losses"], runs["sft_trl_tuned"]["losses"])]
    results = {
        "sft_vs_trl_default": sft["tokens_per_s"] / runs["sft_trl_default"]["tokens_per_s"],
        "sft_vs_trl_tuned": sft["tokens_per_s"] / runs["sft_trl_tuned"]["tokens_per_s"],
        "sft_mfu": mfu,
        "dpo_vs_trl_tuned": runs["dpo_unitune"]["tokens_per_s"] / runs["dpo_trl_tuned"]["tokens_per_s"],
        "dpo_peak_rss_vs_sft": runs["dpo_unitune"]["peak_rss_mb"] / sft["peak_rss_mb"],
        "eval_batched_vs_loop": ev["batched_pairs_per_s"] / ev["loop_pairs_per_s"],
        "eval_max_abs_diff": ev["max_abs_diff"],
        "grpo_gen_tokens_per_s": grpo["gen_tokens_per_s"],
        "grpo_s_per_step": grpo["s_per_step"],
        "sft_loss_max_rel_diff_vs_trl_tuned": max(same),
        "gemm_peak_gflops": peak,
        "tokens_per_s": {k: v["tokens_per_s"] for k, v in runs.items()},
        "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in runs.items()},
    }
    results = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
