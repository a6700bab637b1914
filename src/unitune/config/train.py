"""``unitune train``'s settings: one field per flag, with its help, default, section and the methods it applies to.

``__post_init__`` fills the per-method defaults and validates, with messages that name the flag and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, closest
from ..plugins import absolute_spec
from ..methods import GENERATING, METHODS, SAMPLING
from .fields import (ANSWER_FORMAT_HELP, COLUMNS_HELP, _answer_format, _choice, _positive, _template_file, as_bool,
                     opt, parse_columns)
from .trackers import check_names as check_trackers

TRAIN_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class TrainConfig:
    """Fine-tune a causal LM with LoRA/QLoRA: SFT, DPO, ORPO, KTO, GRPO, RLOO, distillation, or a reward model
    (embedded model and data by default)."""

    method: str = opt(None, "training method: " + ", ".join(METHODS), required=True, choices=tuple(METHODS),
                      section="what to train")
    model_name: str | None = opt(None, "Hub id, local model folder or .gguf file (default: the embedded "
                                       "smollm2-135m-instruct)")
    dataset: list[str] | None = opt(None, "Hub id, local folder in Hub layout, or .json/.jsonl/.csv/.parquet file "
                                          "(default: the bundled demo data, alias 'demo'); several are mixed")
    dataset_weights: list[float] | None = opt(None, "with several --dataset: each source's share of the mixed rows "
                                                    "(default: equal); rows are drawn at random by weight, seeded by "
                                                    "--seed, until one source runs out")
    output_dir: str | None = opt(None, "run folder (default: runs/{method}_{model short name})")
    split: str | None = opt(None, "training split (default: the method's natural split if present, else train)")
    eval_split: str | None = opt(None, "split to evaluate on during training (default: none)")
    max_train_samples: int | None = opt(None, "use only the first N training rows")
    max_eval_samples: int | None = opt(None, "use only the first N evaluation rows")
    num_train_epochs: float = opt(3.0, "number of epochs", section="training")
    max_steps: int | None = opt(None, "stop after N optimizer steps (overrides epochs)")
    per_device_train_batch_size: int = opt(4, "micro-batch size per device")
    gradient_accumulation_steps: int = opt(4, "micro-batches per optimizer step")
    max_batch_tokens: int | None = opt(None, "merge gradient-accumulation steps into micro-batches of up to N "
                                             "padded tokens, keeping the effective batch (default off: on our CPUs "
                                             "it measured -6% to +9%, at 2.3x the memory)")
    padding_free: str = opt("auto", "SFT: a micro-batch's rows side by side in one sequence, without padding (the "
                                    "attention mask keeps them apart): auto (on when padding each micro-batch to its "
                                    "longest row would add 25% or more tokens), true or false; conversational rows",
                            choices=("auto", "true", "false"), const="true", methods=("sft",))
    learning_rate: float | None = opt(None, "learning rate (default per method: "
                                      + ", ".join(f"{m.name} {m.learning_rate:g}" for m in METHODS.values()) + ")")
    use_qlora: str = opt("auto", "4-bit NF4 base weights: auto (on CUDA only), true or false; a bare "
                                 "--use_qlora means true", choices=("auto", "true", "false"), const="true",
                         section="LoRA and QLoRA")
    dtype: str = opt("auto", "compute dtype: auto (CUDA: bf16 where supported, else fp16; CPU: bf16 autocast only "
                             "where the CPU runs bf16 natively and a cached probe measured it faster, else float32), "
                             "float32 or bfloat16", choices=TRAIN_DTYPES)
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout, in [0, 1)")
    max_length: int = opt(1024, "truncate training sequences to N tokens",
                          section="sequences, logging and checkpoints")
    seed: int = opt(42, "random seed")
    logging_steps: int = opt(1, "log the loss every N steps")
    save_steps: int = opt(500, "save a checkpoint every N steps (and at the end)")
    eval_steps: int | None = opt(None, "evaluate every N steps with --eval_split (default: same as --save_steps, "
                                       "and at the end)")
    eval_generation: int = opt(0, "at each evaluation (--eval_split), greedy replies to the split's first N prompts, "
                                  "logged as eval_task_accuracy (rows with an answer) and, for GRPO/RLOO, "
                                  "eval_mean_reward; replies are up to --max_completion_length tokens")
    report_to: list[str] | None = opt(None, "experiment trackers for the training logs: none (default), tensorboard, "
                                            "trackio, wandb, mlflow, or several")
    run_name: str | None = opt(None, "the run's name in the trackers (default: the output folder's name)")
    train_on_prompt: bool = opt(False, "SFT: put loss on prompt tokens too (default: assistant tokens only)",
                                section="chat template and loss mask", methods=("sft",))
    chat_template: str | None = opt(None, "Jinja chat template file to use instead of the tokenizer's, e.g. one with "
                                          "{% generation %} markers; it is saved with the run")
    beta: float | None = opt(None, "beta (default per method: " + ", ".join(
        f"{m.name} {m.beta:g}" for m in METHODS.values() if m.beta is not None) + "; RLOO: the KL penalty's weight; "
        "distill: the divergence, 0 forward KL to 1 reverse KL)",
        section="method-specific (preference, sampling, distillation)",
        methods=tuple(name for name, m in METHODS.items() if m.beta is not None))
    loss_type: str | None = opt(None, "the loss, TRL's names: DPO's (default sigmoid), GRPO's (default dapo; also "
                                      "grpo, dr_grpo, bnpo, cispo, sapo, luspo, vespo: README, Methods)",
                                methods=("dpo", "grpo"))
    importance_sampling_level: str = opt("token", "GRPO: importance ratios per token, or per sequence (GSPO)",
                                         choices=("token", "sequence"), methods=("grpo",))
    num_generations: int | None = opt(None, "GRPO/RLOO: completions per prompt (default: 4 on CPU, 8 on GPU)",
                                         methods=SAMPLING)
    max_completion_length: int = opt(64, "GRPO/RLOO/distill: longest sampled completion, in tokens; also the "
                                         "longest reply of --eval_generation (every method)")
    temperature: float = opt(1.0, "GRPO/RLOO/distill: sampling temperature", methods=GENERATING)
    teacher: str | None = opt(None, "distill: the teacher, with the student's tokenizer: Hub id, folder, .gguf file "
                                    "or a run folder (its adapter merged into its base)",
                              methods=tuple(name for name, m in METHODS.items() if m.teacher))
    reward_funcs: list[str] | None = opt(None, "GRPO/RLOO rewards: built-in names (accuracy, format, length, "
                                               "reference), path/file.py:function or package.module:function",
                                     methods=SAMPLING)
    reward_weights: list[float] | None = opt(None, "GRPO/RLOO: one weight per reward function, then one for "
                                                   "--reward_model", methods=SAMPLING)
    reward_model: str | None = opt(None, "GRPO/RLOO: a reward model: a run of --method rm, or a Hub id or folder of "
                                         "a sequence-classification model",
                                     methods=SAMPLING)
    tools: list[str] | None = opt(None, "GRPO: Python functions the model may call mid-reply, their results fed "
                                        "back: calculator (built in), path/file.py:fn[,fn...] or package.module:fn, "
                                        "each with type hints and a Google-style docstring; needs a chat template "
                                        "that renders tools", methods=("grpo",))
    environment: str | None = opt(None, "GRPO: an environment class, path/file.py:Class or package.module:Class, with "
                                        "reset(**row), tool methods and optionally get_reward(); one per rollout",
                                  methods=("grpo",))
    max_tool_calling_iterations: int = opt(3, "GRPO with --tools/--environment: rounds of tool calls per completion "
                                              "(also in eval, which calls the run's tools)", methods=("grpo",))
    answer_format: str = opt("auto", ANSWER_FORMAT_HELP)
    overwrite_output_dir: bool = opt(False, "start again in an output_dir that holds a run: the old run is moved "
                                            "aside to <output_dir>.old-<timestamp>, never deleted",
                                     section="output, resume and dry run")
    resume: str = opt("false", "continue from the newest complete checkpoint-* in output_dir: true (a bare --resume; "
                               "refused when there is none), auto (continue when there is one, else start fresh: one "
                               "command for a job that may be requeued) or false", const="true")
    resume_from_checkpoint: str | None = opt(None, "continue from this checkpoint folder")
    dry_run: bool = opt(False, "resolve the config, load and check the data, print the plan, do not train",
                        aliases=("--dry-run",))
    columns: str | None = opt(None, COLUMNS_HELP, section="data columns and broken rows")
    max_bad_rows: float = opt(0.05, "stop when more than this share of the rows cannot be used (below it they "
                                    "are dropped with one warning)")
    streaming: bool = opt(False, "read the training split as a stream, converting rows as training asks for them "
                                 "(data larger than memory; sft and dpo); needs --max_steps")
    no_data_cache: bool = opt(False, "prepare the training data again instead of loading the rows an earlier run "
                                     "prepared from the same data, split, method, tokenizer, template and "
                                     "--max_length (kept under the datasets cache)")
    num_proc: int | None = opt(None, "processes that prepare the training data (default: one per core, capped by "
                                     "free memory, for 4,096 rows or more; the rows are the same either way)")

    @property
    def column_map(self) -> dict[str, str]:
        return parse_columns(self.columns)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}'{closest(str(self.method), METHODS)}; "
                            f"choose --method from: {', '.join(METHODS)}")
        spec = METHODS[self.method]
        if self.learning_rate is None:
            self.learning_rate = spec.learning_rate
        if self.beta is None:
            self.beta = spec.beta
        _positive(self, "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                  "num_train_epochs", "lora_r", "lora_alpha", "max_length", "max_steps", "logging_steps",
                  "save_steps", "eval_steps", "max_eval_samples", "num_generations", "max_completion_length",
                  "max_tool_calling_iterations", "num_proc")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 0:
            raise UserError(f"--max_batch_tokens must be 0 (off) or more, got {self.max_batch_tokens}; "
                            "try 2048, or omit it for the default")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise UserError(f"--max_train_samples must be at least 1, got {self.max_train_samples}; "
                            "omit it to use every row")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}; 0.05 is typical")
        if self.padding_free not in ("auto", "true", "false"):
            raise UserError(f"--padding_free must be auto, true or false, got '{self.padding_free}'")
        if self.use_qlora not in ("auto", "true", "false"):
            raise UserError(f"--use_qlora must be auto, true or false, got '{self.use_qlora}'")
        _choice(self.dtype, "--dtype", TRAIN_DTYPES)
        if self.temperature <= 0:
            raise UserError(f"--temperature must be greater than 0, got {self.temperature}")
        rewards = len(self.reward_funcs or []) + bool(self.reward_model)
        if self.reward_weights and rewards and len(self.reward_weights) != rewards:
            model = " plus --reward_model" if self.reward_model else ""
            raise UserError(f"--reward_weights has {len(self.reward_weights)} values for {rewards} rewards "
                            f"({len(self.reward_funcs or [])} --reward_funcs{model}); give one weight per reward "
                            "function, then one for the reward model")
        self.dataset = sources(self.dataset, self.dataset_weights)
        if self.method == "rloo" and (self.loss_type is not None or self.importance_sampling_level != "token"):
            flag = "--loss_type" if self.loss_type is not None else "--importance_sampling_level sequence"
            raise UserError(f"{flag} is GRPO's: TRL's RLOO has one loss (REINFORCE with the leave-one-out baseline, "
                            "token-level ratios); drop the flag, or use --method grpo")
        if self.method == "grpo" and self.loss_type is not None:
            _choice(self.loss_type, "--loss_type for grpo", GRPO_LOSSES)
            if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
                raise UserError("--loss_type luspo is a sequence-level loss: add --importance_sampling_level sequence")
        if spec.scores and self.eval_generation:
            raise UserError(f"--eval_generation generates replies, and --method {self.method} trains a reward model, "
                            "which writes none; drop --eval_generation (its eval loss is the pairs' ranking loss)")
        for flag in ("teacher", "reward_model"):  # kept in the record as absolute paths: eval may run elsewhere
            value = getattr(self, flag)
            if value and Path(value).exists():
                setattr(self, flag, str(Path(value).resolve()))
        if (self.tools or self.environment) and self.method != "grpo":
            raise UserError(f"--tools and --environment are GRPO's (TRL's {self.method} trainer calls no tools); use "
                            "--method grpo, or for SFT give the tool calls in the data (docs/methods.md)")
        self.tools = [absolute_spec(spec) for spec in self.tools] if self.tools else None
        if (self.tools or self.environment) and self.eval_generation:
            raise UserError("--eval_generation replies without the tools, so its task accuracy would not count tool "
                            "use; drop it and score the run with `unitune eval`, which calls the run's tools")
        self.environment = absolute_spec(self.environment) if self.environment else None
        if spec.teacher and not self.teacher:
            raise UserError(f"--method {self.method} needs --teacher: a Hub id, folder, .gguf file or run folder "
                            "whose tokenizer is the student's (e.g. --teacher runs/sft_demo)")
        if self.streaming and not self.max_steps:
            raise UserError("--streaming needs --max_steps: a stream's length is not known before it is read "
                            "(e.g. --max_steps 2000)")
        if self.streaming and not spec.streams:
            streams = " and ".join(name for name, method in METHODS.items() if method.streams)
            raise UserError(f"--streaming trains {streams}; {self.method} needs its rows loaded: drop --streaming (the "
                            "prepared-data cache keeps large data ready for the next run)")
        if self.streaming and len(self.dataset or []) > 1:
            raise UserError("--streaming reads one --dataset; mix the sources without --streaming")
        self.resume = _resume_value(self.resume)
        _answer_format(self)
        check_trackers(self.report_to)
        if self.eval_generation < 0 or (self.eval_generation and not self.eval_split):
            raise UserError(f"--eval_generation {self.eval_generation} needs --eval_split (the held-out prompts) and "
                            "a count of 0 or more; e.g. --eval_split test_gen --eval_generation 32")
        _template_file(self.chat_template)
        parse_columns(self.columns)
        if not 0 <= self.max_bad_rows <= 1:
            raise UserError(f"--max_bad_rows must be a share in [0, 1], got {self.max_bad_rows}; e.g. 0.05 for 5%")
        if self.output_dir is None:
            self.output_dir = str(default_run_dir(self.method, self.model_name))


GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's GRPOConfig


def sources(dataset, weights: list[float] | None) -> list[str] | None:
    """--dataset as a list (one name given as a string, as a YAML file or a caller may, is one source), checked
    against --dataset_weights."""
    dataset = [dataset] if isinstance(dataset, str) else list(dataset or []) or None
    if weights is not None:
        if len(dataset or []) < 2:
            raise UserError("--dataset_weights mixes several sources; give two or more --dataset values "
                            "(e.g. --dataset a.jsonl b.jsonl --dataset_weights 0.7 0.3), or drop it")
        if len(weights) != len(dataset):
            raise UserError(f"--dataset_weights has {len(weights)} values for {len(dataset)} --dataset sources; "
                            "give one weight per source")
        if any(w <= 0 for w in weights):
            raise UserError(f"--dataset_weights must all be greater than 0, got {' '.join(map(str, weights))}; "
                            "drop a source instead of giving it weight 0")
    return dataset


def _resume_value(value) -> str:
    """--resume as true, false or auto; the spellings a true/false flag takes (yes, 1, off...) still work."""
    text = str(value).strip().lower()
    if text == "auto":
        return text
    try:
        return str(as_bool(text)).lower()
    except ValueError:
        raise UserError(f"--resume must be true, false or auto, got '{value}'; use --resume auto to continue when a "
                        "checkpoint exists and start fresh otherwise") from None


def default_run_dir(method: str, model_name: str | None, root: str | Path = "runs") -> Path:
    """runs/{method}_{model short name}: where a run goes when --output_dir is not given."""
    from ..models.load import short_name

    return Path(root) / f"{method}_{short_name(model_name)}"


