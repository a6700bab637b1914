"""The comparison report: report.html (self-contained: charts are embedded PNGs, no JS) and report.md."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..errors import UserError
from ..files import write_text_atomic
from .charts import DIRECTION, LOWER, chart_images

TABLE_KEYS = ("method", "test_loss", "perplexity", "preference_accuracy", "loss_margin", "task_accuracy",
              "mean_reward", "initial_train_loss", "final_train_loss", "final_eval_loss", "total_steps",
              "training_time_seconds", "evaluated_at")
REWARD_MODEL_KEYS = ("reward_accuracy", "reward_margin")  # RM runs' columns, after mean_reward where a run has them
TOOL_KEYS = ("tool_calls", "tool_failures")  # an evaluation with tools: calls made and failed over its replies
GONE = "run folder gone"  # an entry kept from an earlier evaluation whose run was deleted or moved since


def load_results(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"no results at {path}; run `unitune eval` first (or pass --results)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err}); rerun `unitune eval`") from None


def not_evaluated(result: dict) -> str | None:
    """Why an entry has no metrics: the error it hit, or why the evaluator skipped it (an unfinished run)."""
    if "error" in result:
        return f"error: {result['error']}"
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    return None


def notes(entries: list[tuple[str, dict]]) -> list[str]:
    """Lines saying what made mean_reward for each entry, or why it was not computed, and how answers were read."""
    lines = [f"{name}: mean_reward {result['mean_reward_note']}" if result.get("mean_reward_note") else
             f"{name}: mean_reward = {result['mean_reward_funcs']}" for name, result in entries
             if result.get("mean_reward_note") or result.get("mean_reward_funcs")]
    formats = sorted({result["answer_format"] for _, result in entries if result.get("answer_format")})
    if formats:
        lines.append(f"task_accuracy: answers checked as {', '.join(formats)} (unitune.answers.check_answer)")
    return lines


def ordered(results: dict) -> list[tuple[str, dict]]:
    """Base first, then runs by name; errors and skipped runs last."""
    good = sorted(((k, v) for k, v in results.items() if not not_evaluated(v)), key=lambda kv: (kv[0] != "base", kv[0]))
    return good + sorted((k, v) for k, v in results.items() if not_evaluated(v))


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def gone(name: str, result: dict, runs: Path | None) -> bool:
    """Whether an entry's run folder no longer exists (its results are kept: they may be all that is left of it)."""
    if name == "base" or result.get("method") == "teacher" or not result.get("model_path"):  # models, not runs
        return False
    return not Path(result["model_path"]).exists() and not (runs is not None and (runs / name).is_dir())


def table_keys(entries: list[tuple[str, dict]]) -> tuple[str, ...]:
    """The table's columns: TABLE_KEYS, with the reward model's and the tools' columns where an entry has them."""
    extra = tuple(key for group in (REWARD_MODEL_KEYS, TOOL_KEYS)
                  if any(result.get(k) is not None for _, result in entries for k in group) for key in group)
    at = TABLE_KEYS.index("mean_reward") + 1
    return TABLE_KEYS[:at] + extra + TABLE_KEYS[at:]


def markdown_table(entries: list[tuple[str, dict]], runs: Path | None = None) -> str:
    keys = table_keys(entries)
    lines = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, result in entries:
        label = f"{name} ({GONE})" if gone(name, result, runs) else name
        if not_evaluated(result):  # the reason spans the metrics; the date keeps its column
            lines.append(f"| {label} | {not_evaluated(result)} |" + " |" * (len(keys) - 2)
                         + f" {fmt(result.get('evaluated_at'))} |")
        else:
            lines.append(f"| {label} | " + " | ".join(fmt(result.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def best_values(entries: list[tuple[str, dict]]) -> dict[str, float]:
    """The best value of each column that has a direction, over the evaluated entries."""
    best = {}
    for key, way in DIRECTION.items():
        values = [r[key] for _, r in entries if not not_evaluated(r) and isinstance(r.get(key), (int, float))]
        if values:
            best[key] = min(values) if way == LOWER else max(values)
    return best


def html_table(entries: list[tuple[str, dict]], runs: Path | None = None) -> str:
    def header(key: str) -> str:
        way = DIRECTION.get(key)
        return (f"<th title='{way}'>{html.escape(key)} {way[0]}</th>" if way else f"<th>{html.escape(key)}</th>")

    best, keys = best_values(entries), table_keys(entries)
    head = "<th>run</th>" + "".join(header(k) for k in keys)
    body = []
    for name, result in entries:
        if not_evaluated(result):
            cells = (f"<td colspan='{len(keys) - 1}' class='error'>{html.escape(not_evaluated(result))}</td>"
                     f"<td>{html.escape(fmt(result.get('evaluated_at')))}</td>")
        else:
            cells = "".join(f"<td class='best'>{html.escape(fmt(result.get(k)))}</td>"
                            if k in best and result.get(k) == best[k] else f"<td>{html.escape(fmt(result.get(k)))}</td>"
                            for k in keys)
        label = f"{html.escape(name)} <small>(before training)</small>" if name == "base" else html.escape(name)
        label += f" <small>({GONE})</small>" if gone(name, result, runs) else ""
        body.append(f"<tr{' class=base' if name == 'base' else ''}><th>{label}</th>{cells}</tr>")
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            "<p class='note'>↓ lower is better, ↑ higher is better; the best value of each is in bold. evaluated_at: "
            "when each entry was last evaluated (evaluating some runs keeps the others' results).</p>")


def lm_eval_rows(entries: list[tuple[str, dict]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """lm-eval's metrics as (columns "task metric", rows of (entry, cells)); no columns when lm-eval did not run."""
    columns = sorted({f"{task} {metric}" for _, result in entries
                      for task, metrics in (result.get("lm_eval") or {}).items() for metric in metrics})
    rows = []
    for name, result in entries:
        values = {f"{task} {metric}": value for task, metrics in (result.get("lm_eval") or {}).items()
                  for metric, value in metrics.items()}
        if values:
            rows.append((name, [fmt(values.get(column)) for column in columns]))
    return columns, rows


def lm_eval_html(entries: list[tuple[str, dict]]) -> str:
    columns, rows = lm_eval_rows(entries)
    if not columns:
        return ""
    head = "<th>run</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{html.escape(v)}</td>" for v in cells)
                   + "</tr>" for name, cells in rows)
    return (f"<h2>lm-evaluation-harness</h2><div class='scroll'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def lm_eval_markdown(entries: list[tuple[str, dict]]) -> str:
    columns, rows = lm_eval_rows(entries)
    if not columns:
        return ""
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n## lm-evaluation-harness\n\n" + "\n".join(lines) + "\n"


def sources_text(dataset) -> str | None:
    """A run's --dataset as written: one source, or several joined with '+' (a mix)."""
    return " + ".join(map(str, dataset)) if isinstance(dataset, list) else dataset


def loss_row(method: str | None, settings: dict) -> dict:
    """The loss a run used, where the method has a choice: DPO's loss type; GRPO's, with its importance sampling
    level (GSPO: sequence). The defaults are TRL's."""
    if method == "dpo":
        return {"loss": settings.get("loss_type") or "sigmoid"}
    if method == "grpo":
        return {"loss / importance sampling": f"{settings.get('loss_type') or 'dapo'} / "
                                              f"{settings.get('importance_sampling_level') or 'token'}"}
    return {}


def settings_sections(entries: list[tuple[str, dict]]) -> str:
    """A collapsible block per run with the settings that made it differ, from its unitune_run.json."""
    blocks = []
    for name, result in entries:
        path = Path(result.get("model_path") or "") / "unitune_run.json"
        if name == "base" or not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            settings, hardware = record.get("settings") or {}, record.get("hardware") or {}
        except (OSError, ValueError, AttributeError):
            continue
        rows = {"method": record.get("method"), "base model": record.get("model_name") or record.get("base_model"),
                "dataset": f"{sources_text(settings.get('dataset')) or record.get('dataset')} ("
                           f"{record.get('train_split')}, "
                           f"{record.get('train_rows')} rows)",
                "learning rate": settings.get("learning_rate"), "effective batch": record.get("effective_batch"),
                "steps": record.get("global_step"), "LoRA r / alpha / dropout":
                    f"{settings.get('lora_r')} / {settings.get('lora_alpha')} / {settings.get('lora_dropout')}",
                "dtype / QLoRA": f"{hardware.get('dtype')} / {hardware.get('qlora')}",
                "wall time (s)": record.get("wall_time_seconds"), **loss_row(record.get("method"), settings)}
        cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(fmt(v))}</td></tr>" for k, v in rows.items())
        blocks.append(f"<details><summary>{html.escape(name)}</summary><table>{cells}</table></details>")
    return "".join(blocks) or "<p>No run records.</p>"


def samples_table(entries: list[tuple[str, dict]]) -> str:
    good = [(n, r) for n, r in entries if r.get("generation_samples")]
    if not good:
        return "<p>No generation samples.</p>"
    prompts = [s["prompt"] for s in good[0][1]["generation_samples"]]
    head = "<th>prompt</th>" + "".join(f"<th>{html.escape(n)}</th>" for n, _ in good)
    rows = []
    for i, prompt in enumerate(prompts):
        cells = "".join(f"<td><pre>{html.escape(r['generation_samples'][i]['response'])}</pre></td>"
                        if i < len(r["generation_samples"]) else "<td></td>" for _, r in good)
        rows.append(f"<tr><td><pre>{html.escape(prompt)}</pre></td>{cells}</tr>")
    return (f"<div class='scroll'><table class='samples'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div>")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;
margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
pre{white-space:pre-wrap;margin:0;max-width:28em}.error{color:#b00}.charts img{margin:4px;border:1px solid #eee;
max-width:100%}.scroll{overflow-x:auto;max-width:100%}.best{font-weight:bold}tr.base{background:#f3f3f3}
.note{color:#555;font-size:13px}details{margin:.3em 0}summary{cursor:pointer}"""


def write_report(runs_dir: str, results_path: str | None = None) -> Path:
    runs = Path(runs_dir)
    results = load_results(Path(results_path) if results_path else runs / "evaluation_results.json")
    entries = ordered(results)
    images = chart_images(entries)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>unitune report</title><style>{STYLE}</style></head><body><h1>unitune report</h1>"
            f"<p>{len(entries)} entries from {html.escape(str(runs))}; the grey bar and row are the base model."
            "</p><h2>Metrics</h2>" + html_table(entries, runs) +
            "".join(f"<p class='note'>{html.escape(line)}</p>" for line in notes(entries)) + lm_eval_html(entries) +
            "<h2>Charts</h2><div class='charts'>" + "".join(images) + "</div>"
            "<h2>Run settings</h2>" + settings_sections(entries) +
            "<h2>Generation samples</h2>" + samples_table(entries) + "</body></html>")
    runs.mkdir(parents=True, exist_ok=True)
    write_text_atomic(runs / "report.html", page)
    write_text_atomic(runs / "report.md", "# unitune report\n\n" + markdown_table(entries, runs) + "\n"
                      + "".join(f"\n{line}\n" for line in notes(entries)) + lm_eval_markdown(entries))
    return runs / "report.html"
