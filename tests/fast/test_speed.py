"""The speed-ups (fast/, train/plan.fit_memory) change nothing but speed: same losses, same updates, same dropout."""

import pytest
import torch
import trl.trainer.utils as trl_utils
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from unitune.cli import main
from unitune.config import TrainConfig
from unitune.errors import UserError
from unitune.fast.dropout import FastDropout, fast_lora_dropout, keep_mask
from unitune.fast.lm_head import compact_lm_head
from unitune.models.hardware import Hardware, choose_hardware
from unitune.train.plan import fit_memory, merge_batches
from unitune.train.records import RUN_FILE

from conftest import read_json


def test_keep_mask_drops_the_requested_share():
    torch.manual_seed(0)
    for p in (0.05, 0.1, 0.5):
        keep = keep_mask(torch.Size([1000, 1000]), p, torch.device("cpu"))
        assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
        assert abs((~keep).float().mean().item() - p) < 0.002
    assert keep_mask(torch.Size([7, 3]), 0.0, torch.device("cpu")).all()  # odd sizes, nothing dropped


def test_fast_dropout_matches_dropout_semantics():
    torch.manual_seed(0)
    drop = FastDropout(0.1)
    x = torch.randn(300, 200, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.9)  # kept values scaled by 1/(1-p)
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.9)  # gradient flows through kept elements only
    assert torch.equal(drop.eval()(x), x)  # identity in eval mode


def test_fast_lora_dropout_swaps_every_lora_dropout(tiny_model_dir):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    assert fast_lora_dropout(model, 0.1) == 14  # 2 layers x 7 linear layers
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    model.train()
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()  # PEFT's forward runs with it


def test_fast_lora_dropout_says_when_peft_moved_them(tiny_model_dir):
    """A dropout asked for and none found to swap: PEFT changed, and the speed-up would silently vanish."""
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(UserError, match="found no LoRA dropout layers"):
        fast_lora_dropout(plain, 0.05)
    assert fast_lora_dropout(plain, 0.0) == 0  # no dropout: PEFT uses Identity, nothing to swap


def test_compact_lm_head_gives_the_same_loss_and_gradients(tiny_model_dir, monkeypatch):
    """TRL's fused head scores only labelled positions on CPU once patched; the loss and gradients must not move."""
    original = trl_utils._use_triton
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_fused_lm_head(model)
    ids = torch.randint(0, 1000, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt without loss
    labels[2, 9:] = -100  # padding

    def loss_and_grad():
        model.zero_grad()
        loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
        return loss.detach(), model.model.norm.weight.grad.clone()

    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL's own choice on CPU: every position
    full_loss, full_grad = loss_and_grad()
    with compact_lm_head():
        assert trl_utils._use_triton(torch.device("cpu"))
        compact_loss, compact_grad = loss_and_grad()
    assert trl_utils._use_triton is original  # restored once our trainer is done
    reference = model(input_ids=ids, labels=labels).loss  # transformers' own loss, full logits
    assert torch.allclose(compact_loss, full_loss, atol=1e-6) and torch.allclose(compact_loss, reference, atol=1e-5)
    assert torch.allclose(compact_grad, full_grad, atol=1e-6)


def test_compact_lm_head_refuses_another_trl(monkeypatch):
    import trl

    original = trl_utils._use_triton
    monkeypatch.setattr(trl, "__version__", "9.9.9")
    with pytest.raises(UserError, match="measured on trl 1.16.0, found trl 9.9.9"):
        with compact_lm_head():
            pass
    assert trl_utils._use_triton is original


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"method": "sft", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, **kw})


def lengths(longest: int) -> dict:
    return {"row_tokens": {"min": 10, "median": 50, "p95": longest, "max": longest}}


def test_merge_batches_keeps_the_effective_batch():
    cpu = choose_hardware("auto")
    small = 2_000_000  # bytes of activations per token, about SmolLM2-135M's
    merged = merge_batches(cfg(max_batch_tokens=2048), cpu, 100, small)
    assert (merged.per_device_train_batch_size, merged.gradient_accumulation_steps) == (16, 1)
    partial = merge_batches(cfg(max_batch_tokens=2048), cpu, 250, small)  # 16 x 250 > 2048: fold by 2 only
    assert (partial.per_device_train_batch_size, partial.gradient_accumulation_steps) == (8, 2)
    for kept in (merge_batches(cfg(max_batch_tokens=2048), cpu, 600, small),  # no fold fits the token budget
                 merge_batches(cfg(), cpu, 100, small),  # off by default: within noise on our CPUs
                 merge_batches(cfg(max_batch_tokens=0), cpu, 100, small),  # turned off
                 merge_batches(cfg(method="grpo", max_batch_tokens=2048), cpu, 100, small),  # completions
                 merge_batches(cfg(max_batch_tokens=2048), cpu, 100, 10**12)):  # would not fit in memory
        assert (kept.per_device_train_batch_size, kept.gradient_accumulation_steps) == (4, 4)
    tiny = 100_000  # a model small enough that memory never caps the fold
    assert merge_batches(cfg(max_batch_tokens=8000), cpu, 500, tiny).per_device_train_batch_size == 16
    opted_in = merge_batches(cfg(method="dpo", max_batch_tokens=4096), cpu, 200, tiny)
    assert opted_in.per_device_train_batch_size == 16
    gpu = merge_batches(cfg(max_batch_tokens=4096), Hardware("cuda", torch.bfloat16, True, True, "x"), 200, tiny)
    assert gpu.per_device_train_batch_size == 16


def test_gpu_checkpointing_only_when_activations_are_large(monkeypatch, tiny_model_dir):
    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: Props)
    gpu = Hardware("cuda", torch.bfloat16, True, True, "CUDA")
    _, small = fit_memory(cfg(), gpu, lengths(100), str(tiny_model_dir))
    assert not small.gradient_checkpointing and "no gradient checkpointing" in small.reason
    _, large = fit_memory(cfg(per_device_train_batch_size=4096), gpu, lengths(100_000), str(tiny_model_dir))
    assert large.gradient_checkpointing


def test_merged_batches_take_the_same_step(tiny_args, tmp_path):
    """4 x 4 and the merged 16 x 1 see the same rows and give the same loss and gradient (no dropout)."""
    logs = []
    for name, extra in (("merged", ["--max_batch_tokens", "2048"]), ("unmerged", [])):
        out = tmp_path / name
        args = tiny_args("sft", "--output_dir", str(out), "--max_steps", "1", "--max_train_samples", "16",
                         "--lora_dropout", "0", "--per_device_train_batch_size", "4",
                         "--gradient_accumulation_steps", "4", *extra)
        assert main(args) == 0
        run = read_json(out / RUN_FILE)
        assert run["batch_merged_from"] == ([4, 4] if name == "merged" else None)
        assert run["settings"]["per_device_train_batch_size"] == (16 if name == "merged" else 4)
        logs.append(next(e for e in read_json(out / "trainer_state.json")["log_history"] if "loss" in e))
    merged, unmerged = logs
    assert abs(merged["loss"] - unmerged["loss"]) < 1e-5 * unmerged["loss"]
    assert abs(merged["grad_norm"] - unmerged["grad_norm"]) < 1e-4 * unmerged["grad_norm"]
