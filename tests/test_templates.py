"""Every model family trains and scores correctly: TRL's 34 shipped text chat templates on the embedded tokenizer,
and seven architectures built from a config (fast: tiny random models)."""

import math
import re

import pytest
import torch

from unitune.cli import main
from unitune.errors import UserError
from unitune.templates import chat_format

from conftest import (ARCHITECTURES, SCALED_LOGITS, TEXT_TEMPLATES, lora_b_norm, read_json, save_tiny, tiny_config,
                      with_template)

CONVERSATION = [{"role": "user", "content": "apple banana"}, {"role": "assistant", "content": "cherry date"},
                {"role": "user", "content": "zebra yak"}, {"role": "assistant", "content": "mango kiwi"},
                {"role": "user", "content": "lion tiger"}, {"role": "assistant", "content": "plum pear"}]
ROWS = {"plain": CONVERSATION,
        "system": [{"role": "system", "content": "owl heron"}, *CONVERSATION],
        "chinese": [{"role": "user", "content": "你好，世界"}, {"role": "assistant", "content": "谢谢你的问题"}]}


def trained_segments(tokenizer, enc) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    segments, run = [], []
    for token, trained in zip(enc["input_ids"], enc["assistant_masks"]):
        if trained:
            run.append(token)
        elif run:
            segments.append(tokenizer.decode(run))
            run = []
    return segments + ([tokenizer.decode(run)] if run else [])


@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("name", TEXT_TEMPLATES)
def test_masks_cover_each_reply_and_its_end_of_turn(name, row, tokenizer):
    """Character by character: each trained run is one reply, what the template wraps around it (an empty think
    block, gpt-oss's channel), and control tokens; it ends on a control token; no user/system text is trained."""
    tok = with_template(tokenizer, name)
    messages = ROWS[row]
    enc = chat_format(tok).encode(messages)
    assert enc["input_ids"] == tok(chat_format(tok).render(messages), add_special_tokens=False)["input_ids"]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    segments = trained_segments(tok, enc)
    assert len(segments) == len(replies), segments
    control = set(tok.get_added_vocab())
    for segment, reply in zip(segments, replies):
        before, _, after = segment.partition(reply)
        assert _ == reply, (segment, reply)
        # What a template writes around a reply that the model generates itself (past the generation prompt):
        # an empty think block, or its end when the prompt opens it; gpt-oss's channel; Muse's recipient.
        assert before.strip() in ("", "<think></think>", "<think>\n\n</think>", "</think>", "<|channel|>final<|message|>",
                                  "to=user<|message|>"), before
        ending = after.rstrip()
        assert ending and any(ending.endswith(t) for t in control), f"no end-of-turn token trained: {segment!r}"
        assert not re.sub("|".join(map(re.escape, control)), "", after).strip(), f"trained past the reply: {after!r}"
    trained = re.sub("|".join(map(re.escape, control)), "", "".join(segments))  # GLM stops on <|user|>
    for other in ("apple", "zebra", "lion", "owl", "你好"):
        assert other not in trained, (other, segments)


@pytest.mark.parametrize("name", TEXT_TEMPLATES)
def test_last_reply_only_is_the_same_span(name, tokenizer):
    """The evaluator scores exactly the tokens SFT trains for the last reply."""
    chat = chat_format(with_template(tokenizer, name))
    full, last = chat.encode(CONVERSATION), chat.encode(CONVERSATION, last_only=True)
    assert full["input_ids"] == last["input_ids"]
    mask = full["assistant_masks"]
    last_run = max(i for i, m in enumerate(mask) if m)
    while mask[last_run - 1]:
        last_run -= 1
    assert last["assistant_masks"][last_run:] == full["assistant_masks"][last_run:]
    assert sum(last["assistant_masks"]) == sum(full["assistant_masks"][last_run:])


def test_system_turn_folded_where_the_template_rejects_it(tokenizer):
    chat = chat_format(with_template(tokenizer, "gemma"))
    assert chat.folds_system
    text = chat.render(ROWS["system"])
    assert "<start_of_turn>user\nowl heron\n\napple banana<end_of_turn>" in text


def test_no_correct_mask_stops_with_one_line(tokenizer):
    """Qwen3's template as a model repo might ship it, one byte off TRL's copy: no twin, and rendering turn by turn
    trains the next user turn, so the row is refused; the same template with generation markers works."""
    from conftest import _template_dir

    original = (_template_dir() / "qwen3.jinja").read_text() + " "
    tok = with_template(tokenizer, original)
    with pytest.raises(UserError, match="cannot find a correct loss mask.*--chat_template FILE"):
        chat_format(tok).encode(CONVERSATION)
    fixed = with_template(tokenizer, (_template_dir() / "qwen3_training.jinja").read_text())
    assert chat_format(fixed).how == "markers"
    assert len(trained_segments(fixed, chat_format(fixed).encode(CONVERSATION))) == 3


@pytest.mark.parametrize("name", ["qwen3", "llama3", "smollm2"])
def test_short_replies_found_inside_their_spans(name, tokenizer):
    """One-letter replies also occur in the role headers ("a" in "assistant"): each is found in its own span."""
    tok = tokenizer if name == "smollm2" else with_template(tokenizer, name)
    rows = [{"role": "user", "content": "Pick one: a, b, c or d."}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "And?"}, {"role": "assistant", "content": "s"}]
    segments = trained_segments(tok, chat_format(tok).encode(rows))
    assert [re.sub(r"<think>\s*</think>\s*", "", s) for s in segments] == [f"a{chat_format(tok).end_of_turn}",
                                                                         f"s{chat_format(tok).end_of_turn}"]


def test_template_without_end_of_turn_is_refused(tokenizer):
    plain = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
             "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(UserError, match="would not learn to stop"):
        chat_format(with_template(tokenizer, plain)).encode(CONVERSATION)


@pytest.mark.parametrize("name", ["llama3_training", "gemma3"])
def test_a_foreign_end_of_turn_token_names_the_real_fix(name, tokenizer):
    """Another family's template on a tokenizer without its special tokens: the end-of-turn text is no single token
    there. The line says so, not "add {% generation %} markers" (a training twin already has them)."""
    import copy

    from conftest import _template_dir

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (_template_dir() / f"{name}.jinja").read_text()
    with pytest.raises(UserError, match=r"ends a reply with '<(\|eot_id\||end_of_turn)>', which is no single token "
                                        r"of this tokenizer.*chat template written for this model's tokenizer") as err:
        chat_format(tok).encode(CONVERSATION)
    assert "generation %}" not in str(err.value)


def train_one_step(method, model, out) -> None:
    assert main(["train", "--method", method, "--model_name", str(model), "--output_dir", str(out),
                 "--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                 "--max_train_samples", "2"]) == 0
    assert read_json(out / "trainer_state.json")["global_step"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", TEXT_TEMPLATES)
def test_every_template_trains_sft_and_dpo(name, tokenizer, tmp_path):
    """One step of SFT and of DPO on a tiny model carrying each of the 34 templates; each run's
    generation_config.json stops on the template's end-of-turn token and records a folded system turn."""
    tok = with_template(tokenizer, name)
    model = save_tiny(tmp_path / "model", "llama", tok)
    end_of_turn = tok.convert_tokens_to_ids(chat_format(tok).end_of_turn)
    for method in ("sft", "dpo"):
        train_one_step(method, model, tmp_path / method)
        assert end_of_turn in read_json(tmp_path / method / "generation_config.json")["eos_token_id"]
        assert read_json(tmp_path / method / "unitune_run.json")["chat_template"]["system_folded"] == (name == "gemma")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma", "glm4moe", "llama3_2"])
def test_merge_keeps_the_end_of_turn_stop(name, tokenizer, tmp_path):
    tok = with_template(tokenizer, name)
    model = save_tiny(tmp_path / "model", "llama", tok)
    end_of_turn = tok.convert_tokens_to_ids(chat_format(tok).end_of_turn)
    assert end_of_turn != tok.eos_token_id  # these templates end a turn with their own token, not the tokenizer's EOS
    train_one_step("sft", model, tmp_path / "sft")
    assert end_of_turn in read_json(tmp_path / "sft" / "generation_config.json")["eos_token_id"]
    assert main(["merge", "--run", str(tmp_path / "sft"), "--output", str(tmp_path / "merged")]) == 0
    assert end_of_turn in read_json(tmp_path / "merged" / "generation_config.json")["eos_token_id"]


# ---------------------------------------------------------------- architectures


ITEMS = [([{"role": "user", "content": "What is two plus two? Think it through."}],
          [[{"role": "assistant", "content": "Four, since 2 + 2 = 4. That is a fact any long reply may state."}],
           [{"role": "assistant", "content": "Fish are not numbers at all, my friend."}]]),
         ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"}],
          [[{"role": "assistant", "content": "Blue"}], [{"role": "assistant", "content": "I would rather not say"}]])]


def plain_hf_loss(model, chat, prompt, reply) -> float:
    enc = chat.encode(prompt + reply, last_only=True)
    ids = torch.tensor([enc["input_ids"]])
    labels = torch.where(torch.tensor([enc["assistant_masks"]]) == 1, ids, -100)
    return model(input_ids=ids, labels=labels).loss.item()


# transformers runs Gemma-2 with eager attention only (its attention softcapping)
KERNELS = [(arch, attn) for arch in ARCHITECTURES + SCALED_LOGITS for attn in ("sdpa", "eager")
           if (arch, attn) != ("gemma2", "sdpa")]


def noisy_model(arch, tokenizer, attn="sdpa", **config):
    """A tiny model with larger weights than the init, so that masking mistakes show in the losses."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer, **config), attn_implementation=attn).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 0.5)
    return model


def plain_losses(model, tokenizer, items) -> list[float]:
    chat = chat_format(tokenizer)
    with torch.inference_mode():
        return [plain_hf_loss(model, chat, prompt, r) for prompt, replies in items for r in replies]


@pytest.mark.parametrize(("arch", "attn"), KERNELS)
def test_packed_scoring_equals_plain_loss(arch, attn, tokenizer, capsys):
    """The evaluator's packed reply losses equal a one-reply-at-a-time HF loss, under both attention kernels, with
    Gemma-2's softcapping, the sliding windows (8 tokens here, shorter than the rows) and the output scales of Granite,
    Cohere, MiniCPM3 and Falcon-H1 (far from 1 here), each taken on the fast path."""
    from unitune.evaluate.scoring import mean_loss, score_replies
    from unitune.fast.packing import attention_only

    model = noisy_model(arch, tokenizer, attn)
    packed = [mean_loss(s) for s in score_replies(model, tokenizer, ITEMS, batch_size=2)]
    assert sum(packed, []) == pytest.approx(plain_losses(model, tokenizer, ITEMS), abs=1e-4)
    assert "transforms the LM head's output" not in capsys.readouterr().err  # the scorer knows them all
    assert attention_only(model) == (arch not in ("lfm2", "falcon_h1"))


class DoubledLogits(torch.nn.Module):
    """A causal LM whose forward doubles the LM head's output, as no config attribute says: a family the scorer does
    not know."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_decoder(self):
        return self.model.get_decoder()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        out.logits = out.logits * 2
        if kwargs.get("labels") is not None:
            out.loss = self.model.loss_function(logits=out.logits, labels=kwargs["labels"],
                                                vocab_size=self.config.vocab_size)
        return out


def test_an_unknown_output_transform_is_scored_through_the_plain_forward(tokenizer, capsys):
    """A forward that changes the logits in a way no config names: one line, then the model's own forward per row,
    which still equals the HF loss (the fast path would not)."""
    from unitune.evaluate.scoring import mean_loss, score_replies

    model = DoubledLogits(noisy_model("llama", tokenizer)).eval()
    packed = [mean_loss(s) for s in score_replies(model, tokenizer, ITEMS, batch_size=2, desc="odd: pairs")]
    assert sum(packed, []) == pytest.approx(plain_losses(model, tokenizer, ITEMS), abs=1e-4)
    assert "odd: its forward transforms the LM head's output" in capsys.readouterr().err


SYSTEM = [{"role": "system", "content": "You are a careful assistant. Answer every question in one short sentence."}]
SHARED_ITEMS = [(SYSTEM + prompt[-1:], replies) for prompt, replies in ITEMS] + \
    [(SYSTEM + [{"role": "user", "content": "Is ice cold?"}],
      [[{"role": "assistant", "content": "Yes, it is."}], [{"role": "assistant", "content": "No"}]])]


DYNAMIC_ROPE = {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}


@pytest.mark.parametrize(("arch", "attn", "config", "head"), [
    ("llama", "sdpa", {}, "all"), ("llama", "eager", {}, "all"), ("qwen3", "sdpa", {}, "all"),
    ("phi3", "sdpa", {}, "all"), ("gemma3", "sdpa", {"sliding_window": 512}, "all"),
    ("gemma3", "sdpa", {"sliding_window": 20}, 19), ("mistral", "sdpa", {"sliding_window": 20}, 19),
    ("gemma3", "sdpa", {}, None), ("mistral", "sdpa", {}, None), ("lfm2", "sdpa", {}, None),
    ("llama", "sdpa", DYNAMIC_ROPE, None)])
def test_scoring_computes_the_shared_head_once(arch, attn, config, head, tokenizer, monkeypatch):
    """Prompts with one system turn: the head a batch's rows share is computed once and its KV cache copied to each
    row, and the losses still equal the one-reply-at-a-time HF loss. A sliding window must hold the head (window 20:
    19 tokens of it; the tiny configs' window 8: too short to share); none with convolution layers (LFM2) or a rotary
    embedding whose frequencies depend on the row's length (dynamic NTK). The cache keeps only the head."""
    from unitune.evaluate import scoring

    heads, caches = [], []
    head_cache = scoring.head_cache
    monkeypatch.setattr(scoring, "head_cache", lambda model, ids, n, *a, **k:
                        heads.append(n) or caches.append(head_cache(model, ids, n, *a, **k)) or caches[-1])
    model = noisy_model(arch, tokenizer, attn, **config)
    packed = [scoring.mean_loss(s) for s in scoring.score_replies(model, tokenizer, SHARED_ITEMS, batch_size=3)]
    assert sum(packed, []) == pytest.approx(plain_losses(model, tokenizer, SHARED_ITEMS), abs=1e-4)
    if head is None:
        assert heads == []
    else:
        prompts = [chat_format(tokenizer).encode(p + r[0], last_only=True)["input_ids"] for p, r in SHARED_ITEMS]
        assert heads == [min(scoring.shared_head(prompts), 999 if head == "all" else head)]
        assert heads[0] >= scoring.MIN_SHARED and caches[0].get_seq_length() == heads[0]


@pytest.fixture(scope="module")
def arch_dirs(tokenizer, tmp_path_factory):
    return {arch: save_tiny(tmp_path_factory.mktemp(arch), arch, tokenizer) for arch in ARCHITECTURES}


@pytest.mark.parametrize("method", ["sft", "dpo", "orpo", "kto", "grpo", "rm"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_method_trains_each_architecture(arch, method, arch_dirs, tmp_path, capsys):
    extra = ["--max_completion_length", "8", "--num_generations", "2"] if method == "grpo" else []
    out = tmp_path / "run"
    argv = ["train", "--method", method, "--model_name", str(arch_dirs[arch]), "--output_dir", str(out),
            "--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--max_train_samples", "4", *extra]
    if (arch, method) == ("lfm2", "rm"):  # transformers has no Lfm2ForSequenceClassification: one line
        assert main(argv) == 2
        assert "transformers has no sequence classifier for this model family" in capsys.readouterr().err
        return
    assert main(argv) == 0
    losses = [e["loss"] for e in read_json(out / "trainer_state.json")["log_history"] if "loss" in e]
    assert len(losses) == 1 and math.isfinite(losses[0])
    if method != "grpo":  # GRPO's default rewards on a random model give no advantage, hence no update
        assert lora_b_norm(out) > 0, "the step did not move the adapter"


def test_preference_trainers_see_the_end_of_turn_as_eos(tokenizer):
    """DPO/ORPO/KTO append the EOS to a reply that lacks it: with Gemma's template the reply ends on
    <end_of_turn>, so their tokenizer's EOS is that token and nothing is added that SFT does not train."""
    from datasets import Dataset

    from unitune.data.convert import render_pairs
    from unitune.train.methods import trainer_tokenizer

    tok = with_template(tokenizer, "gemma")
    pairs = render_pairs(Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}],
                                             "chosen": [{"role": "assistant", "content": "Hello"}],
                                             "rejected": [{"role": "assistant", "content": "Go"}]}]), tok)
    trainer_tok = trainer_tokenizer(tok)
    assert pairs[0]["chosen"] == "Hello<end_of_turn>" and pairs[0]["prompt"].endswith("<start_of_turn>model\n")
    assert pairs[0]["chosen"].endswith(trainer_tok.eos_token) and tok.eos_token == "<|im_end|>"


@pytest.mark.parametrize("name", TEXT_TEMPLATES)
def test_render_is_apply_chat_template(tokenizer, name):
    """ChatFormat renders through transformers' Jinja renderer directly (skipping apply_chat_template's copies of the
    messages ChatFormat.prepare made plain): the text is apply_chat_template's, with and without the generation
    prompt, tools, a tool-use episode and a system turn."""
    from jinja2 import TemplateError

    from tests.data.test_tool_data import ROW, arrow_filled
    from unitune.data.formats import row_tools

    tok = with_template(tokenizer, name)
    chat = chat_format(tok)
    for messages, tools in ((ROWS["system"], None), (ROWS["plain"], row_tools(ROW)),
                            (arrow_filled(ROW["messages"]), row_tools(ROW))):
        for generation_prompt in (False, True):
            try:
                theirs = tok.apply_chat_template(chat.prepare(messages), tools=tools, tokenize=False,
                                                 add_generation_prompt=generation_prompt, chat_template=chat.template)
            except TemplateError:
                with pytest.raises(UserError):
                    chat.render(messages, generation_prompt, tools=tools)
                continue
            assert chat.render(messages, generation_prompt, tools=tools) == theirs
