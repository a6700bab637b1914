"""SFT's padding-free micro-batches (--padding_free): the rows side by side in one sequence are kept apart by the
attention of every architecture unitune allows it for, the loss and the tokens counted are the padded run's, and auto
turns it on only where padding would waste tokens."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from unitune.cli import main
from unitune.config import TrainConfig
from unitune.fast.packing import attention_only
from unitune.train.methods import sft

from conftest import ARCHITECTURES, SCALED_LOGITS, read_json, tiny_config

ROWS = [[5, 17, 230, 41, 9, 77, 301], [12, 8, 93], [400, 3, 51, 66, 2, 19, 88, 120, 7, 14, 250]]


# transformers runs Gemma-2 with eager attention only (its attention softcapping)
KERNELS = [(arch, attn) for arch in ARCHITECTURES + SCALED_LOGITS for attn in ("sdpa", "eager")
           if (arch, attn) != ("gemma2", "sdpa")]


@pytest.mark.parametrize(("arch", "attn"), KERNELS)
def test_rows_side_by_side_are_kept_apart(tokenizer, arch, attn):
    """TRL's padding-free batch (position ids restarting per row) gives each row the logits it has alone (the cache
    off, as TRL's compute_loss turns it off: transformers reads the rows from the position ids only without one), with
    sliding windows (8 tokens, shorter than a row), softcapping and output scales; a model with convolution or
    state-space layers (LFM2, Falcon-H1) is never given one."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer), attn_implementation=attn).eval()
    cfg = TrainConfig(method="sft", padding_free="true")
    if not attention_only(model):
        assert not sft.padding_free(cfg, model, Dataset.from_dict({"input_ids": ROWS}))
        return
    assert sft.padding_free(cfg, model, Dataset.from_dict({"input_ids": ROWS}))
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(
        [{"input_ids": row} for row in ROWS])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        start = 0
        for row in ROWS:
            alone = model(input_ids=torch.tensor([row]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:start + len(row)], alone, rtol=1e-4, atol=1e-4)
            start += len(row)


def test_auto_turns_it_on_where_padding_wastes_tokens(tokenizer, capsys):
    model = AutoModelForCausalLM.from_config(tiny_config("llama", tokenizer))
    even = Dataset.from_dict({"input_ids": [[1] * n for n in (80, 82, 85, 90) * 8]})
    tailed = Dataset.from_dict({"input_ids": [[1] * n for n in (60, 120, 400, 900) * 8]})
    auto = TrainConfig(method="sft")
    assert sft.padding_factor([10, 10], 2) == 1.0 and sft.padding_factor([10, 30], 2) == 1.5
    assert not sft.padding_free(auto, model, even) and "padding-free" not in capsys.readouterr().out
    assert sft.padding_free(auto, model, tailed)
    assert "padding-free micro-batches: padded to their longest row, they would hold" in capsys.readouterr().out
    assert not sft.padding_free(TrainConfig(method="sft", per_device_train_batch_size=1), model, tailed)
    assert not sft.padding_free(TrainConfig(method="sft", padding_free="false"), model, tailed)
    assert sft.padding_free(TrainConfig(method="sft", padding_free="true"), model, even)


def test_a_padding_free_run_trains_and_counts_as_a_padded_one(tiny_args, tmp_path):
    """The same rows in the same micro-batches: the same loss and the same tokens seen (every token counted; the
    embedded tokenizer's pad id is its end-of-turn token, which a count of non-pad ids would skip)."""
    runs = {}
    for mode in ("true", "false"):
        out = tmp_path / f"sft_{mode}"
        assert main(tiny_args("sft", "--padding_free", mode, "--output_dir", str(out), "--dtype", "float32")) == 0
        state = read_json(out / "trainer_state.json")
        runs[mode] = ([e["loss"] for e in state["log_history"] if "loss" in e], state["num_input_tokens_seen"])
    (free, free_tokens), (padded, padded_tokens) = runs["true"], runs["false"]
    assert free_tokens == padded_tokens > 0
    assert free[0] == pytest.approx(padded[0], rel=1e-5)  # the same batch, the same loss
    assert free[1] == pytest.approx(padded[1], rel=1e-3)  # after an Adam step at lr 1e-2, rounding apart


def test_padding_free_flag_is_checked(capsys):
    from unitune.errors import UserError

    assert main(["train", "--method", "sft", "--padding_free", "maybe", "--dry_run"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "unitune: error: argument --padding_free: invalid choice: 'maybe' (choose from 'auto', 'true', 'false'); see "
        "`unitune train --help`"]

    with pytest.raises(UserError, match="--padding_free must be auto, true or false"):
        TrainConfig(method="sft", padding_free="maybe")
    assert json.dumps(TrainConfig(method="sft").padding_free) == '"auto"'
