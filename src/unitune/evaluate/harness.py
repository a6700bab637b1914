"""lm-evaluation-harness from ``unitune eval --lm_eval_tasks``: the base model and every run (its adapter loaded
as PEFT) on the tasks people report, each task's main metrics merged into evaluation_results.json under
``"lm_eval"``. lm-eval is an optional extra: ``pip install "unitune[lm-eval]"``."""

from __future__ import annotations

from ..errors import UserError, first_line


def task_manager(include_path: str | None):
    """lm-eval's task registry (with the tasks under ``include_path``), or one line saying how to install it."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError('--lm_eval_tasks needs the lm-eval package; run `pip install "unitune[lm-eval]"` (or '
                        "`pip install lm-eval`)") from None
    return TaskManager(include_path=include_path)


def check_tasks(manager, tasks: list[str]) -> None:
    """Every task known to lm-eval (built in, or under --lm_eval_include_path), before any model loads."""
    from ..errors import closest

    for task in tasks:
        if task not in manager.all_tasks:
            raise UserError(f"unknown lm-eval task '{task}'{closest(task, manager.all_tasks)}; list them with "
                            "`lm-eval ls tasks`, or add a task folder with --lm_eval_include_path")


def main_metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric,filter: value}}: the numbers lm-eval reports per task, without stderr and names."""
    return {task: {key: float(value) for key, value in values.items()
                   if isinstance(value, (int, float)) and "_stderr" not in key and key != "sample_len"}
            for task, values in results.items()}


def run_tasks(manager, tasks: list[str], base_model: str, adapter: str | None, limit: int | None, batch_size: int,
              device: str, revision: str | None = None) -> dict[str, dict[str, float]]:
    """One model (base, or base + adapter; a Hub base at ``revision``) on the tasks; a dataset lm-eval cannot fetch
    is one line."""
    import lm_eval
    from transformers import AutoTokenizer

    args = {"pretrained": base_model, "dtype": "float32"}
    if revision:
        args["revision"] = revision
    if adapter:
        args["peft"] = adapter
    chat = bool(AutoTokenizer.from_pretrained(adapter or base_model).chat_template)
    try:
        out = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=tasks, limit=limit, task_manager=manager,
                                      batch_size=batch_size, device=device, apply_chat_template=chat,
                                      log_samples=False)
    except FileNotFoundError as err:
        raise UserError(f"lm-eval: a file is missing ({first_line(err, typed=False)}); a task's relative data_files "
                        "are read from the current folder (run examples/lm_eval from the repository root)") from None
    except (ConnectionError, OSError) as err:
        raise UserError(f"lm-eval could not fetch a dataset for {', '.join(tasks)} ({first_line(err)}); tasks "
                        "whose data live on the Hugging Face Hub need internet access; a local task (see "
                        "examples/lm_eval/) runs offline") from None
    return main_metrics(out["results"])
