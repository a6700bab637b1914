"""GRPO's and RLOO's CPU speed-ups change nothing but speed: the same log-probs, entropies and gradients as TRL's own
pass (fast/shared_prompts), the same logits while sampling, and the exact same weights afterwards (fast/lora_merge)."""

import functools

import pytest
import torch
import trl
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from unitune.fast.lora_merge import lora_merged
from unitune.train.methods.grpo import GRPOTrainer
from unitune.train.methods.rloo import RLOOTrainer

from conftest import save_tiny, tiny_config


def _peft(folder, dropout=0.0):
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                      init_lora_weights=False))  # random B: the adapter changes the outputs
    return model


TRAINERS = {"grpo": (GRPOTrainer, trl.GRPOConfig), "rloo": (RLOOTrainer, trl.RLOOConfig)}


def _trainer(folder, tokenizer, tmp_path, method="grpo"):
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(4)])
    trainer, config = TRAINERS[method]
    args = config(output_dir=str(tmp_path / "out"), per_device_train_batch_size=6, num_generations=3,
                  max_completion_length=8, use_cpu=True, bf16=False, report_to="none", beta=0.0)
    return trainer(model=_peft(folder), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                   args=args, train_dataset=rows, processing_class=tokenizer)


def _batch(tokenizer):
    """Two prompts of different lengths (left-padded), three completions each of different lengths (right-padded),
    repeated as TRL repeats them: each prompt num_generations times in a row."""
    pad = tokenizer.pad_token_id
    prompts = [[pad, pad, 11, 12, 13, 14], [21, 22, 23, 24, 25, 26]]
    completions = [[31, 32, 33, 34, 35], [41, 42, pad, pad, pad], [51, pad, pad, pad, pad],
                   [61, 62, 63, pad, pad], [71, 72, 73, 74, 75], [81, 82, 83, 84, pad]]
    ids = torch.tensor([prompts[i // 3] + completions[i] for i in range(6)])
    mask = torch.tensor([[int(t != pad) for t in prompts[i // 3]] + [int(t != pad) for t in completions[i]]
                         for i in range(6)])
    return ids, mask


@pytest.mark.parametrize("arch,method", [("llama", "grpo"), ("qwen2", "grpo"), ("gemma2", "grpo"), ("mistral", "grpo"),
                                         ("llama", "rloo")])
def test_shared_prompt_logps_match_trl(arch, method, tokenizer, tmp_path):
    """Gemma-2 adds softcapping and sliding windows, Mistral one window for all layers (both 8 < the rows). RLOO's pass
    is GRPO's code, copied in TRL: the same speed-up against its own."""
    folder = save_tiny(tmp_path / arch, arch, tokenizer)
    trainer = _trainer(folder, tokenizer, tmp_path, method)
    ours_class, theirs_class = TRAINERS[method][0], getattr(trl, TRAINERS[method][0].__name__)
    model = trainer.model
    ids, mask = _batch(tokenizer)
    width = 5
    completion_mask = mask[:, -width:].bool()

    def run(method):
        model.zero_grad()
        logps, entropy, _ = method(trainer, model, ids, mask, width, compute_entropy=True)
        (logps * completion_mask).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        return logps.detach(), entropy.detach(), grads

    with torch.autocast("cpu", enabled=False):
        ours = run(ours_class._get_per_token_logps_and_entropies)
        theirs = run(theirs_class._get_per_token_logps_and_entropies)
    assert ours[0].shape == theirs[0].shape == (6, width)
    assert torch.allclose(ours[0][completion_mask], theirs[0][completion_mask], atol=2e-5)
    assert torch.allclose(ours[1][completion_mask], theirs[1][completion_mask], atol=2e-5)
    assert not ours[0][~completion_mask].any()  # past a completion's end: zero, as TRL's compact head leaves it
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours[2], theirs[2]))


def test_shared_prompts_leave_unrepeated_prompts_to_trl(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """Nothing to share (every prompt once) or a hybrid model (convolution layers): TRL's own pass runs."""
    from unitune.fast import shared_prompts

    trainer = _trainer(tiny_model_dir, tokenizer, tmp_path)
    ids, mask = _batch(tokenizer)
    assert shared_prompts.usable(trainer.model, ids, mask, 5)
    assert not shared_prompts.usable(trainer.model, ids[2:4], mask[2:4], 5)  # one row of each prompt
    calls = []
    monkeypatch.setattr(shared_prompts, "per_token_logps", lambda *a, **k: calls.append(1))
    trainer._get_per_token_logps_and_entropies(trainer.model, ids[2:4], mask[2:4], 5)
    assert not calls
    hybrid = _trainer(save_tiny(tmp_path / "lfm2", "lfm2", tokenizer), tokenizer, tmp_path)
    assert not shared_prompts.usable(hybrid.model, ids, mask, 5)


def test_lora_merged_samples_the_same_model_and_restores_the_weights(tiny_model_dir):
    model = _peft(tiny_model_dir, dropout=0.1).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[1, 5, 9, 14, 2, 7]])
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with lora_merged(model) as merged_layers:
            assert merged_layers == 14  # 2 layers x 7 linear layers
            merged = model(input_ids=ids).logits
            name = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
            assert not torch.equal(model.get_parameter(name), before[name])  # the merged copy stands in
        again = model(input_ids=ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert torch.equal(again, unmerged)  # the LoRA branch runs again
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # bit for bit: no drift
    model.train()
    model(input_ids=ids).logits.sum().backward()  # training goes on through the adapter
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.grad is not None


def test_lora_merged_steps_aside_under_zero3(tiny_model_dir):
    """DeepSpeed ZeRO-3 marks every parameter it manages with ds_id. There a process holds only a shard of each
    weight, and TRL gathers the whole weights for sampling after the merge: merging would crash on a shard, or leave
    the gathered, unmerged weight with the LoRA branch skipped (the base model sampling). The LoRA branch runs."""
    model = _peft(tiny_model_dir).eval()
    for param in model.parameters():
        param.ds_id = 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[1, 5, 9, 14, 2, 7]])
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with lora_merged(model) as merged_layers:
            assert merged_layers == 0
            assert torch.equal(model(input_ids=ids).logits, unmerged)  # through the LoRA branch, as before
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_lora_merged_steps_aside_under_fsdp2(tiny_model_dir, tmp_path):
    """FSDP2 shards each weight as a DTensor (here over one gloo process, which is enough to make them DTensors)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = _peft(tiny_model_dir)
        fully_shard(model)
        assert isinstance(model.get_parameter("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"),
                          DTensor)
        with lora_merged(model) as merged_layers:
            assert merged_layers == 0
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_shared_prefill_generates_the_same_tokens(arch, tokenizer, tmp_path):
    """Greedy, so every token must match: repeated left-padded prompts, each prefilled once, then expanded."""
    from unitune.fast.prefill import shared_prefill

    model = _peft(save_tiny(tmp_path / arch, arch, tokenizer)).eval()
    ids, mask = _batch(tokenizer)
    prompt_ids, prompt_mask = ids[:, :6], mask[:, :6]
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        plain = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **settings)
        calls = []
        base = model.get_base_model()  # what generate runs, outside the autocast accelerate puts on PeftModel
        forward = base.forward
        # generate reads forward's signature (position ids, logits_to_keep): keep it
        base.forward = functools.wraps(forward)(lambda *a, **k: calls.append(k["input_ids"].shape) or forward(*a, **k))
        with shared_prefill(model):
            shared = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **settings)
        del base.forward
    assert torch.equal(shared, plain)
    assert calls[0] == (2, 5)  # the two distinct prompts, once each, without their last token
    assert calls[1] == (6, 1)  # then generate goes on from the copied cache: only the prompts' last token
    assert "generate" not in vars(model)  # the model's own generate again


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2", "lfm2"])
def test_evaluator_generation_equals_generate(arch, tokenizer, tmp_path, monkeypatch):
    """The evaluator's greedy replies (the prompts' shared head computed once, finished rows leaving the batch)
    equal plain left-padded `generate`, token for token. Mistral and Gemma-2 slide an 8-token window over longer
    rows, and LFM2's convolution layers cannot share a cache: they keep `generate`'s layout, and Mistral shares
    again once its window covers the rows."""
    from unitune.fast import generation

    torch.manual_seed(0)  # large random weights: replies that depend on the prompt, not one repeated token
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer, initializer_range=0.5)).eval()
    prompts = [[{"role": "user", "content": f"Please add the numbers. {text}"}]
               for text in ("2 and 3", "40 and 2, then say why", "7", "a much longer question about 11 and 12")]
    heads, decoded, stop = [], [], set()
    shared_head = generation.shared_head
    monkeypatch.setattr(generation, "shared_head", lambda rows: heads.append(shared_head(rows)) or heads[-1])
    monkeypatch.setattr(tokenizer, "decode", lambda seq, **k: decoded.append(cut(seq.tolist() if hasattr(
        seq, "tolist") else seq)) or "x")

    def cut(tokens):  # generate pads after the stop token
        return tokens[: next((i + 1 for i, t in enumerate(tokens) if t in stop), len(tokens))]

    def replies(plain: bool):
        decoded.clear()
        with monkeypatch.context() as m:
            if plain:
                m.setattr(generation, "MIN_SHARED", 10**6)
                m.setattr(generation, "plain_greedy", lambda config: False)
            generation.generate_replies(model, tokenizer, prompts, max_new_tokens=10, batch_size=4, desc=None)
        return list(decoded)

    first = replies(True)
    # a token the replies produce mid-way stops them too: rows then finish at different steps
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first[0][3]]
    stop.update(generation.chat_format(tokenizer).stop_ids(model.generation_config))
    ours, plain = replies(False), replies(True)
    assert ours == plain
    assert len({len(r) for r in plain}) > 1 or arch in ("gemma2", "lfm2")
    assert heads == [] if arch == "lfm2" else heads[0] >= generation.MIN_SHARED  # the prompts share a head
    assert generation.window_reached(model, 40) == (arch in ("mistral", "gemma2"))  # so they do not use it
    if arch == "mistral":
        model.config.sliding_window = 512
        assert not generation.window_reached(model, 40)
        assert replies(False) == replies(True)


def test_models_without_a_cache_argument_keep_generate(tiny_model_dir):
    """Older remote-code models take ``past_key_values``, not ``cache``: the evaluator and GRPO leave them to generate."""
    from unitune.fast.generation import takes_cache

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None):
            raise AssertionError("not called")

    assert takes_cache(AutoModelForCausalLM.from_pretrained(tiny_model_dir)) and not takes_cache(Old())
