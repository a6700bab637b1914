"""The settings of every command but ``train``: eval, check, merge, export, chat, ui, demo and report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, closest
from ..methods import METHODS
from .fields import (ANSWER_FORMAT_HELP, COLUMNS_HELP, _answer_format, _choice, _positive, _template_file, opt,
                     parse_columns)


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
    reuse_base: bool = opt(True, "reuse the base's results of an earlier evaluation with the same model files, data, "
                                 "settings, device and versions (in $UNITUNE_HOME/eval-cache); false scores it again")
    report: bool = opt(True, "write report.html and report.md after evaluating")
    columns: str | None = opt(None, COLUMNS_HELP + " (default: each run's own mapping)")
    reward_funcs: list[str] | None = opt(None, "rewards for mean_reward: built-in names, path/file.py:function or "
                                               "package.module:function (default: the GRPO run's own)")
    reward_model: str | None = opt(None, "a reward model for mean_reward, for every entry: Hub id, folder or RM run "
                                         "(--method rm; with --reward_funcs: added to them)")
    trust_reward_code: bool = opt(False, "run reward and tool code named in run records (file.py:function, "
                                         "module:function); without it, null mean_reward and refused tools: a runs "
                                         "folder from someone else must not run their Python")
    tools: list[str] | None = opt(None, "generate with these tools for every entry, as train --tools (default: the "
                                        "tools a run of this evaluation trained with)")
    environment: str | None = opt(None, "generate with this environment's tools for every entry (train --environment)")
    max_tool_calling_iterations: int = opt(3, "rounds of tool calls per reply, with tools")
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
        _positive(self, "max_samples", "batch_size", "max_new_tokens", "lm_eval_limit", "max_tool_calling_iterations")
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

    dataset: list[str] | None = opt(None, "Hub id, local folder or data file (default: the bundled demo data); "
                                          "several are checked one by one")
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
    sample: int = opt(0, "measure token lengths and render rows on a random N rows of each split (seeded), for "
                         "large data; every row is still read, counted and checked for unusable rows (0: all rows)")
    streaming: bool = opt(False, "read each split as a stream and check its first --sample rows (default 1000)")

    @property
    def column_map(self) -> dict[str, str]:
        return parse_columns(self.columns)

    def __post_init__(self) -> None:
        _positive(self, "max_length")
        parse_columns(self.columns)
        _template_file(self.chat_template)
        self.dataset = [self.dataset] if isinstance(self.dataset, str) else self.dataset or None
        for name in ("show_tokens", "sample"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be 0 (off) or more, got {getattr(self, name)}")
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


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # the names the UI's Host check takes on a loopback bind


UI_AUTH_ENV = "UNITUNE_UI_AUTH"  # USER:PASS, for --auth without a file (the UI's jobs never inherit it)


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only: an address is parsed, a name is resolved and counts only when
    every address it names is a loopback one ("127.evil.com" is a name like any other)."""
    import ipaddress
    import socket

    def loopback(address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])  # a scoped IPv6 address: fe80::1%eth0
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    name = host.strip("[]")
    try:
        return loopback(name)
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):  # unknown names (socket.gaierror is an OSError)
        return False
    return bool(found) and all(loopback(address) for address in found)


def read_credentials(auth: str | None) -> tuple[str, str] | None:
    """USER:PASS from the --auth file, else from $UNITUNE_UI_AUTH; never from the command line itself, which `ps`
    and shell history show to others."""
    import os

    if auth is None:
        text, where = os.environ.get(UI_AUTH_ENV) or None, f"${UI_AUTH_ENV}"
        if text is None:
            return None
    else:
        try:
            path = Path(auth).expanduser()
        except RuntimeError:  # ~nosuchuser
            path = Path(auth)
        if not path.is_file():
            if ":" in auth:
                raise UserError(f"--auth takes a file holding USER:PASS, not the password itself (ps and shell history "
                                f"show the command line); write it to a file for --auth FILE, or set {UI_AUTH_ENV}")
            raise UserError(f"--auth {auth}: no such file; give a file holding USER:PASS, or set {UI_AUTH_ENV}")
        try:
            text, where = path.read_text(encoding="utf-8"), f"--auth {auth}"
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read --auth {auth} ({getattr(err, 'strerror', None) or 'not UTF-8 text'}); "
                            "give a readable file holding USER:PASS") from None
    user, sep, password = text.strip().partition(":")
    if not (sep and user and password):
        raise UserError(f"{where} must hold USER:PASS, e.g. me:a-long-secret")
    return user, password


@dataclass
class UiConfig:
    """A local web UI: train (a form built from the train flags), watch and compare runs, evaluate, chat, export.
    It prints one URL carrying a secret token; a request without the token (or the --auth password) is refused."""

    host: str = opt("127.0.0.1", "address to listen on; off loopback, other machines need the printed URL (its "
                                 "token) or the --auth password, since the UI trains, reads and writes files as you")
    port: int = opt(7860, "port to listen on")
    runs_dir: str = opt("runs", "folder holding the runs: the UI lists them, and new runs go there")
    auth: str | None = opt(None, f"a file holding USER:PASS, asked for by the browser instead of the token (or set "
                                 f"{UI_AUTH_ENV}=USER:PASS); never the password itself, which ps would show")
    no_token: bool = opt(False, "serve without the token, on a loopback --host only: then every local user, and any "
                                "local process, can drive the UI")
    allow_code: bool = opt(False, "let the page name reward functions or tools in files or modules (file.py:fn, "
                                  "module:fn), which the trainer runs as you; built-in ones need no flag")
    allow_dir: list[str] | None = opt(None, "folders besides the runs folder the page may read data, models and chat "
                                            "templates from")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise UserError(f"--port must be between 1 and 65535, got {self.port}")
        self._credentials = read_credentials(self.auth)
        if self.no_token and self._credentials is not None:
            raise UserError("--no_token and --auth (or $UNITUNE_UI_AUTH) together: choose one")
        for folder in self.allow_dir or []:
            try:
                found = Path(folder).expanduser().is_dir()
            except (OSError, RuntimeError, ValueError):  # ~nosuchuser, a NUL
                found = False
            if not found:
                raise UserError(f"--allow_dir {folder} is not a folder; give folders the page may read from")
        if self.no_token and not is_loopback(self.host):
            raise UserError(f"--no_token would open the UI on --host {self.host} to anyone who reaches it; keep the "
                            "token (open the printed URL), use --auth FILE, or serve on --host 127.0.0.1")

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The --auth user and password (None: the token guards the UI, or nothing with --no_token)."""
        return self._credentials


@dataclass
class DemoConfig:
    """Train the seed's five methods on the embedded model and bundled data, evaluate every run and the base model,
    and write the report (the main job)."""

    runs_dir: str = opt("runs/demo", "where the demo runs, results and report go (its own folder, so runs of yours "
                                     "are not re-evaluated)")
    methods: list[str] | None = opt(None, "only these methods, or all (default: the seed's five: sft dpo orpo kto "
                                          "grpo; all adds rloo, rm then GRPO rewarded by it, distill from sft, tools)")
    max_samples: int = opt(100, "score each run and the base on the first N rows of each test split (fewer: a "
                                "quicker, noisier table)")

    def __post_init__(self) -> None:
        _positive(self, "max_samples")
        for method in self.methods or []:
            _choice(method, "--methods", (*METHODS, "tools", "all"))


@dataclass
class ReportConfig:
    """Write report.html and report.md from evaluation_results.json."""

    runs_dir: str = opt("runs", "folder holding the runs and evaluation_results.json")
    results: str | None = opt(None, "results file (default: <runs_dir>/evaluation_results.json)")


@dataclass
class EnvConfig:
    """Print the environment for bug reports: versions against the tested ones, devices, CPU flags and caches."""

    reprobe: bool = opt(False, "measure this machine's speed probes again (the CPU dtype probe, packed decode "
                               "weights) instead of using the kept ones (they are kept 30 days), and print them")
