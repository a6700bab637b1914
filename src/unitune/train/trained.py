"""The model a run trained, loaded back: its base as it was trained (a QLoRA run's 4-bit base, a Hub base at the
revision it trained on) with its adapter.

A QLoRA adapter learned to correct the 4-bit weights it trained on, so scoring, merging or chatting with it on the
full-precision weights is another model (5e-2 off on the tiny model's logits). Two forms are that model:
- on the 4-bit base, adapter on top: bitsandbytes' forward as in training, in 4-bit memory (CUDA: what the evaluator
  uses, loaded in the training dtype with ``device_map="auto"``);
- merged into the dequantised 4-bit base in fp32: the exact 4-bit values plus the adapter, 6e-7 from the trained
  weights (what merge, export and chat write, and what the evaluator uses on CPU, where bitsandbytes' own 4-bit
  kernel is itself 5e-3 off those values on some CPUs, and slower).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..methods import is_reward_model
from ..models.hardware import Hardware
from ..models.load import auto_class, load_model, load_tokenizer, resolve_model
from ..models.revision import pinned
from .records import read_run, recorded_base


def _hardware(run: Path) -> dict:
    return (read_run(run) or {}).get("hardware") or {}


def scores(run: Path) -> bool:
    """Whether the run trained a score head (a reward model, the method table's ``scores``), not the LM."""
    return is_reward_model((read_run(run) or {}).get("method"))


def refuse_reward_model(run: Path, what: str) -> None:
    """One line for a command that generates text (chat, export), given a reward model run."""
    if scores(run):
        raise UserError(f"{run} is a reward model (--method rm): it scores replies and writes none, so it cannot "
                        f"{what}; give it to GRPO or RLOO as --reward_model, or `unitune merge` it into a standalone "
                        "classifier")


def training_dtype(run: Path) -> torch.dtype:
    """The dtype the run computed in (its record's hardware.dtype; fp32 when it records none)."""
    return getattr(torch, str(_hardware(run).get("dtype", "torch.float32")).removeprefix("torch."), torch.float32)


def qlora_dtype(run: Path) -> torch.dtype | None:
    """The compute dtype a QLoRA run quantised its base in; None for a LoRA run."""
    return training_dtype(run) if _hardware(run).get("qlora") else None


def base_revision(run: Path, base: str) -> str | None:
    """The commit of a Hub base the run trained on (its record's ``base_revision``), to load again; a line when the
    repo has moved on since. None for a local base or a record from before revisions were kept."""
    return pinned(base, (read_run(run) or {}).get("base_revision"), f"the run {run.name}")


def load_base(base: str, run: Path, merge_base: str):
    """The base weights to merge into, fp32: for a QLoRA run with merge_base "quantized", the 4-bit NF4 base it
    trained on (quantised as in training, then dequantised to fp32: the exact quantised values, whatever dtype the
    training computed in); else the full-precision weights. A Hub base at the revision the run trained on."""
    dtype, revision, head = qlora_dtype(run), base_revision(run, base), scores(run)
    if dtype is None or merge_base == "original":
        return auto_class(head).from_pretrained(base, dtype=torch.float32, revision=revision,
                                                **({"num_labels": 1} if head else {}))
    # Quantise on the CPU as training did on its device: NF4 blocks and absmax do not depend on the device.
    model = load_model(base, Hardware("cpu", dtype, True, False, "merge"), revision=revision, scores=head)
    # Not dequantize(dtype=<the training's compute dtype>): bf16 would round the quantised values (0.016 on the
    # tiny model's logits, against 3e-7 in fp32).
    return model.dequantize(dtype=torch.float32)


def merged_model(run: Path, base: str, merge_base: str = "quantized"):
    """``run``'s adapter merged into its base (module docstring), in fp32; the merge base actually used."""
    from peft import PeftModel

    used = merge_base if qlora_dtype(run) is not None else "original"
    return PeftModel.from_pretrained(load_base(base, run, used), str(run)).merge_and_unload().eval(), used


def as_trained(run: Path, base: str, device: str, merge: bool | None = None):
    """The run's model in the form the evaluator scores on ``device``, and that form in words (for the results).

    CUDA: the base in the training dtype (4-bit NF4 for QLoRA) spread with ``device_map="auto"``, the adapter on
    top, unmerged, as the training computed. CPU: merged in fp32 (into the dequantised 4-bit base for QLoRA).
    ``merge`` chooses the form against the device's default."""
    from peft import PeftModel

    qlora = qlora_dtype(run) is not None
    if device == "cpu" if merge is None else merge:
        model, _ = merged_model(run, base)
        return model, ("adapter merged into the dequantised 4-bit base, fp32" if qlora
                       else "adapter merged into the base, fp32")
    dtype = training_dtype(run)
    hw = Hardware(device, dtype, qlora, False, "evaluation")
    model = load_model(base, hw, device_map="auto", revision=base_revision(run, base), scores=scores(run))
    model = PeftModel.from_pretrained(model, str(run)).eval()
    name = str(dtype).removeprefix("torch.")
    return model, (f"4-bit NF4 base ({name} compute) with the adapter, as trained" if qlora
                   else f"{name} base with the adapter, as trained")


def reward_classifier(source: str):
    """A reward model to score with, and its tokenizer, on the CPU (fp32; bf16 where CUDA will run it): a unitune RM
    run (its adapter and score head merged as ``merged_model`` merges them), else a Hub id or folder of a
    sequence-classification model. Its pad token is the tokenizer's (the score is read at the last token that is not
    padding), as TRL sets it."""
    from transformers import AutoModelForSequenceClassification

    run = Path(source)
    if (run / "unitune_run.json").is_file():
        if not scores(run):
            raise UserError(f"--reward_model {source} is a {read_run(run).get('method')} run, not a reward model; "
                            "train one with --method rm")
        model, _ = merged_model(run, resolve_model(recorded_base(run)))
        tokenizer = load_tokenizer(str(run))
    else:
        tokenizer = load_tokenizer(resolve_model(source))
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model(source), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = str(source).rstrip("/")  # TRL names the reward by it ("rewards/<name>/mean")
    return on_gpu_dtype(model.eval()), tokenizer


def teacher_model(source: str, tokenizer):
    """A distillation's --teacher, on the CPU (fp32; bf16 where CUDA will run it): a run folder as it trained (its
    adapter merged into its base, the dequantised 4-bit one for QLoRA), else a Hub id, folder or .gguf file. Refused
    in one line, before its weights load, when its tokenizer or its vocabulary size is not the student's: the two
    distributions must range over one vocabulary."""
    from transformers import AutoModelForCausalLM

    run = Path(source)
    is_run = (run / "unitune_run.json").is_file()
    if is_run:
        refuse_reward_model(run, "be a teacher")
    from transformers import AutoConfig

    theirs = load_tokenizer(str(run) if is_run else resolve_model(source))
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"--teacher {source} has another tokenizer than the student's ({len(theirs):,} tokens against "
                        f"{len(tokenizer):,}, or other ids): distillation compares next-token distributions over one "
                        "vocabulary; use a teacher of the student's family")
    weights = resolve_model(recorded_base(run)) if is_run else resolve_model(source)
    rows, student_rows = (AutoConfig.from_pretrained(path).get_text_config().vocab_size for path in
                          (weights, tokenizer.name_or_path))
    if rows != student_rows:  # one tokenizer, embeddings padded differently (Qwen2.5 0.5B against 7B)
        raise UserError(f"--teacher {source} has {rows:,} vocabulary rows and the student {student_rows:,}: the "
                        "distributions must have one size; use a teacher with the student's vocab_size")
    model = merged_model(run, weights)[0] if is_run else \
        AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval()
    return on_gpu_dtype(model)


def on_gpu_dtype(model):
    """A frozen helper model (a teacher, a reward model) in bf16 where CUDA runs it, else as loaded (fp32): TRL moves
    it to the GPU as it is, and fp32 doubles its memory there."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return model.to(torch.bfloat16)
    return model
