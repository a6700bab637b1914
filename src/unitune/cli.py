"""The `unitune` command line. Flags come from the config dataclasses (unitune.config), nowhere else.

    unitune train --method sft            # embedded model + bundled data
    unitune train --config examples/dpo.yaml --learning_rate 1e-5
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from .config import (ChatConfig, CheckConfig, DemoConfig, EnvConfig, EvalConfig, ExportConfig, MergeConfig,
                     ReportConfig, TrainConfig, UiConfig, as_bool, base_type, from_mapping)
from .console import quiet_libraries
from .errors import Interrupted, UserError, closest
from .methods import METHODS


def _bool(text: str) -> bool:
    try:
        return as_bool(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become one-line UserErrors (with a suggestion for unknown flags)."""

    def error(self, message: str):
        raise UserError(f"{message}; see `{self.prog} --help`")


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field; absent flags stay absent (SUPPRESS) so YAML values can fill them."""
    hints = typing.get_type_hints(cls)
    group = parser
    for f in fields(cls):
        kind = base_type(hints[f.name])
        meta = f.metadata
        if "section" in meta:
            group = parser.add_argument_group(meta["section"])
        default = None if f.default is MISSING else f.default
        shown = "" if default is None or "(default" in meta["help"] else f" [default: {default}]"
        kwargs: dict = {"default": argparse.SUPPRESS, "help": (meta["help"] + shown).replace("%", "%%")}
        if kind is bool:
            kwargs.update(nargs="?", const=True, type=_bool, metavar="BOOL")
        elif "const" in meta:
            kwargs.update(nargs="?", const=meta["const"], choices=meta.get("choices"))
        elif typing.get_origin(kind) is list:
            kwargs.update(nargs="+", type=typing.get_args(kind)[0])
        else:
            kwargs.update(type=kind, choices=None if f.name == "method" else meta.get("choices"))
        names = [f"--{f.name}", *meta.get("aliases", ())]
        group.add_argument(*names, dest=f.name, **kwargs)


def load_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}; check the --config path") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where} ({getattr(err, 'problem', err)}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of flag: value, got {type(data).__name__}")
    return data


def parse_config(cls, argv: list[str], prog: str):
    """CLI flags over YAML (--config) over the dataclass defaults."""
    parser = _Parser(prog=prog, description=cls.__doc__, allow_abbrev=False, usage="%(prog)s [--config FILE] [flags]")
    parser.add_argument("--config", help="YAML file of flags; flags on the command line override it")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (implies --verbose)")
    parser.add_argument("--verbose", action="store_true", help="show library warnings and loading bars too")
    add_config_flags(parser, cls)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        options = [o for a in parser._actions for o in a.option_strings]
        raise UserError(f"unknown flag '{flag}'{closest(flag.split('=')[0], options)}; see `{prog} --help`")
    values = vars(args)
    config_path = values.pop("config")
    values.pop("debug")
    values.pop("verbose")
    merged = (load_yaml(config_path) if config_path else {}) | values
    return from_mapping(cls, merged, config_path or "flags")


def _train(cfg: TrainConfig, prog: str) -> int:
    from .machine import is_main_process
    from .train.run import run_training

    out = run_training(cfg)
    if not cfg.dry_run and is_main_process():
        print(f"unitune: next: {prog.split()[0]} eval --runs_dir {shell_path(out.parent)}  (scores this run, "
              "the base model and the runs beside it, and writes a report)")
    return 0


def shell_path(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it, quoted when needed."""
    try:
        path = path.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.quote(str(path))


def _demo(cfg: DemoConfig, prog: str) -> int:
    from .demo import run_demo

    run_demo(cfg.runs_dir, cfg.methods, cfg.max_samples)
    return 0


def _eval(cfg: EvalConfig, prog: str) -> int:
    from .evaluate.run import run_eval

    run_eval(cfg)
    if cfg.report:
        from .evaluate.report import write_report

        print(f"unitune eval: done; open {write_report(cfg.runs_dir, cfg.output)} in a browser to compare the runs")
    return 0


def _report(cfg: ReportConfig, prog: str) -> int:
    from .evaluate.report import write_report

    print(f"unitune report: wrote {write_report(cfg.runs_dir, cfg.results)} (and report.md beside it)")
    return 0


def _check(cfg: CheckConfig, prog: str) -> int:
    from .data.check import render, render_tokens, run_check

    checked = [run_check(cfg, name) for name in cfg.dataset or [None]]  # several sources: each one's report
    ok = all(found for _, found in checked)
    if cfg.json:
        reports = [report for report, _ in checked]
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False))
        return 0 if ok else 1
    for number, (report, _) in enumerate(checked):
        print(("\n" if number else "") + render(report, cfg.method))
        if cfg.show_tokens:
            print(render_tokens(report, color=sys.stdout.isatty()))
    return 0 if ok else 1


def _merge(cfg: MergeConfig, prog: str) -> int:
    from .deploy.merge import merge_run

    merge_run(cfg)
    return 0


def _export(cfg: ExportConfig, prog: str) -> int:
    from .deploy.export import run_export

    path = run_export(cfg)
    if path.suffix == ".gguf":
        print(f"unitune: next: {prog.split()[0]} chat --run {shell_path(path)}  (or llama.cpp: llama-cli -m "
              f"{shell_path(path)}; Ollama: ollama create NAME -f {shell_path(path.parent / 'Modelfile')})")
    return 0


def _chat(cfg: ChatConfig, prog: str) -> int:
    from .deploy.chat import run_chat

    run_chat(cfg)
    return 0


def _ui(cfg: UiConfig, prog: str) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs Gradio, which is not installed; install it with "
                        "pip install 'unitune[ui]'") from None
    from .ui import run_ui

    run_ui(cfg)
    return 0


def _env(cfg: EnvConfig, prog: str) -> int:
    from .env import report

    print(report(reprobe=cfg.reprobe))
    return 0


@dataclass(frozen=True)
class Command:
    run: Callable  # (the parsed config, prog) -> exit status
    config: type  # its config dataclass: the flags, the YAML keys and --help
    summary: str  # what it does, shown by `unitune --help`


_METHOD_NAMES = ", ".join(m.upper() for m in list(METHODS)[:-1]) + f" and {list(METHODS)[-1].upper()}"

COMMANDS = {
    "train": Command(_train, TrainConfig, f"fine-tune a model with {_METHOD_NAMES} (LoRA, or QLoRA on 4-bit "
                                          "weights)"),
    "eval": Command(_eval, EvalConfig, "evaluate every run in a runs folder and the base model; write the results "
                                       "and a report"),
    "check": Command(_check, CheckConfig, "check a dataset before training: its format, the methods it feeds, token "
                                          "lengths, problems"),
    "report": Command(_report, ReportConfig, "write report.html and report.md from evaluation_results.json"),
    "merge": Command(_merge, MergeConfig, "merge a run's LoRA adapter into its base model: one safetensors model "
                                          "folder"),
    "export": Command(_export, ExportConfig, "export a run for llama.cpp and Ollama: a GGUF file (f16, bf16, q8_0, "
                                             "k-quants) and a Modelfile"),
    "chat": Command(_chat, ChatConfig, "chat with a run, a merged model, a GGUF or the base model in the terminal (or "
                                       "from a pipe)"),
    "ui": Command(_ui, UiConfig, "a local web UI: train from a form, watch live loss curves, evaluate, chat side by "
                                 "side, export"),
    "demo": Command(_demo, DemoConfig, "the main job: train the seed's five methods on the embedded model and bundled "
                                       "data, then evaluate and report"),
    "env": Command(_env, EnvConfig, "print versions (against the tested ones), devices, CPU flags and caches, for bug "
                                    "reports"),
}

EXAMPLES = """examples:
  unitune demo                                            # the whole pipeline, offline, on a CPU
  unitune train --method dpo --dataset prefs.jsonl --output_dir runs/dpo
  unitune eval --runs_dir runs                            # compare every run in runs/
  unitune export --run runs/dpo --output exported/dpo     # a GGUF for llama.cpp/Ollama, with a Modelfile
  unitune chat --run runs/dpo --compare base              # talk to it beside its base model
  unitune ui                                              # all of it in a browser, at http://127.0.0.1:7860"""


def usage(prog: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} COMMAND [flags]", "",
             f"Post-train causal LMs with {_METHOD_NAMES}, then evaluate and compare the runs.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", EXAMPLES, "", "options:", "  -h, --help  this help", "  --version   unitune's version and the "
              "libraries it runs on", "",
              f"`{prog} COMMAND --help` lists a command's flags; the README explains every command and output."]
    return "\n".join(lines)


def version_line() -> str:
    from .machine import library_versions

    found = library_versions()
    libs = ", ".join(f"{name} {found[name] or 'not installed'}" for name in ("trl", "peft", "transformers", "torch"))
    return f"unitune {found['unitune']} ({libs})"


def main(argv: list[str] | None = None, prog: str = "unitune") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    verbose = debug or "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    if argv and argv[0] == "--version":
        print(version_line())
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog))
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"unitune: error: unknown command '{argv[0]}'{closest(argv[0], COMMANDS)}; "
              f"use one of: {', '.join(COMMANDS)} (see `{prog} --help`)", file=sys.stderr)
        return 2
    if not verbose:
        quiet_libraries(loads_models=argv[0] not in ("report", "env"))
    return run_command(COMMANDS[argv[0]], argv[1:], f"{prog} {argv[0]}", debug)


def run_command(command: Command, argv: list[str], prog: str, debug: bool) -> int:
    """Parse one command's flags and run it; user errors print as one line (traceback only with --debug)."""
    try:
        return command.run(parse_config(command.config, argv, prog), prog)
    except UserError as err:
        if debug:
            raise
        print(f"{prog.split()[0]}: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"{prog.split()[0]}: {stop}", file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:
        print(f"{prog.split()[0]}: interrupted", file=sys.stderr)
        return 130


def entry_point(command: str):
    """For the seed-compatible scripts in code/: `python code/SFT.py ...` == `unitune train ...`."""
    argv = [command, *sys.argv[1:]]
    sys.exit(main(argv))
