"""`make bench`: unitune against plain TRL on this machine, measured side by side in one run.

    .venv/bin/python bench/run.py            # prints a JSON line last; also writes bench/results.json
    .venv/bin/python bench/run.py --gpu      # GPU mode: QLoRA on a Qwen2-0.5B-sized model -> results_gpu.json
    .venv/bin/python bench/run.py --build_model DIR [--tiny]   # only build that model (scripts/gpu_check.sh)
    .venv/bin/python bench/run.py --long     # only SFT on long-tailed rows (padding-free against padded, and TRL)

GPU mode times unitune, plain TRL's defaults and TRL's defaults with Liger's kernels (SFT and DPO) one at a time,
then measures the peak GPU memory of ORPO, KTO and GRPO (unitune against TRL's defaults) in concurrent processes
(each process's own peak; their speeds are not compared), and times GRPO with TRL's vLLM colocate mode where an
installed vLLM fits TRL and torch. scripts/gpu_check.sh runs it after building the model once (--model).

Each training contender runs in its own process (clean memory, its own peak RSS) on the embedded
model and the bundled data, with the same rows, LoRA config, effective batch and max length. Steps
after the warm-up are timed one by one and the median is reported. Tokens are real (non-pad) tokens. The long-row
contenders train SFT on data_scale.py's generated conversations instead (their rate: tokens over time of the timed
steps).
"""

from __future__ import annotations

import argparse
import concurrent.futures
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

WARMUP, TIMED = 1, 5  # 2 + 6 before: the whole bench ran 27 min on a 2-core EPYC; the budget is 15
DPO_TIMED = 3  # DPO on CPU: 1 + 5 steps of both contenders took ~5 of a 16-minute bench on that EPYC
BATCH, ACCUM, MAX_LENGTH = 4, 4, 1024  # the seed's micro-batch and accumulation: an effective batch of 16
ROWS = (WARMUP + TIMED) * BATCH * ACCUM
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
# GRPO: 2 prompts x 4 completions of up to 32 tokens per optimizer step, at temperature 1, accuracy + format rewards
GRPO_COMPLETIONS, GRPO_GENERATIONS, GRPO_TOKENS = 8, 4, 32
MODEL = os.environ.get("UNITUNE_BENCH_MODEL")  # None: the embedded model; GPU mode sets a built folder
# Long rows (issue 28, section 4): SFT on data_scale's Tulu-shaped conversations (2-8 turns, ~50-1,500 tokens), where
# padding a batch to its longest row wastes most of it: 1 + LONG_TIMED steps of BATCH rows each (no accumulation),
# a max length no row reaches (nothing is cut for any contender), the same rows for every contender.
LONG_TIMED, LONG_MAX_LENGTH = 3, 2048
LONG_ROWS = (WARMUP + LONG_TIMED) * BATCH


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gemm_peak_gflops(dtype: str = "float32", size: int = 2048) -> float:
    """Matmul throughput of this machine now (median of repeats); fp32's is the MFU denominator, bf16's shows
    whether this CPU has native bf16 (avx512_bf16/AMX: faster than fp32) or emulates it (many times slower, so
    the repeats stop after 10 s)."""
    import torch

    a, b = (torch.randn(size, size, dtype=getattr(torch, dtype)) for _ in range(2))
    a @ b
    times: list[float] = []
    while len(times) < 10 and sum(times) < 10:
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


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


def steps_for(name: str) -> tuple[int, int, int, str]:
    """(warm-up steps, timed steps, gradient accumulation, why they differ from the bench's) of a contender, chosen to
    keep the bench under 15 minutes on a 2-core CPU:
    - TRL's defaults (bf16 autocast, checkpointing) on a CPU that emulates bf16 take minutes per step (210 s for 4 x 4
      on a 2-core EPYC): one timed step of one micro-batch (tokens/s hardly depends on the accumulation);
    - DPO's steps are the bench's longest on CPU (18-29 s there) and its ratio has no target: 3 timed steps."""
    import torch

    from unitune.models.precision import native_bf16

    if torch.cuda.is_available():
        return WARMUP, TIMED, ACCUM, ""
    if name.startswith("long_"):
        return WARMUP, LONG_TIMED, 1, "long rows: no accumulation"
    if name.endswith("_trl_default") and not native_bf16():
        return 0, 1, 1, "bf16 is emulated on this CPU"
    if name.startswith("dpo_"):
        return WARMUP, DPO_TIMED, ACCUM, "DPO's CPU steps are the longest, and its ratio has no target"
    return WARMUP, TIMED, ACCUM, ""


def summarize(timer, trainer, name: str) -> dict:
    import torch

    warmup = steps_for(name)[0]
    times, tokens = timer.times[warmup:], timer.tokens[warmup:]
    rates = [n / t for n, t in zip(tokens, times)]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    # long rows: a step's rate depends on which rows it drew, so the timed steps' tokens over their time
    rate = sum(tokens) / sum(times) if name.startswith("long_") else statistics.median(rates)
    return {"tokens_per_s": rate, "s_per_step": statistics.median(times),
            "dtype": os.environ.get("UNITUNE_BENCH_DTYPE", "trl"),
            "tokens_per_step": statistics.median(tokens), "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu,
            "losses": losses}


# ---------------------------------------------------------------- contenders (each in a child process)


def long_rows_file(folder: str) -> Path:
    """The long-row contenders' conversations (data_scale.py's generator, seeded), as a JSON-lines file."""
    import data_scale

    return data_scale.generate("conversations", LONG_ROWS, Path(folder) / "long-rows.jsonl", seed=28)


def unitune_trainer(method: str, out: str, extra: dict | None = None, data: Path | None = None):
    """unitune's own pipeline: its config defaults, data preparation, batch plan and trainer build; on the bundled
    demo data, or on the rows of ``data`` (the long-row contenders: a batch of BATCH rows, no accumulation)."""
    from unitune.config import TrainConfig
    from unitune.data.pipeline import prepare
    from unitune.methods import METHODS
    from unitune.models.hardware import choose_hardware
    from unitune.models.load import load_model, load_tokenizer, resolve_model
    from unitune.train.plan import fit_memory, length_plan
    from unitune.train.run import build_trainer, data_settings

    settings = {"per_device_train_batch_size": BATCH, "gradient_accumulation_steps": ACCUM,
                "max_train_samples": ROWS, **(extra or {})}
    if data is not None:
        settings |= {"gradient_accumulation_steps": 1, "max_train_samples": LONG_ROWS, "max_length": LONG_MAX_LENGTH}
    warmup, timed, _, _ = steps_for(f"{'long_' if data else ''}{method}_unitune")
    cfg = TrainConfig(method=method, output_dir=out, max_steps=warmup + timed, save_steps=10**6, model_name=MODEL,
                      **settings)
    spec, hw = METHODS[method], choose_hardware("auto")
    source = resolve_model(MODEL)
    tokenizer = load_tokenizer(source)
    prepared = prepare(str(data or ROOT / "src/unitune/assets/demo"), "train" if data else spec.split, spec,
                       data_settings(cfg, cfg.max_train_samples, "max_train_samples"), tokenizer)
    raw, fmt = prepared.rows, prepared.format
    cfg, hw = fit_memory(cfg, hw, length_plan(raw, fmt, tokenizer, cfg.max_length), source)
    print(f"unitune batch: {cfg.per_device_train_batch_size} x {cfg.gradient_accumulation_steps}; {hw.line()}",
          file=sys.stderr)
    os.environ["UNITUNE_BENCH_DTYPE"] = str(hw.dtype).removeprefix("torch.")
    return build_trainer(spec, cfg, hw, load_model(source, hw), tokenizer, prepared.converted, None, Path(out))


def trl_rows(split: str, n: int):
    from datasets import load_dataset

    ds = load_dataset(str(ROOT / "src/unitune/assets/demo"), split=split).select(range(n))
    return ds


def trl_model(source: str):
    """The model as a plain TRL user loads it: as saved on CPU; 4-bit NF4 (QLoRA) on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not torch.cuda.is_available():
        return AutoModelForCausalLM.from_pretrained(source)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, dtype=torch.bfloat16,
                                                device_map={"": 0})


def trl_long_trainer(out: str, bf16: bool, padding_free: bool = False):
    """Plain TRL SFT on the long rows, tuned for CPU (no checkpointing), fp32 or with bf16 autocast, padded to the
    batch's longest row or ``padding_free`` (the SDPA mask keeps the rows apart: transformers reads them from the
    position ids). The rows as conversations: the loss on every token (SmolLM2's template has no generation markers
    for TRL's assistant_only_loss), the same tokens as unitune's rows."""
    import torch
    import trl
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from unitune.methods import METHODS
    from unitune.models.load import resolve_model

    source = resolve_model(MODEL)
    rows = load_dataset("json", data_files=str(long_rows_file(out)), split="train")
    args = trl.SFTConfig(output_dir=out, max_steps=WARMUP + LONG_TIMED, per_device_train_batch_size=BATCH,
                         gradient_accumulation_steps=1, learning_rate=METHODS["sft"].learning_rate, logging_steps=1,
                         save_strategy="no", report_to="none", max_length=None if padding_free else LONG_MAX_LENGTH,
                         use_cpu=not torch.cuda.is_available(), seed=42, bf16=bf16, gradient_checkpointing=False,
                         padding_free=padding_free,  # then every token is real: all are counted (pad id: a real one)
                         include_num_input_tokens_seen="all" if padding_free else "non_padding")
    return trl.SFTTrainer(model=trl_model(source), args=args, train_dataset=rows,
                          processing_class=AutoTokenizer.from_pretrained(source),
                          peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA))


def trl_trainer(method: str, out: str, tuned: bool, bf16: bool = False, liger: bool = False):
    """Plain TRL SFT, DPO, ORPO or KTO trainer: TRL's defaults, or hand-tuned for CPU (bf16 off, checkpointing
    off), or with ``bf16`` TRL's bf16 autocast without checkpointing (run only on CPUs with native bf16), or with
    ``liger`` TRL's defaults plus ``use_liger_kernel=True`` (Liger's RMSNorm, RoPE and SwiGLU kernels: TRL 1.16 keeps
    its own fused LM head, so Liger's fused cross-entropy stays off)."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from unitune.methods import METHODS
    from unitune.models.load import resolve_model

    source = resolve_model(MODEL)
    pairs = [{"prompt": r["chosen"][:1], "chosen": r["chosen"][1:], "rejected": r["rejected"][1:]}
             for r in trl_rows("train_prefs", ROWS)] if method != "sft" else []
    if method == "sft":  # prompt/completion conversations: TRL then puts loss on the reply only, like unitune
        config, trainer = trl.SFTConfig, trl.SFTTrainer
        rows = [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in trl_rows("train_sft", ROWS)]
    elif method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        config, trainer, rows = ORPOConfig, ORPOTrainer, pairs
    elif method == "kto":  # each pair unpaired into a desirable and an undesirable row, as unitune does
        config, trainer = trl.KTOConfig, trl.KTOTrainer
        rows = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
                for p in pairs for side in ("chosen", "rejected")]
    else:
        config, trainer, rows = trl.DPOConfig, trl.DPOTrainer, pairs
    tuning = {"bf16": bf16, "gradient_checkpointing": False} if tuned else {}
    if liger:
        tuning["use_liger_kernel"] = True
    warmup, timed, accumulation, _ = steps_for(f"{method}_trl_{'tuned' if tuned else 'liger' if liger else 'default'}")
    counted = "no" if method == "orpo" else "non_padding"  # ORPO's batches carry no input_ids to count
    args = config(output_dir=out, max_steps=warmup + timed, per_device_train_batch_size=BATCH,
                  gradient_accumulation_steps=accumulation, learning_rate=METHODS[method].learning_rate,
                  logging_steps=1, save_strategy="no", report_to="none", max_length=MAX_LENGTH,
                  use_cpu=not torch.cuda.is_available(), seed=42, include_num_input_tokens_seen=counted,
                  **tuning)
    return trainer(model=trl_model(source), args=args, train_dataset=Dataset.from_list(rows),
                   processing_class=AutoTokenizer.from_pretrained(source),
                   peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA))


def run_child(name: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        if name.startswith("grpo_"):  # split by phase (bench/profile_grpo.py); s/step is the whole step's median
            import torch

            import profile_grpo

            trainer = {
                "grpo_unitune": lambda: unitune_grpo_trainer(out),
                "grpo_trl_tuned": lambda: trl_grpo_trainer(out),
                "grpo_trl_default": lambda: trl_grpo_trainer(out, tuned=False),
                "grpo_trl_vllm": lambda: trl_grpo_trainer(out, tuned=False, vllm=True),
            }[name]()
            with unitune_speedups(name):
                split = profile_grpo.profile(trainer)
            gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            return {"s_per_step": split["step"], "tokens_per_s": split["generated tokens per step"] / split["step"],
                    "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu, "split": split,
                    "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}
        trainer = {
            "sft_unitune": lambda: unitune_trainer("sft", out),
            "sft_unitune_merged": lambda: unitune_trainer("sft", out, {"max_batch_tokens": 2048}),
            "sft_trl_default": lambda: trl_trainer("sft", out, tuned=False),
            "sft_trl_tuned": lambda: trl_trainer("sft", out, tuned=True),
            "sft_trl_bf16": lambda: trl_trainer("sft", out, tuned=True, bf16=True),
            "sft_trl_liger": lambda: trl_trainer("sft", out, tuned=False, liger=True),
            "dpo_unitune": lambda: unitune_trainer("dpo", out),
            "dpo_unitune_merged": lambda: unitune_trainer("dpo", out, {"max_batch_tokens": 2048}),
            "dpo_trl_tuned": lambda: trl_trainer("dpo", out, tuned=True),
            "dpo_trl_default": lambda: trl_trainer("dpo", out, tuned=False),
            "dpo_trl_liger": lambda: trl_trainer("dpo", out, tuned=False, liger=True),
            "orpo_unitune": lambda: unitune_trainer("orpo", out),
            "orpo_trl_default": lambda: trl_trainer("orpo", out, tuned=False),
            "kto_unitune": lambda: unitune_trainer("kto", out),
            "kto_trl_default": lambda: trl_trainer("kto", out, tuned=False),
            "long_sft_unitune": lambda: unitune_trainer("sft", out, data=long_rows_file(out)),
            "long_sft_unitune_padded": lambda: unitune_trainer("sft", out, {"padding_free": "false"},
                                                               data=long_rows_file(out)),
            "long_sft_trl_tuned": lambda: trl_long_trainer(out, bf16=False),
            "long_sft_trl_bf16": lambda: trl_long_trainer(out, bf16=True),
            "long_sft_trl_bf16_padding_free": lambda: trl_long_trainer(out, bf16=True, padding_free=True),
        }[name]()
        timer = step_timer()
        trainer.add_callback(timer)
        with unitune_speedups(name):
            trainer.train()
        return summarize(timer, trainer, name)


def unitune_speedups(name: str):
    """What `unitune train` wraps its trainer.train() in (train/run.py): for unitune's contenders only."""
    import contextlib

    import torch

    from unitune.fast.lm_head import compact_lm_head

    if "_unitune" not in name:
        return contextlib.nullcontext()
    return compact_lm_head("cuda" if torch.cuda.is_available() else "cpu")


def in_child(name: str, timeout: float | None = None, speed: bool = True) -> dict:
    """Run one contender in its own process and print its line; ``speed=False`` (a contender that ran beside
    others) prints its peak memory only."""
    done = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    gpu = f", peak GPU memory {result['peak_gpu_mb']:.0f} MB" if result.get("peak_gpu_mb") else ""
    unit = "generated tokens/s" if name.startswith("grpo_") else "tokens/s"
    warmup, timed, accumulation, why = steps_for(name)
    plan = f" ({warmup} warm-up + {timed} timed steps of {BATCH} x {accumulation}: {why})" if why else ""
    if not speed:
        print(f"  {name}: peak GPU memory {result.get('peak_gpu_mb') or 0:.0f} MB (ran beside others: speed not "
              "compared)", flush=True)
        return result
    print(f"  {name}: {result['tokens_per_s']:.1f} {unit}, {result['s_per_step']:.2f} s/step, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB{gpu}{plan}", flush=True)
    return result


# ---------------------------------------------------------------- evaluator and GRPO (in this process)


def bench_eval() -> dict:
    """unitune's batched scorer against the plain loop: one reply at a time, `model(ids, labels=...).loss`."""
    import torch
    from transformers import AutoModelForCausalLM

    from unitune.config import EvalConfig
    from unitune.evaluate.heldout import EvalData
    from unitune.evaluate.scoring import mean_loss, pack, score_replies
    from unitune.models.load import load_tokenizer, resolve_model
    from unitune.templates import chat_format

    source = resolve_model(None)
    tokenizer, model = load_tokenizer(source), AutoModelForCausalLM.from_pretrained(source).eval()
    encode = chat_format(tokenizer).encode
    pairs = EvalData(str(ROOT / "src/unitune/assets/demo"), EvalConfig(max_samples=100)).pairs

    @torch.inference_mode()
    def plain_loss(prompt, reply) -> float:  # the same tokens carry the loss as in unitune's scorer
        enc = encode(prompt + reply, last_only=True)
        ids = torch.tensor([enc["input_ids"]])
        labels = torch.where(torch.tensor([enc["assistant_masks"]]) == 1, ids, -100)
        return model(input_ids=ids, labels=labels).loss.item()

    start = time.perf_counter()
    batched = score_replies(model, tokenizer, [(p, [c, r]) for p, c, r in pairs], batch_size=EvalConfig.batch_size)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    loop = [(plain_loss(p, c), plain_loss(p, r)) for p, c, r in pairs]
    loop_s = time.perf_counter() - start
    diff = max(abs(a - b) for got, ref in zip(batched, loop) for a, b in zip(mean_loss(got), ref))
    tokens = {"batched": sum(len(pack(tokenizer, p, [c, r])["ids"]) for p, c, r in pairs),
              "loop": sum(len(encode(p + x, last_only=True)["input_ids"])
                          for p, c, r in pairs for x in (c, r))}
    return {"batched_pairs_per_s": len(pairs) / batched_s, "loop_pairs_per_s": len(pairs) / loop_s,
            "max_abs_diff": diff, "tokens": tokens,
            "tokens_per_s": {"batched": tokens["batched"] / batched_s, "loop": tokens["loop"] / loop_s}}


def bench_eval_generation() -> dict:
    """Greedy replies to the demo's 100 `test_gen` prompts (32 new tokens, batch 50, as `make demo` evaluates):
    unitune's evaluator (it merges the adapter, then generate_replies shares the prompts' common head) against a
    plain `generate` on the PEFT model in the same length-sorted, left-padded batches. Same replies required."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from unitune.fast.generation import generate_replies
    from unitune.models.load import load_tokenizer, resolve_model
    from unitune.templates import chat_format

    source = resolve_model(None)
    tokenizer = load_tokenizer(source)
    torch.manual_seed(0)
    lora = LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(source), lora)
    with torch.no_grad():  # a trained-looking adapter: small non-zero B, so merging changes the weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model.eval()
    prompts = [[{"role": "user", "content": r["prompt"]}]
               for r in load_dataset(str(ROOT / "src/unitune/assets/demo"), split="test_gen").select(range(100))]
    chat, batch, new = chat_format(tokenizer), 50, 32
    texts = [chat.generation_prompt(p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))

    @torch.inference_mode()
    def plain() -> tuple[list[str], int]:
        replies, tokens = [""] * len(texts), 0
        tokenizer.padding_side = "left"
        for start in range(0, len(order), batch):
            idx = order[start: start + batch]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=new, do_sample=False, eos_token_id=chat.stop_ids(
                model.generation_config), pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None,
                top_k=None)[:, enc["input_ids"].shape[1]:]
            tokens += int((out != tokenizer.pad_token_id).sum())
            for i, seq in zip(idx, out):
                replies[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
        return replies, tokens

    start = time.perf_counter()
    reference, tokens = plain()
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    merged = model.merge_and_unload()  # what unitune eval does on CPU (train.trained.as_trained)
    ours = generate_replies(merged, tokenizer, prompts, new, batch, desc=None)
    ours_s = time.perf_counter() - start
    return {"eval_gen_vs_hf": plain_s / ours_s, "eval_gen_identical": ours == reference,
            "eval_gen_tokens_per_s": {"unitune": tokens / ours_s, "hf_generate_peft": tokens / plain_s},
            "eval_gen_seconds": {"unitune": ours_s, "hf_generate_peft": plain_s}, "eval_gen_tokens": tokens}


def unitune_grpo_trainer(out: str):
    return unitune_trainer("grpo", out, {
        "per_device_train_batch_size": GRPO_COMPLETIONS, "gradient_accumulation_steps": 1,
        "max_completion_length": GRPO_TOKENS, "num_generations": GRPO_GENERATIONS,
        "max_train_samples": (WARMUP + TIMED) * GRPO_COMPLETIONS // GRPO_GENERATIONS})


def trl_grpo_trainer(out: str, tuned: bool = True, vllm: bool = False):
    """Plain TRL GRPOTrainer, hand-tuned for CPU (bf16 off, checkpointing off) or at TRL's defaults (``tuned=False``),
    with unitune's GRPO settings and reward functions: the same prompts, LoRA, rewards, num_generations,
    max_completion_length and temperature. ``vllm``: TRL's defaults with vLLM sampling in the training process
    (colocate mode), on the bf16 base: TRL hands vLLM the merged weights, which a 4-bit base does not give. Not run
    yet: no machine this bench ran on had a vLLM that fits TRL 1.16 and torch (bench/RESULTS.md)."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from unitune.methods import METHODS
    from unitune.models.load import resolve_model
    from unitune.train.rewards import RewardLog, answer_format_of, build_rewards

    source = resolve_model(MODEL)
    prompts = (WARMUP + TIMED) * GRPO_COMPLETIONS // GRPO_GENERATIONS
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
            for r in trl_rows("train_gen", prompts)]
    rewards, _ = build_rewards(None, ["prompt", "answer"], RewardLog(), answer_format_of("auto", rows)[0])
    tuning = {"bf16": False, "gradient_checkpointing": False} if tuned else {}
    if vllm:
        tuning |= {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}
    args = trl.GRPOConfig(output_dir=out, max_steps=WARMUP + TIMED, per_device_train_batch_size=GRPO_COMPLETIONS,
                          gradient_accumulation_steps=1, learning_rate=METHODS["grpo"].learning_rate, logging_steps=1,
                          save_strategy="no", report_to="none", seed=42, beta=0.0, num_generations=GRPO_GENERATIONS,
                          max_completion_length=GRPO_TOKENS, temperature=1.0, use_cpu=not torch.cuda.is_available(),
                          **tuning)
    if vllm:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16, device_map={"": 0})
    else:
        model = trl_model(source)
    return trl.GRPOTrainer(model=model, reward_funcs=rewards, args=args,
                           train_dataset=Dataset.from_list(rows),
                           processing_class=AutoTokenizer.from_pretrained(source),
                           peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA))


def bench_long() -> dict:
    """SFT on long rows: unitune's default (padding-free on these rows) and padded, against plain TRL tuned for CPU:
    fp32, and where this CPU has native bf16, bf16 autocast padded and padding-free."""
    from unitune.models.precision import native_bf16

    trl = ("long_sft_trl_tuned", *(("long_sft_trl_bf16", "long_sft_trl_bf16_padding_free") if native_bf16() else ()))
    return {name: in_child(name) for name in ("long_sft_unitune", "long_sft_unitune_padded", *trl)}


def long_results(long: dict) -> dict:
    """The long-row keys: unitune over TRL's fastest padded contender (the comparison the demo rows make), over TRL's
    fastest with padding-free turned on too, and what padding-free gave unitune."""
    rate = {name: run["tokens_per_s"] for name, run in long.items()}
    padded = max((name for name in rate if "_trl_" in name and "padding_free" not in name), key=rate.get)
    best = max((name for name in rate if "_trl_" in name), key=rate.get)
    return {"long_sft_vs_trl_padded": rate["long_sft_unitune"] / rate[padded], "long_sft_trl_padded": padded,
            "long_sft_vs_trl_best": rate["long_sft_unitune"] / rate[best], "long_sft_trl_best": best,
            "long_sft_padding_free_gain": rate["long_sft_unitune"] / rate["long_sft_unitune_padded"],
            "long_tokens_per_s": rate}


def trl_best(runs: dict) -> tuple[str, str]:
    """The faster of TRL hand-tuned fp32 and TRL bf16 without checkpointing, where bf16's per-step losses stay
    within 2% of fp32's (a bf16 that learns differently does not count)."""
    if "sft_trl_bf16" not in runs:
        return "sft_trl_tuned", "TRL fp32; TRL bf16 not run (no native bf16 on this CPU)"
    fp32, bf16 = runs["sft_trl_tuned"], runs["sft_trl_bf16"]
    drift = max(abs(b - f) / f for f, b in zip(fp32["losses"], bf16["losses"]))
    if drift > 0.02:
        return "sft_trl_tuned", f"TRL fp32; TRL bf16's losses drifted {drift:.1%} from fp32's"
    if bf16["tokens_per_s"] > fp32["tokens_per_s"]:
        return "sft_trl_bf16", f"TRL bf16 (losses within {drift:.1%} of fp32's)"
    return "sft_trl_tuned", "TRL fp32 (bf16 was slower)"


def grpo_ratio(grpo: dict) -> float:
    """TRL's seconds per GRPO step over unitune's."""
    return grpo["grpo_trl_tuned"]["s_per_step"] / grpo["grpo_unitune"]["s_per_step"]


def grpo_split(split: dict) -> dict:
    """Seconds per phase of a GRPO step (bench/profile_grpo.py), rounded, without the logged rewards."""
    return {k: round(max(v, 0.0), 3) for k, v in split.items() if isinstance(v, float)}


def flops_per_token(tokens_per_step: float) -> float:
    """4N for a LoRA step (forward 2N + activation gradients 2N) plus attention scores, per token."""
    from transformers import AutoConfig

    from unitune.models.load import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(None))
    n = cfg.num_hidden_layers * (4 * cfg.hidden_size**2 * (1 + cfg.num_key_value_heads / cfg.num_attention_heads) / 2
                                 + 3 * cfg.hidden_size * cfg.intermediate_size) + cfg.vocab_size * cfg.hidden_size
    context = tokens_per_step / (BATCH * ACCUM) / 2  # mean causal context of a ~uniform row
    attention = 6 * cfg.num_hidden_layers * cfg.hidden_size * context * 2
    return 4 * n + attention


def build_gpu_model(tokenizer_dir: str, folder: Path, tiny: bool = False) -> None:
    """A Qwen2-0.5B-sized model (random weights, bf16) built from a config, saved with the given tokenizer; ``tiny``:
    a 2-layer Qwen2 of the same shape family, for scripts/gpu_check.sh's CPU smoke test."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    size = ({"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2} if tiny else
            {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2})
    config = Qwen2Config(**size, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    print(f"  built a {'tiny Qwen2 (smoke test)' if tiny else 'Qwen2-0.5B-sized'} model: "
          f"{model.num_parameters() / 1e6:.0f}M parameters", flush=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


TRL_VLLM = ("0.22.0", "0.31.0")  # the vLLM versions TRL 1.16.0 supports (trl/import_utils.py, its `vllm` extra)
CHILD_TIMEOUT = float(os.environ.get("UNITUNE_BENCH_CHILD_TIMEOUT", 180))  # GPU mode: one contender's process, s


def liger_status() -> tuple[bool, str]:
    """(usable, why): whether TRL's ``use_liger_kernel`` can run here."""
    from importlib.metadata import PackageNotFoundError, version

    import trl
    from trl.import_utils import LIGER_KERNEL_MIN_VERSION, is_liger_kernel_available

    try:
        found = version("liger-kernel")
    except PackageNotFoundError:
        return False, f"liger-kernel is not installed (TRL {trl.__version__} takes >= {LIGER_KERNEL_MIN_VERSION})"
    if not is_liger_kernel_available():
        return False, f"liger-kernel {found} is older than TRL {trl.__version__}'s minimum {LIGER_KERNEL_MIN_VERSION}"
    return True, f"liger-kernel {found}"


def vllm_status() -> tuple[bool, str]:
    """(usable, why): whether TRL's vLLM colocate mode can run here: vLLM installed, within TRL's supported range and
    built for this torch (each vLLM release pins one torch)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    import torch
    from packaging.version import Version

    low, high = TRL_VLLM
    try:
        found = version("vllm")
    except PackageNotFoundError:
        return False, (f"vLLM is not installed (TRL 1.16 takes vLLM {low}-{high}; of those, 0.27.0-0.30.0 pin torch "
                       "2.13.0, 0.22.0-0.26.0 pin torch 2.11.0, and 0.31.0 also needs transformers < 5.18)")
    if not Version(low) <= Version(Version(found).base_version) <= Version(high):
        return False, f"vLLM {found} is outside TRL 1.16's supported {low}-{high}"
    pins = [r.split("==", 1)[1].split(";")[0].strip() for r in requires("vllm") or []
            if r.replace(" ", "").startswith("torch==")]
    have = torch.__version__.split("+")[0]
    if pins and pins[0] != have:
        return False, f"vLLM {found} is built for torch {pins[0]}, this is torch {have}"
    return True, f"vLLM {found}"


def gpu_main(tokenizer_dir: str, model: str | None = None) -> None:
    """GPU mode: QLoRA (4-bit NF4 base, bf16) on a Qwen2-0.5B-sized model (built here, or ``model``, a folder that
    --build_model made), unitune against plain TRL's defaults."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench --gpu needs a CUDA device; run it on a GPU machine, or drop --gpu for the CPU bench")
    with tempfile.TemporaryDirectory(prefix="unitune-bench-qwen2-0.5b-") as folder:
        if model is None:
            build_gpu_model(tokenizer_dir, Path(folder))
        os.environ["UNITUNE_BENCH_MODEL"] = model or folder
        gpu_contenders()


def gpu_contenders() -> None:
    """Timed contenders one at a time (SFT, DPO, with Liger where it runs), the peak memory of ORPO, KTO and GRPO in
    concurrent processes, GRPO with vLLM where it fits; results_gpu.json is rewritten after each phase, so a run cut
    short keeps what it measured. A contender that fails is reported and the rest go on."""
    import torch

    liger, liger_why = liger_status()
    vllm, vllm_why = vllm_status()
    print(f"bench --gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}, {WARMUP} warm-up + {TIMED} "
          f"timed steps of {BATCH} x {ACCUM}; {liger_why}; {vllm_why}", flush=True)
    runs: dict = {}  # timed alone
    beside: dict = {}  # run concurrently: peak memory only
    failed: dict = {}

    def child(name: str, speed: bool = True) -> dict | None:
        try:
            return in_child(name, timeout=CHILD_TIMEOUT, speed=speed)
        except subprocess.TimeoutExpired:
            failed[name] = f"timed out after {CHILD_TIMEOUT:.0f} s"
        except RuntimeError as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            failed[name] = lines[-1][:300] if lines else "failed"
        print(f"  {name}: FAILED: {failed[name]}", flush=True)
        return None

    def timed(names: list[str]) -> None:
        for name in names:
            if (result := child(name)) is not None:
                runs[name] = result
        save(runs, beside, failed, liger_why, vllm_why)

    timed(["sft_unitune", "sft_trl_default", *(["sft_trl_liger"] if liger else [])])
    if not liger:
        print(f"  sft_trl_liger, dpo_trl_liger: skipped: {liger_why}", flush=True)
    names = [f"{m}_{who}" for m in ("orpo", "kto", "grpo") for who in ("unitune", "trl_default")]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        done = dict(zip(names, pool.map(lambda name: child(name, speed=False), names)))
    beside.update({k: v for k, v in done.items() if v is not None})
    timed(["dpo_unitune", "dpo_trl_default", *(["dpo_trl_liger"] if liger else [])])
    if vllm:
        timed(["grpo_trl_default", "grpo_trl_vllm"])
    else:
        print(f"  grpo_trl_vllm (TRL's vLLM colocate mode): skipped: {vllm_why}", flush=True)
    results = save(runs, beside, failed, liger_why, vllm_why)
    if results:
        for line in gpu_lines(results):
            print(f"  {line}", flush=True)
        print(json.dumps(results, default=float))


def save(runs: dict, beside: dict, failed: dict, liger: str, vllm: str) -> dict | None:
    """Compose results_gpu.json from what has run so far, write it (once anything ran) and return it."""
    import torch

    if not runs and not beside:
        return None
    every = {**beside, **runs}

    def ratio(a: str, b: str, key: str = "tokens_per_s", among: dict = runs) -> float | None:
        if a in among and b in among and among[b].get(key):
            return among[a][key] / among[b][key]
        return None

    memory = {m: ratio(f"{m}_unitune", f"{m}_trl_default", "peak_gpu_mb", every)
              for m in ("sft", "dpo", "orpo", "kto", "grpo")}
    speed, mem = ratio("sft_unitune", "sft_trl_default"), memory["sft"]
    results = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "liger": liger, "vllm": vllm,
        "sft_vs_trl_default": speed,
        "sft_peak_gpu_vs_trl_default": mem,
        "sft_target_met": None if speed is None or mem is None else speed >= 2 and mem <= 1,
        "dpo_vs_trl_default": ratio("dpo_unitune", "dpo_trl_default"),
        "sft_trl_liger_vs_trl_default": ratio("sft_trl_liger", "sft_trl_default"),
        "dpo_trl_liger_vs_trl_default": ratio("dpo_trl_liger", "dpo_trl_default"),
        "sft_vs_trl_liger": ratio("sft_unitune", "sft_trl_liger"),
        "dpo_vs_trl_liger": ratio("dpo_unitune", "dpo_trl_liger"),
        "grpo_trl_vllm_vs_trl_default": ratio("grpo_trl_vllm", "grpo_trl_default"),  # generated tokens/s
        "peak_gpu_vs_trl_default": memory,
        "tokens_per_s": {k: v["tokens_per_s"] for k, v in runs.items()},
        "s_per_step": {k: v["s_per_step"] for k, v in runs.items()},
        "peak_gpu_mb": {k: v.get("peak_gpu_mb") for k, v in every.items()},
        "ran_beside_others": sorted(beside),  # peak memory only: their speeds shared the GPU
        "first_losses": {k: v.get("losses", [])[:4] for k, v in every.items()},
        "failed": failed,
    }
    (ROOT / "bench" / "results_gpu.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return results


def gpu_lines(results: dict) -> list[str]:
    """The GPU bench in three lines: the SFT target, Liger's contenders, peak memory per method."""
    mb = results["peak_gpu_mb"]

    def x(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    def mb_of(name: str) -> str:
        return f"{mb[name]:.0f}" if mb.get(name) else "-"

    met = {None: "not measured", True: "met", False: "not met"}[results["sft_target_met"]]
    sft = (f"{x(results['sft_vs_trl_default'])} the tokens/s at {x(results['sft_peak_gpu_vs_trl_default'])} the "
           f"peak memory ({mb.get('sft_unitune') or 0:.0f} vs {mb.get('sft_trl_default') or 0:.0f} MB)")
    liger = (f"TRL + Liger over TRL's defaults: SFT {x(results['sft_trl_liger_vs_trl_default'])}, DPO "
             f"{x(results['dpo_trl_liger_vs_trl_default'])}; unitune over TRL + Liger: SFT "
             f"{x(results['sft_vs_trl_liger'])}, DPO {x(results['dpo_vs_trl_liger'])}"
             if results["sft_trl_liger_vs_trl_default"] or results["dpo_trl_liger_vs_trl_default"]
             else f"Liger: not run ({results['liger']})")
    memory = ", ".join(f"{m} {mb_of(f'{m}_unitune')}/{mb_of(f'{m}_trl_default')} ({x(r)})"
                       for m, r in results["peak_gpu_vs_trl_default"].items())
    return [f"target SFT >= 2x TRL's defaults in tokens/s at <= TRL's peak GPU memory: {sft}: {met}",
            liger, f"peak GPU memory, unitune/TRL's defaults, MB: {memory}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--gpu", action="store_true", help="GPU mode: QLoRA on a Qwen2-0.5B-sized model")
    parser.add_argument("--tokenizer", help="GPU mode: tokenizer folder (default: the embedded model's)")
    parser.add_argument("--model", help="GPU mode: a model folder made by --build_model, instead of building one")
    parser.add_argument("--build_model", metavar="DIR", help="only build the GPU mode's model into DIR")
    parser.add_argument("--tiny", action="store_true", help="--build_model: a tiny Qwen2 (a CPU smoke test)")
    parser.add_argument("--grpo", action="store_true", help="only the GRPO contenders (prints, writes nothing)")
    parser.add_argument("--eval_gen", action="store_true", help="only the evaluator's generation (prints)")
    parser.add_argument("--long", action="store_true", help="only SFT on long rows (prints, writes nothing)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child)))
        return
    if args.eval_gen:
        print(json.dumps(bench_eval_generation()))
        return
    if args.long:
        print(json.dumps(long_results(bench_long())))
        return
    if args.grpo:
        grpo = {name: in_child(name) for name in ("grpo_unitune", "grpo_trl_tuned")}
        print(json.dumps({"grpo_vs_trl_tuned": grpo_ratio(grpo),
                          "grpo_split": {k: grpo_split(v["split"]) for k, v in grpo.items()}}))
        return
    if args.gpu or args.build_model:
        from unitune.models.load import resolve_model

        tokenizer = args.tokenizer or resolve_model(None)
        if args.build_model:
            build_gpu_model(tokenizer, Path(args.build_model), tiny=args.tiny)
        else:
            gpu_main(tokenizer, args.model)
        return
    print(f"bench: {WARMUP} warm-up + {TIMED} timed steps, batch {BATCH} x accumulation {ACCUM}, embedded "
          "SmolLM2-135M, bundled data",
          flush=True)
    from unitune.env import cpu_line

    cpu = cpu_line()
    peak, peak_bf16 = gemm_peak_gflops(), gemm_peak_gflops("bfloat16", 1024)
    print(f"  {cpu}\n  GEMM peak: fp32 {peak:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s", flush=True)
    from unitune.models.precision import native_bf16

    runs = {name: in_child(name) for name in ("sft_unitune", "sft_unitune_merged", "sft_trl_tuned",
                                              *(("sft_trl_bf16",) if native_bf16() else ()),  # else emulated: slow
                                              "sft_trl_default", "dpo_unitune", "dpo_trl_tuned")}
    ev, gen = bench_eval(), bench_eval_generation()
    grpo = {name: in_child(name) for name in ("grpo_unitune", "grpo_trl_tuned")}
    long = bench_long()
    sft = runs["sft_unitune"]
    mfu = sft["tokens_per_s"] * flops_per_token(sft["tokens_per_step"]) / (peak * 1e9)
    same = [abs(a - b) / b for a, b in zip(sft["losses"], runs["sft_trl_tuned"]["losses"])]
    best, why = trl_best(runs)
    from unitune.fast.packed_linear import packing_pays

    packing, packing_why = packing_pays()
    decode_packing = f"{'on' if packing else 'off'}: {packing_why}"
    results = {
        "sft_vs_trl_default": sft["tokens_per_s"] / runs["sft_trl_default"]["tokens_per_s"],
        "sft_vs_trl_tuned": sft["tokens_per_s"] / runs["sft_trl_tuned"]["tokens_per_s"],
        "sft_vs_trl_best": sft["tokens_per_s"] / runs[best]["tokens_per_s"],
        "sft_trl_best": f"{best}: {why}",
        "sft_dtype": sft["dtype"],
        "sft_mfu": mfu,
        "sft_merge_gain": runs["sft_unitune_merged"]["tokens_per_s"] / sft["tokens_per_s"],  # --max_batch_tokens
        "dpo_vs_trl_tuned": runs["dpo_unitune"]["tokens_per_s"] / runs["dpo_trl_tuned"]["tokens_per_s"],
        "dpo_peak_rss_vs_sft": runs["dpo_unitune"]["peak_rss_mb"] / sft["peak_rss_mb"],
        "eval_batched_vs_loop": ev["batched_pairs_per_s"] / ev["loop_pairs_per_s"],
        "eval_max_abs_diff": ev["max_abs_diff"],
        "eval_tokens": ev["tokens"], "eval_tokens_per_s": ev["tokens_per_s"],
        **gen,
        "grpo_vs_trl_tuned": grpo_ratio(grpo),
        "grpo_gen_tokens_per_s": grpo["grpo_unitune"]["tokens_per_s"],
        "grpo_trl_gen_tokens_per_s": grpo["grpo_trl_tuned"]["tokens_per_s"],
        "grpo_s_per_step": grpo["grpo_unitune"]["s_per_step"],
        "grpo_split": {k: grpo_split(v["split"]) for k, v in grpo.items()},
        **long_results(long),
        "sft_loss_max_rel_diff_vs_trl_tuned": max(same),
        "gemm_peak_gflops": peak,
        "gemm_peak_gflops_bf16": peak_bf16,
        "cpu": cpu,
        "decode_packing": decode_packing,  # packed_linear's per-machine probe: GRPO sampling, evaluator generation
        "tokens_per_s": {k: v["tokens_per_s"] for k, v in {**runs, **long}.items()},
        "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in {**runs, **long}.items()},
    }
    results = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in results.items()}
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
