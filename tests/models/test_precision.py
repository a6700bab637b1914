"""--dtype: the CPU's compute dtype is decided by measuring this machine (models/precision.py), and bf16 autocast keeps
the LoRA adapter in fp32 (fp32_adapters) so that its small updates are not rounded away."""

import json
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from unitune.cli import main
from unitune.fast import probes
from unitune.fast.lora_merge import lora_merged
from unitune.models import precision as dtype_probe
from unitune.models.hardware import choose_hardware
from unitune.models.precision import Fp32Linear, fp32_adapters

from conftest import read_json


def _probe(fp32_s, bf16_s, error=0.004):
    """A dtype probe's result: the two timings and the parity check's relative error."""
    passed = error <= 0.02  # PARITY_LIMIT
    return {"fp32_s": fp32_s, "bf16_s": bf16_s, "bf16": fp32_s / bf16_s >= dtype_probe.MIN_GAIN and passed,
            "parity": {"rel_error": error, "limit": 0.02, "passed": passed}}


def _machine(monkeypatch, tmp_path, flags, measured=None):
    monkeypatch.setenv("UNITUNE_HOME", str(tmp_path))
    for module in (dtype_probe, probes):
        monkeypatch.setattr(module, "cpu_info", lambda: ("Test CPU", set(flags)))
    calls = []
    monkeypatch.setattr(dtype_probe, "measure", lambda: calls.append(1) or measured)
    return calls


def test_no_native_bf16_means_fp32_without_probing(monkeypatch, tmp_path):
    calls = _machine(monkeypatch, tmp_path, {"avx2", "avx512f"})
    dtype, why = dtype_probe.cpu_dtype()
    assert dtype == torch.float32 and "no avx512_bf16/AMX" in why and not calls
    assert not (tmp_path / "probes").exists()
    assert "CPU: no native bf16 (no avx512_bf16/AMX), fp32; no gradient checkpointing" in choose_hardware("auto").line()


def test_the_probe_runs_once_per_machine(monkeypatch, tmp_path):
    calls = _machine(monkeypatch, tmp_path, {"avx512_bf16"}, _probe(1.3, 1.0))
    first, second = dtype_probe.cpu_dtype(), dtype_probe.cpu_dtype()
    assert first[0] == second[0] == torch.bfloat16 and len(calls) == 1  # measured once, then read back
    assert "1.30x fp32" in first[1] and "measured now" in first[1] and "cached" in second[1]
    assert json.loads(dtype_probe.probe_file().read_text())["result"]["bf16"] is True
    # another CPU (flags) is another machine: its own probe, here one where bf16 did not pay
    calls = _machine(monkeypatch, tmp_path, {"avx512_bf16", "amx_bf16"}, _probe(1.0, 0.95))
    dtype, why = dtype_probe.cpu_dtype()
    assert dtype == torch.float32 and len(calls) == 1 and "only 1.05x fp32, so fp32" in why
    assert len(list((tmp_path / "probes").glob("*.json"))) == 2


def test_deepspeed_on_cpu_trains_in_fp32(monkeypatch, tmp_path):
    """DeepSpeed's bf16 casts the weights to bf16, and with unitune's autocast over fp32 adapters the first matmul
    failed (float != BFloat16; seen on a CPU with avx512_bf16). Under a DeepSpeed launch --dtype auto is fp32 even
    where the probe says bf16, and --dtype bfloat16 is one line."""
    from unitune.errors import UserError

    _machine(monkeypatch, tmp_path, {"avx512_bf16"}, _probe(2.0, 1.0))
    assert choose_hardware("auto").dtype == torch.bfloat16  # without DeepSpeed: what the probe measured
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    hw = choose_hardware("auto")
    assert hw.dtype == torch.float32 and "DeepSpeed on CPU processes: fp32" in hw.line()
    with pytest.raises(UserError, match="not supported with DeepSpeed on CPU processes"):
        choose_hardware("auto", "bfloat16")


def test_the_probe_itself_times_both_dtypes_and_checks_parity():
    result = dtype_probe.measure()
    assert result["fp32_s"] > 0 and result["bf16_s"] > 0
    check = result["parity"]
    assert 0 < check["rel_error"] <= dtype_probe.PARITY_LIMIT and check["passed"]  # bf16 rounds, within the limit
    assert result["bf16"] == (result["fp32_s"] / result["bf16_s"] >= dtype_probe.MIN_GAIN and check["passed"])
    assert dtype_probe.valid(result)


def test_the_parity_check_catches_a_wrong_bf16_kernel(monkeypatch):
    forward = dtype_probe._forward

    def off_by_5_percent(x, up, down, bf16):
        out = forward(x, up, down, bf16)
        return out * 1.05 if bf16 else out

    monkeypatch.setattr(dtype_probe, "_forward", off_by_5_percent)
    check = dtype_probe.parity(tokens=256)
    assert check["rel_error"] >= 0.05 and not check["passed"]  # 5% off the output, 10% off the squared loss's grads


def test_bf16_is_chosen_only_with_a_passed_parity_check(monkeypatch, tmp_path):
    calls = _machine(monkeypatch, tmp_path, {"avx512_bf16"}, _probe(2.0, 1.0, error=0.08))
    dtype, why = dtype_probe.cpu_dtype()
    assert dtype == torch.float32 and len(calls) == 1  # twice as fast, but wrong: fp32
    assert "failed the parity check (8.00% from fp32, limit 2%), so fp32" in why
    _machine(monkeypatch, tmp_path / "other", {"avx512_bf16"}, _probe(2.0, 1.0, error=0.004))
    hw = choose_hardware("auto")
    # the reason goes into the run record as hardware.reason: it names the speed-up and the parity result
    assert hw.dtype == torch.bfloat16
    assert "autocast ran 2.00x fp32 and passed the parity check (0.40% from fp32, limit 2%)" in hw.reason


def test_a_busy_machine_falls_back_to_fp32(monkeypatch, tmp_path):
    """The probe's threads got half the CPU time they wanted while it ran (other processes held the cores): its answer
    (bf16, 2x faster) is refused and not kept, and --dtype auto takes fp32, saying why."""
    calls = _machine(monkeypatch, tmp_path, {"avx512_bf16"}, _probe(2.0, 1.0))
    clock = iter([(10.0, 10.0, 100.0), (11.0, 12.0, 101.0)])  # ran 1 s of the 2 s they wanted
    monkeypatch.setattr(probes, "cpu_clock", lambda: next(clock), raising=False)
    hw = choose_hardware("auto")
    assert hw.dtype == torch.float32
    assert "native bf16, but the probe was refused: the machine was busy" in hw.reason and "so fp32" in hw.reason
    assert "50% of the CPU time they wanted" in hw.reason and len(calls) == 1
    assert "result" not in json.loads(dtype_probe.probe_file().read_text())


@pytest.mark.parametrize("text", ["", "{not json", "[]", '{"bf16": true}', '{"fp32_s": 1.0, "bf16": true}',
                                  '{"fp32_s": 2.0, "bf16_s": 1.0, "bf16": true}', "partial-new"])
def test_a_broken_or_partial_dtype_probe_is_measured_again(monkeypatch, tmp_path, text):
    calls = _machine(monkeypatch, tmp_path, {"avx512_bf16"}, _probe(1.0, 1.0))
    path = dtype_probe.probe_file()
    if text == "partial-new":  # this machine's, today's, but its parity check is missing
        text = json.dumps({"measured_at": time.time(), "machine": probes.identity(),
                           "result": {"fp32_s": 2.0, "bf16_s": 1.0, "bf16": True}})
    path.parent.mkdir(parents=True)
    path.write_text(text)
    dtype, why = dtype_probe.cpu_dtype()
    assert dtype == torch.float32 and "only 1.00x fp32" in why and "measured now" in why and len(calls) == 1
    assert dtype_probe.valid(json.loads(path.read_text())["result"])


def test_dtype_flag_overrides(monkeypatch, tmp_path):
    calls = _machine(monkeypatch, tmp_path, {"avx512_bf16"}, _probe(2.0, 1.0))
    assert choose_hardware("auto", "float32").dtype == torch.float32 and not calls
    forced = choose_hardware("auto", "bfloat16")
    assert forced.dtype == torch.bfloat16 and "--dtype bfloat16" in forced.reason and not calls
    assert choose_hardware("auto").dtype == torch.bfloat16 and calls
    assert "4-bit base and bf16 adapter" in choose_hardware("true", "bfloat16").reason  # TRL casts a QLoRA adapter


def test_forced_bf16_without_native_bf16_warns(monkeypatch, tmp_path, capsys):
    _machine(monkeypatch, tmp_path, {"avx2"})
    assert choose_hardware("auto", "bfloat16").dtype == torch.bfloat16  # as asked
    assert "torch emulates it, many times slower than fp32" in capsys.readouterr().err


def test_fp32_adapters_under_bf16_autocast(tiny_model_dir):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    keys = set(model.state_dict())
    assert fp32_adapters(model) == 28  # 2 layers x 7 linear layers x (A, B)
    assert set(model.state_dict()) == keys  # the same modules and weights: checkpoints and merges unchanged
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    seen = {}
    layer.lora_B["default"].register_forward_hook(lambda m, i, o: seen.update(adapter=o.dtype))
    layer.register_forward_hook(lambda m, i, o: seen.update(layer=o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=torch.tensor([[1, 5, 9, 14]])).logits.float().sum().backward()
    assert isinstance(layer.lora_B["default"], Fp32Linear)
    assert seen == {"adapter": torch.float32, "layer": torch.float32}  # fp32 branch, fp32 sum with the base output
    assert layer.lora_A["default"].weight.grad.dtype == torch.float32
    with torch.no_grad(), lora_merged(model) as merged:  # GRPO still samples through merged weights
        assert merged == 14


def test_bf16_run_on_the_tiny_model(tiny_args, tmp_path, capsys):
    assert main(tiny_args("sft", "--dtype", "bfloat16")) == 0
    assert "dtype=bfloat16" in capsys.readouterr().out
    record = read_json(tmp_path / "sft_run" / "unitune_run.json")
    assert record["hardware"]["dtype"] == "torch.bfloat16"


NATIVE = dtype_probe.native_bf16()


@pytest.mark.slow
@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (avx512_bf16/AMX): bf16 is emulated here, many "
                                       "times slower than fp32, and --dtype auto never picks it")
def test_bf16_trains_as_well_as_fp32(tmp_path):
    """The parity bar: 8 steps on the same rows in fp32 and under bf16 autocast, then both adapters scored in fp32 on
    held-out rows: the same loss within 1% (measured 0.3%, 200 rows, on an AMD EPYC with avx512_bf16). The losses the
    runs log are not the bar: bf16's forward computes them in bf16, which reads 0.4% high before the first update and
    2.4% high by step 5 as the loss falls, while the two trained adapters score within 0.3% of each other."""
    runs, logged = tmp_path / "runs", {}
    for dtype in ("float32", "bfloat16"):
        out = runs / dtype
        assert main(["train", "--method", "sft", "--output_dir", str(out), "--max_steps", "8", "--dtype", dtype,
                     "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
                     "--max_train_samples", "32", "--lora_dropout", "0"]) == 0
        logged[dtype] = [e["loss"] for e in read_json(out / "trainer_state.json")["log_history"] if "loss" in e]
    assert main(["eval", "--runs_dir", str(runs), "--skip_base", "--prefs_split", "none", "--gen_split", "none",
                 "--report", "false", "--max_samples", "64"]) == 0
    scored = {name: result["test_loss"] for name, result in read_json(runs / "evaluation_results.json").items()}
    assert abs(scored["bfloat16"] - scored["float32"]) / scored["float32"] <= 0.01, (scored, logged)
    assert scored["bfloat16"] < 0.75 * logged["bfloat16"][0], (scored, logged)  # it learned
