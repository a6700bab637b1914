"""The one source of settings: a dataclass per command.

Each field's metadata holds its help text; the CLI flags, the YAML keys and ``--help`` all come from
these dataclasses. ``__post_init__`` validates and fills the per-method defaults, with messages that
name the flag and the fix.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..answers import FORMATS as ANSWER_FORMATS
from ..errors import UserError
from .trackers import check_names as check_trackers
from ..methods import METHODS


def opt(default, help: str, **extra):
    """A config field: its default and its help line (shown by --help). ``section="..."`` starts a group of flags
    in --help: this field and the ones after it, until the next section. ``methods=(...)`` names the only methods
    a field applies to (the web UI shows it for those)."""
    return field(default=default, metadata={"help": help, **extra})


TRAIN_DTYPES = ("auto", "float32", "bfloat16")


def closest(word: str, options) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def parse_columns(text) -> dict[str, str]:
    """--columns "prompt=question,chosen=good" (or a YAML mapping) as {key unitune reads: data column}."""
    if not text:
        return {}
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    mapping = {}
    for part in str(text).split(","):
        key, sep, column = part.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise UserError(f"--columns expects KEY=COLUMN[,KEY=COLUMN...], got '{part}'; e.g. "
                            "--columns prompt=question,chosen=good,rejected=bad")
        mapping[key.strip()] = column.strip()
    return mapping


COLUMNS_HELP = ("map the data's columns to the keys unitune reads: KEY=COLUMN[,KEY=COLUMN...], e.g. "
                "prompt=question,chosen=good,rejected=bad or messages=dialog")


ANSWER_FORMAT_HELP = ("how answers are written, for task accuracy and the GRPO accuracy/format rewards: "
                      f"{', '.join(ANSWER_FORMATS)} (auto: from the data's answer column and prompts; "
                      "see unitune.answers)")


def _answer_format(cfg) -> None:
    if cfg.answer_format not in ANSWER_FORMATS:
        raise UserError(f"unknown --answer_format '{cfg.answer_format}'"
                        f"{closest(str(cfg.answer_format), ANSWER_FORMATS)}; use one of: {', '.join(ANSWER_FORMATS)}")


def _positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be greater than 0, got {value}; pass a positive value")


@dataclass
class TrainConfig:
    """Fine-tune a causal LM with LoRA/QLoRA: SFT, DPO, ORPO, KTO or GRPO (embedded model and data by default)."""

    method: str = opt(None, "training method: " + ", ".join(METHODS), required=True, choices=tuple(METHODS),
                      section="what to train")
    model_name: str | None = opt(None, "Hub id, local model folder or .gguf file (default: the embedded "
                                       "smollm2-135m-instruct)")
    dataset: str | None = opt(None, "Hub id, local folder in Hub layout, or .json/.jsonl/.csv/.parquet file "
                                    "(default: the bundled demo data, alias 'demo')")
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
                                  "logged as eval_task_accuracy (rows with an answer) and, for GRPO, eval_mean_reward; "
                                  "replies are up to --max_completion_length tokens")
    report_to: list[str] | None = opt(None, "experiment trackers for the training logs: none (default), tensorboard, "
                                            "trackio, wandb, mlflow, or several")
    run_name: str | None = opt(None, "the run's name in the trackers (default: the output folder's name)")
    train_on_prompt: bool = opt(False, "SFT: put loss on prompt tokens too (default: assistant tokens only)",
                                section="chat template and loss mask", methods=("sft",))
    chat_template: str | None = opt(None, "Jinja chat template file to use instead of the tokenizer's, e.g. one with "
                                          "{% generation %} markers; it is saved with the run")
    beta: float | None = opt(None, "DPO/ORPO/KTO/GRPO beta (default per method: dpo/orpo/kto 0.1, grpo 0.0)",
                             section="method-specific (DPO, ORPO, KTO, GRPO)", methods=("dpo", "orpo", "kto", "grpo"))
    loss_type: str | None = opt(None, "DPO loss type, TRL's names (default: sigmoid)", methods=("dpo",))
    num_generations: int | None = opt(None, "GRPO: completions per prompt (default: 4 on CPU, 8 on GPU)",
                                         methods=("grpo",))
    max_completion_length: int = opt(64, "GRPO: longest sampled completion, in tokens; also the longest reply of "
                                         "--eval_generation (every method)")
    temperature: float = opt(1.0, "GRPO: sampling temperature", methods=("grpo",))
    reward_funcs: list[str] | None = opt(None, "GRPO rewards: built-in names (accuracy, format, length, reference), "
                                               "path/file.py:function or package.module:function",
                                     methods=("grpo",))
    reward_weights: list[float] | None = opt(None, "GRPO: one weight per reward function, then one for --reward_model",
                                            methods=("grpo",))
    reward_model: str | None = opt(None, "GRPO: Hub id or folder of a sequence-classification reward model",
                                     methods=("grpo",))
    answer_format: str = opt("auto", ANSWER_FORMAT_HELP)
    overwrite_output_dir: bool = opt(False, "start again in an output_dir that holds a run: the old run is moved "
                                            "aside to <output_dir>.old-<timestamp>, never deleted",
                                     section="output, resume and dry run")
    resume: bool = opt(False, "continue from the newest complete checkpoint-* in output_dir")
    resume_from_checkpoint: str | None = opt(None, "continue from this checkpoint folder")
    dry_run: bool = opt(False, "resolve the config, load and check the data, print the plan, do not train",
                        aliases=("--dry-run",))
    columns: str | None = opt(None, COLUMNS_HELP, section="data columns and broken rows")
    max_bad_rows: float = opt(0.05, "stop when more than this share of the rows cannot be used (below it they "
                                    "are dropped with one warning)")

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
                  "save_steps", "eval_steps", "max_eval_samples", "num_generations", "max_completion_length")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 0:
            raise UserError(f"--max_batch_tokens must be 0 (off) or more, got {self.max_batch_tokens}; "
                            "try 2048, or omit it for the default")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise UserError(f"--max_train_samples must be at least 1, got {self.max_train_samples}; "
                            "omit it to use every row")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}; 0.05 is typical")
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


def default_run_dir(method: str, model_name: str | None, root: str | Path = "runs") -> Path:
    """runs/{method}_{model short name}: where a run goes when --output_dir is not given."""
    from ..models.load import short_name

    return Path(root) / f"{method}_{short_name(model_name)}"


def _template_file(path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise UserError(f"--chat_template {path} is not a file; pass a Jinja template file (.jinja)")


def as_bool(value) -> bool:
    lowered = str(value).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got '{value}'")


def base_type(hint):
    """`int | None` -> int; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _typed(kind, value):
    """One value converted as its flag converts it (YAML reads `2e-4` as a string and `true` as a bool)."""
    if value is None:
        return None
    if kind is bool:
        return as_bool(value)
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        return [_typed(item, v) for v in (value if isinstance(value, list) else [value])]
    if kind is str:
        return str(value).lower() if isinstance(value, bool) else value if isinstance(value, (dict, list)) else str(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return kind(value)


def from_mapping(cls, values: dict, source: str = "config"):
    """Build a config from a mapping, rejecting unknown keys with the closest valid one; every value goes through
    the conversion its flag has, so a config file's types match the command line's."""
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise UserError(f"unknown key '{key}' in {source}{closest(key, known)}; "
                            "valid keys are the flags listed by --help")
    hints = typing.get_type_hints(cls)
    values = dict(values)
    for key, value in values.items():
        kind = base_type(hints[key])
        try:
            values[key] = _typed(kind, value)
        except (TypeError, ValueError):
            name = kind.__name__
            raise UserError(f"{key}: {value!r} in {source} is not a valid {name}; give a {name} as on the "
                            f"command line (--{key})") from None
    for f in fields(cls):
        if f.metadata.get("required") and values.get(f.name) is None:
            choices = f.metadata.get("choices")
            raise UserError(f"--{f.name} is required" + (f"; choose from: {', '.join(choices)}" if choices else ""))
    return cls(**values)


@dataclass
class EvalConfig:
    """Evaluate every run under --runs_dir, plus the base model, and write evaluation_results.json + a report."""

    runs_dir: str = opt("runs", "folder holding the runs (any sub-folder with adapter_config.json or unitune_run.json)")
    methods: list[str] | None = opt(None, "evaluate only runs of these methods (default: all)")
    runs: list[str] | None = opt(None, "evaluate only these runs: folder names under --runs_dir (default: all)")
    max_samples: int = opt(100, "score the first N rows of each test split")
    max_generation_samples: int = opt(3, "greedy generation samples to keep per run")
    skip_perplexity: bool = opt(False, "skip test_loss / perplexity on the SFT test split")
    base_model: str | None = opt(None, "base model for runs that do not record one (fallback only)")
    output: str | None = opt(None, "results file (default: <runs_dir>/evaluation_results.json)")
    dataset: str | None = opt(None, "evaluate on this dataset instead of each run's recorded one")
    sft_split: str = opt("test_sft", "split for test_loss / perplexity")
    prefs_split: str = opt("test_prefs", "split for preference accuracy")
    gen_split: str = opt("test_gen", "split for task accuracy, mean reward and generation samples")
    batch_size: int = opt(32, "batch size for scoring and generation")
    max_new_tokens: int = opt(48, "longest greedy generation, in tokens")
    skip_base: bool = opt(False, "do not evaluate the base model")
    reuse_base: bool = opt(True, "reuse the base model's results from an earlier evaluation with the same model files, "
                                 "data, settings, device and library versions (kept in $UNITUNE_HOME/eval-cache); "
                                 "false scores it again")
    report: bool = opt(True, "write report.html and report.md after evaluating")
    columns: str | None = opt(None, COLUMNS_HELP + " (default: each run's own mapping)")
    reward_funcs: list[str] | None = opt(None, "rewards for mean_reward: built-in names, path/file.py:function or "
                                               "package.module:function (default: the GRPO run's own)")
    trust_reward_code: bool = opt(False, "run reward code named in run records (file.py:function, module:function); "
                                         "without it such runs get mean_reward null: a runs folder from someone "
                                         "else must not run their Python")
    answer_format: str = opt("auto", ANSWER_FORMAT_HELP)
    lm_eval_tasks: list[str] | None = opt(None, "lm-evaluation-harness tasks to run on the base model and every run "
                                                "(needs the lm-eval extra), e.g. gsm8k or a task under "
                                                "--lm_eval_include_path")
    lm_eval_include_path: str | None = opt(None, "a folder of lm-eval task YAMLs (e.g. examples/lm_eval)")
    lm_eval_limit: int | None = opt(None, "lm-eval: only the first N examples of each task")

    @property
    def column_map(self) -> dict[str, str]:
        return parse_columns(self.columns)

    def __post_init__(self) -> None:
        _positive(self, "max_samples", "batch_size", "max_new_tokens", "lm_eval_limit")
        _answer_format(self)
        if self.lm_eval_include_path and not Path(self.lm_eval_include_path).is_dir():
            raise UserError(f"--lm_eval_include_path {self.lm_eval_include_path} is not a folder; point it at a "
                            "folder of lm-eval task YAMLs")
        parse_columns(self.columns)
        if self.max_generation_samples < 0:
            raise UserError("--max_generation_samples must be 0 or more")
        for method in self.methods or []:
            if method not in METHODS:
                raise UserError(f"unknown method '{method}' in --methods{closest(method, METHODS)}; "
                                f"choose from: {', '.join(METHODS)}")
        if self.output is None:
            self.output = str(Path(self.runs_dir) / "evaluation_results.json")


@dataclass
class CheckConfig:
    """Check a dataset before training: formats, the methods each split feeds, token lengths, problems."""

    dataset: str | None = opt(None, "Hub id, local folder or data file (default: the bundled demo data)")
    split: str | None = opt(None, "check only this split (default: every split)")
    method: str | None = opt(None, "exit non-zero unless every checked split can feed this method")
    model_name: str | None = opt(None, "model whose tokenizer and chat template measure the lengths "
                                       "(default: the embedded model)")
    max_length: int = opt(1024, "count rows longer than this many tokens")
    chat_template: str | None = opt(None, "Jinja chat template file to use instead of the tokenizer's")
    show_tokens: int = opt(0, "print the first N rows of each split as the trainer sees them, trained text "
                              "highlighted (with --json: a token_view per split)")
    json: bool = opt(False, "print the report as JSON")
    columns: str | None = opt(None, COLUMNS_HELP)

    @property
    def column_map(self) -> dict[str, str]:
        return parse_columns(self.columns)

    def __post_init__(self) -> None:
        _positive(self, "max_length")
        parse_columns(self.columns)
        _template_file(self.chat_template)
        if self.show_tokens < 0:
            raise UserError(f"--show_tokens must be 0 (off) or more, got {self.show_tokens}")
        if self.method is not None and self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}'{closest(self.method, METHODS)}; "
                            f"choose --method from: {', '.join(METHODS)}")


MERGE_DTYPES = ("float32", "bfloat16", "float16")
MERGE_BASES = ("quantized", "original")
MERGE_BASE_HELP = ("for a QLoRA run: merge into the dequantised 4-bit base it trained on (quantized: the model that "
                   "was trained and evaluated) or into the full-precision weights (original); LoRA runs ignore it")
GGUF_QUANTS = ("f16", "bf16", "q8_0", "f32")  # written by the gguf package
K_QUANTS = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_m", "q2_k")  # need llama.cpp's llama-quantize
EXPORT_FORMATS = ("gguf", "safetensors")


def _choice(value: str, flag: str, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {flag} '{value}'{closest(value, choices)}; choose from: {', '.join(choices)}")


@dataclass
class MergeConfig:
    """Merge a run's LoRA adapter into its base model and save a full safetensors model folder."""

    run: str = opt(None, "run folder holding the adapter", required=True)
    output: str = opt(None, "folder for the merged model", required=True)
    dtype: str = opt("float32", "dtype of the saved weights", choices=MERGE_DTYPES)
    merge_base: str = opt("quantized", MERGE_BASE_HELP, choices=MERGE_BASES)
    overwrite: bool = opt(False, "replace a non-empty --output folder (only once the new one is complete)")

    def __post_init__(self) -> None:
        _choice(self.dtype, "--dtype", MERGE_DTYPES)
        _choice(self.merge_base, "--merge_base", MERGE_BASES)


@dataclass
class ExportConfig:
    """Merge a run's adapter and export the model for llama.cpp and Ollama (GGUF + Modelfile) or as safetensors."""

    run: str = opt(None, "run folder holding the adapter", required=True)
    output: str = opt(None, "folder for the export (model-<quant>.gguf and a Modelfile)", required=True)
    format: str = opt("gguf", "gguf (llama.cpp, Ollama) or safetensors (a merged model folder)",
                      choices=EXPORT_FORMATS)
    quant: str | None = opt(None, "GGUF weights (default f16): f16, bf16, q8_0 or f32 (written here), or a k-quant "
                                  f"({', '.join(K_QUANTS)}) made by llama.cpp's quantizer (llama-quantize on PATH, "
                                  "or llama-cpp-python)")
    merge_base: str = opt("quantized", MERGE_BASE_HELP, choices=MERGE_BASES)
    overwrite: bool = opt(False, "replace an earlier export in --output (only once the new one is complete)")

    def __post_init__(self) -> None:
        _choice(self.format, "--format", EXPORT_FORMATS)
        if self.format == "safetensors" and self.quant is not None:
            raise UserError("--quant is for --format gguf; a safetensors export is the fp32 merge (for another "
                            "dtype, use unitune merge --dtype)")
        self.quant = (self.quant or "f16").lower()
        _choice(self.quant, "--quant", GGUF_QUANTS + K_QUANTS)
        _choice(self.merge_base, "--merge_base", MERGE_BASES)


@dataclass
class ChatConfig:
    """Chat with a model in the terminal, streaming; one prompt per line when stdin is not a terminal."""

    run: str | None = opt(None, "run folder, merged model folder, .gguf file or Hub id (default: the embedded model)")
    compare: str | None = opt(None, "a second model answering each prompt after the first: a run, folder, .gguf, "
                                    "or 'base' for --run's base model")
    max_new_tokens: int = opt(256, "longest reply, in tokens")
    temperature: float = opt(0.0, "sampling temperature; 0 is greedy")
    system: str | None = opt(None, "system prompt (also /system TEXT in the chat)")

    def __post_init__(self) -> None:
        _positive(self, "max_new_tokens")
        if self.temperature < 0:
            raise UserError(f"--temperature must be 0 (greedy) or more, got {self.temperature}")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
UI_AUTH_ENV = "UNITUNE_UI_AUTH"


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


@dataclass
class UiConfig:
    """A local web UI: train (a form built from the train flags), watch and compare runs, evaluate, chat, export."""

    host: str = opt("127.0.0.1", "address to listen on; anything but a loopback address needs --auth, since the UI "
                                 "trains, reads and writes files as you")
    port: int = opt(7860, "port to listen on")
    runs_dir: str = opt("runs", "folder holding the runs: the UI lists them, and new runs go there")
    auth: str | None = opt(None, f"USER:PASS asked for by the browser (or set {UI_AUTH_ENV}); required off loopback")

    def __post_init__(self) -> None:
        import os

        if not 0 < self.port < 65536:
            raise UserError(f"--port must be between 1 and 65535, got {self.port}")
        self.auth = self.auth or os.environ.get(UI_AUTH_ENV) or None
        if self.auth is not None:
            user, sep, password = self.auth.partition(":")
            if not (sep and user and password):
                raise UserError(f"--auth expects USER:PASS (also in {UI_AUTH_ENV}), e.g. --auth me:a-long-secret")
        if not is_loopback(self.host) and self.auth is None:
            raise UserError(f"--host {self.host} would open the UI to other machines without a password; add "
                            f"--auth USER:PASS (or set {UI_AUTH_ENV}), or keep the default --host 127.0.0.1")

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.auth is None:
            return None
        user, _, password = self.auth.partition(":")
        return user, password
