"""--method distill: on-policy distillation from a --teacher with the student's tokenizer; the student moves toward
its teacher; a teacher with another tokenizer, or none, is one line; the evaluator scores the teacher once."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from unitune.cli import main
from unitune.train.trained import merged_model

from conftest import held_out_prompts, kl_to_teacher, read_json


def save_teacher(folder, tokenizer, seed: int = 7, scale: float = 3.0):
    """A tiny Llama unlike the student (another seed, weights scaled up: sharper distributions)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(scale)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_distilled_student_moves_toward_its_teacher(tiny_args, tiny_model_dir, tokenizer, tmp_path, capsys):
    """The teacher is an SFT run (a run folder: merged into its base), a distribution LoRA can reach; the student,
    the untrained base, learns it on its own samples: its KL to the teacher on held-out prompts falls (measured
    0.0124 -> 0.0018)."""
    teacher_run = tmp_path / "sft_teacher"
    assert main(tiny_args("sft", "--output_dir", str(teacher_run), "--max_steps", "10", "--learning_rate", "3e-2",
                          "--per_device_train_batch_size", "4", "--max_train_samples", "40")) == 0
    assert main(tiny_args("distill", "--teacher", str(teacher_run), "--max_steps", "8", "--max_completion_length",
                          "8", "--max_train_samples", "16")) == 0
    assert f"distilling from {teacher_run}" in capsys.readouterr().out
    run = tmp_path / "distill_run"
    record = read_json(run / "unitune_run.json")
    assert record["method"] == "distill" and record["settings"]["teacher"] == str(teacher_run)
    assert record["settings"]["beta"] == 1.0  # TRL's default divergence: reverse KL
    teacher, _ = merged_model(teacher_run, str(tiny_model_dir))
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    after, _ = merged_model(run, str(tiny_model_dir))
    prompts = held_out_prompts()
    kl_before, kl_after = (kl_to_teacher(m, teacher, tokenizer, prompts) for m in (before, after))
    assert kl_after < 0.5 * kl_before, (kl_before, kl_after)


def test_teacher_problems_are_one_line(tiny_args, tiny_model_dir, tokenizer, tmp_path, capsys):
    assert main(tiny_args("distill")) == 2
    assert "--method distill needs --teacher" in capsys.readouterr().err
    other = tokenizer.__class__.from_pretrained(tiny_model_dir)
    other.add_tokens(["<tool_result>"])
    stranger = save_teacher(tmp_path / "stranger", other)
    assert main(tiny_args("distill", "--teacher", str(stranger))) == 2
    err = capsys.readouterr().err
    assert f"--teacher {stranger} has another tokenizer than the student's ({len(other):,} tokens against " \
           f"{len(tokenizer):,}" in err and "Traceback" not in err
    wider = tmp_path / "wider"  # the student's tokenizer, 64 more embedding rows (as Qwen2.5's sizes differ)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer) + 64, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=1, num_attention_heads=4)).save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    assert main(tiny_args("distill", "--teacher", str(wider), "--overwrite_output_dir")) == 2
    assert f"--teacher {wider} has {len(tokenizer) + 64:,} vocabulary rows and the student {len(tokenizer):,}" in \
        capsys.readouterr().err
    assert main(tiny_args("rm", "--max_steps", "1")) == 0
    assert main(tiny_args("distill", "--teacher", str(tmp_path / "rm_run"), "--overwrite_output_dir")) == 2
    assert "is a reward model (--method rm): it scores replies and writes none, so it cannot be a teacher" in \
        capsys.readouterr().err


def test_the_teacher_is_scored_once_beside_its_students(tiny_args, tiny_model_dir, tokenizer, tmp_path):
    """Two students of one teacher model: one teacher entry. A teacher that is a run of the folder: no extra entry."""
    teacher_dir = save_teacher(tmp_path / "teacher", tokenizer)
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        assert main(tiny_args("distill", "--teacher", str(teacher_dir), "--max_steps", "1", "--max_completion_length",
                              "4", "--output_dir", str(runs / f"distill_{name}"))) == 0
    assert main(tiny_args("sft", "--max_steps", "1", "--output_dir", str(runs / "sft_t"))) == 0
    assert main(tiny_args("distill", "--teacher", str(runs / "sft_t"), "--max_steps", "1", "--max_completion_length",
                          "4", "--output_dir", str(runs / "distill_c"))) == 0
    assert main(["eval", "--runs_dir", str(runs), "--max_samples", "4", "--batch_size", "4",
                 "--max_new_tokens", "4"]) == 0
    results = read_json(runs / "evaluation_results.json")
    assert sorted(results) == ["base", "distill_a", "distill_b", "distill_c", "sft_t", "teacher_teacher"]
    teacher = results["teacher_teacher"]
    assert teacher["method"] == "teacher" and teacher["model_path"] == str(teacher_dir)
    assert teacher["test_loss"] != pytest.approx(results["base"]["test_loss"], abs=1e-3)  # scored as itself
    assert "| teacher_teacher | teacher |" in (runs / "report.md").read_text()
