"""Decode steps through oneDNN-packed weights (packed_linear): the same outputs as F.linear to float rounding, only
where the probe measured it faster on this machine, and the model exactly as before afterwards."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from unitune.fast import packed_linear, probes
from unitune.fast.lora_merge import lora_merged
from unitune.fast.packed_linear import DECODE_ROWS, packed_linears


def _onednn() -> bool:
    try:
        packed_linear.pack(torch.randn(4, 4))
    except (RuntimeError, AttributeError):
        return False
    return torch.backends.mkldnn.is_available()


ONEDNN = _onednn()
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="this torch build has no usable oneDNN (packing never applies)")


@pytest.fixture
def pays(monkeypatch):
    """Packing forced on, whatever this machine's probe says, so that its path is what gets tested."""
    monkeypatch.setattr(packed_linear, "packing_pays", lambda: (True, "forced by the test"))


def _linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@needs_onednn
def test_decode_calls_match_and_prefills_keep_f_linear(tiny_model_dir, pays, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    calls = []
    op = packed_linear._packed_op
    monkeypatch.setattr(packed_linear, "_packed_op", lambda *a: calls.append(1) or op(*a))
    torch.manual_seed(0)
    small, large = torch.randint(5, 1000, (3, 1)), torch.randint(5, 1000, (2, DECODE_ROWS))
    with torch.inference_mode():
        plain_small, plain_large = model(input_ids=small).logits, model(input_ids=large).logits
        with packed_linears(model) as count:
            assert count == len(_linears(model))
            packed_small = model(input_ids=small).logits
            assert len(calls) == count  # a decode-sized call: every layer through its packed weight
            packed_large = model(input_ids=large).logits
            assert len(calls) == count  # more than DECODE_ROWS rows per call: F.linear itself
    assert torch.allclose(packed_small, plain_small, atol=1e-5, rtol=1e-4)
    assert torch.equal(packed_large, plain_large)
    assert not any("forward" in vars(m) for m in _linears(model))  # the class's forward again


@needs_onednn
def test_merged_lora_sampling_gives_the_same_tokens(tiny_model_dir, pays):
    """What GRPO samples through: the merged weights, packed. Greedy tokens equal the unmerged, unpacked model's."""
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(5, 1000, (4, 7))
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    reference = model.generate(input_ids=ids, **settings)
    with lora_merged(model), packed_linears(model) as count:
        assert count > 0
        assert torch.equal(model.generate(input_ids=ids, **settings), reference)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _counting(monkeypatch) -> list:
    calls = []
    op = packed_linear._packed_op
    monkeypatch.setattr(packed_linear, "_packed_op", lambda *a: calls.append(1) or op(*a))
    return calls


@needs_onednn
def test_bias_rows_boundary_and_fallbacks(pays, monkeypatch):
    calls = _counting(monkeypatch)
    layer = nn.Linear(16, 8).requires_grad_(False)  # with a bias, frozen: what a generation sees
    with torch.no_grad(), packed_linears(layer) as count:
        assert count == 1
        for rows in (1, 5, DECODE_ROWS):
            x = torch.randn(rows, 16)
            assert torch.allclose(layer(x), nn.functional.linear(x, layer.weight, layer.bias), atol=1e-6)
        assert len(calls) == 3
        layer(torch.randn(DECODE_ROWS + 1, 16))  # one row too many: F.linear
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(torch.randn(2, 16)).dtype == torch.bfloat16  # autocast decides: F.linear
        assert len(calls) == 3
        layer.weight.data = torch.randn(8, 16)  # not the weight that was packed: F.linear, on the new weight
        x = torch.randn(2, 16)
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias)) and len(calls) == 3
    x = torch.randn(2, 16, requires_grad=True)
    with packed_linears(layer.requires_grad_(True)):
        layer(x).sum().backward()  # the packed op has no backward: this call must have gone through F.linear
    assert x.grad is not None and len(calls) == 3


@needs_onednn
def test_layers_are_restored_when_the_block_fails(tiny_model_dir, pays):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError), packed_linears(model):
        raise ValueError("generation failed")
    assert not any("forward" in vars(m) for m in _linears(model))


class _FakeQuantLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x).round()


def test_what_is_not_packed(pays, monkeypatch):
    """Subclasses with their own forward, layers whose forward a hook replaced, and models too large for a second
    copy of their weights keep F.linear."""
    model = nn.Sequential(_FakeQuantLinear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    model[2].forward = lambda x: x  # as accelerate's hooks do
    assert [packed_linear.packable(m) for m in model] == [False, True, False]
    monkeypatch.setattr(packed_linear, "memory_limit", lambda: 4 * 4 * 4 * 4 - 1)  # a quarter < 64 bytes
    with packed_linears(model) as count:
        assert count == 0


def test_nothing_is_packed_where_the_probe_says_it_does_not_pay(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(packed_linear, "packing_pays", lambda: (False, "sgemm was faster"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with packed_linears(model) as count:
        assert count == 0 and not any("forward" in vars(m) for m in _linears(model))


def test_the_probe_runs_once_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("UNITUNE_HOME", str(tmp_path))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    calls = []
    monkeypatch.setattr(packed_linear, "measure",
                        lambda: calls.append(1) or {"sgemm_s": 2.0, "packed_s": 1.0, "packed": True})
    first, second = packed_linear.packing_pays(), packed_linear.packing_pays()
    assert first[0] and second[0] and len(calls) == 1
    assert "2.00x sgemm" in first[1] and "measured now" in first[1] and "cached" in second[1]
    assert probes.probe_file("packed-linear").exists()


def test_a_probe_leaves_the_random_stream_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("UNITUNE_HOME", str(tmp_path))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    probes.cached("test", lambda: {"drawn": torch.manual_seed(0).initial_seed() + float(torch.rand(1))})
    assert torch.equal(torch.rand(3), expected)


def test_without_onednn_the_probe_says_why(monkeypatch):
    def broken(weight):
        raise RuntimeError("mkldnn is not supported on this CPU\nmore lines")

    monkeypatch.setattr(packed_linear, "pack", broken)
    assert packed_linear.measure() == {"packed": False,
                                       "why": "oneDNN unavailable: mkldnn is not supported on this CPU"}


@needs_onednn
def test_the_probe_itself_times_both_ways():
    result = packed_linear.measure()
    assert result["sgemm_s"] > 0 and result["packed_s"] > 0
    assert result["packed"] == (result["sgemm_s"] / result["packed_s"] >= packed_linear.MIN_GAIN)
