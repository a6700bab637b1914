"""The comparison report: report.html (self-contained: charts are embedded PNGs, no JS) and report.md."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from ..errors import UserError
from ..files import write_text_atomic

TABLE_KEYS = ("method", "test_loss", "perplexity", "preference_accuracy", "loss_margin", "task_accuracy",
              "mean_reward", "initial_train_loss", "final_train_loss", "final_eval_loss", "total_steps",
              "training_time_seconds")
BAR_KEYS = ("test_loss", "perplexity", "preference_accuracy", "loss_margin", "task_accuracy", "mean_reward")
# Which way is better, for the table headers, the bold best values and the chart titles.
LOWER, HIGHER = "↓ lower is better", "↑ higher is better"
DIRECTION = {"test_loss": LOWER, "perplexity": LOWER, "preference_accuracy": HIGHER, "loss_margin": HIGHER,
             "task_accuracy": HIGHER, "mean_reward": HIGHER, "final_train_loss": LOWER, "final_eval_loss": LOWER}
# The training logs overlaid on one axis per key (runs differ in steps, so against progress, 0-100%).
OVERLAY_KEYS = (("loss", "training loss", LOWER), ("eval_loss", "eval loss", LOWER), ("reward", "reward", HIGHER),
                ("eval_task_accuracy", "eval task accuracy", HIGHER), ("eval_mean_reward", "eval mean reward", HIGHER))


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def loss_curves(entries: list[tuple[str, dict]]) -> str | None:
    """One panel per run, against its own steps (below the overlay)."""
    runs = run_histories(entries)
    if not runs:
        return None
    plt = _pyplot()
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, history) in zip(axes.flat, runs):
        for key, style in (("loss", "-"), ("eval_loss", "o--")):
            points = [(e["step"], e[key]) for e in history if key in e]
            if points:
                ax.plot(*zip(*points), style, label=key.replace("_", " "))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def run_histories(entries: list[tuple[str, dict]]) -> list[tuple[str, list[dict]]]:
    """Each run's log_history from its trainer_state.json (the base and runs without one are left out)."""
    runs = []
    for name, result in entries:
        state = Path(result.get("model_path") or "") / "trainer_state.json"
        if name != "base" and state.is_file():
            runs.append((name, json.loads(state.read_text()).get("log_history", [])))
    return runs


def overlay_keys(runs: list[tuple[str, list[dict]]]) -> list[tuple[str, str, str]]:
    """The logged keys some run has, each drawn as one chart: (key, title, direction)."""
    return [(key, title, way) for key, title, way in OVERLAY_KEYS
            if any(key in e for _, history in runs for e in history)]


def loss_overlay(entries: list[tuple[str, dict]]) -> str | None:
    """One chart per logged key (training and eval loss, GRPO reward, the --eval_generation metrics) with every run
    on it, against progress."""
    return overlay_png(run_histories(entries), by_progress=True)


def overlay_png(runs: list[tuple[str, list[dict]]], by_progress: bool) -> str | None:
    """The overlay chart of these (name, log_history) runs as base64 PNG, against training progress (%) or steps
    (the web UI draws runs as they train with it)."""
    keys = overlay_keys(runs)
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.2), squeeze=False)
    for ax, (key, title, way) in zip(axes.flat, keys):
        for name, history in runs:
            points = [(e["step"], e[key]) for e in history if key in e and "step" in e]
            scale = 100 / (max((e.get("step", 0) for e in history), default=0) or 1) if by_progress else 1
            if points:
                ax.plot([scale * s for s, _ in points], [v for _, v in points], "o-" if len(points) < 4 else "-",
                        label=name, markersize=3)
        ax.set_title(f"{title} ({way})", fontsize=10)
        ax.set_xlabel("training progress (%)" if by_progress else "step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def metric_bars(entries: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    plt = _pyplot()
    charts = []
    for key in BAR_KEYS:
        points = [(name, result[key]) for name, result in entries if result.get(key) is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(max(3.5, 0.7 * len(points) + 1.2), 2.6))
        colors = ["#888888" if name == "base" else "#3b75af" for name, _ in points]
        ax.bar([n for n, _ in points], [v for _, v in points], color=colors)
        ax.set_title(f"{key.replace('_', ' ')} ({DIRECTION[key]})", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        fig.tight_layout()
        charts.append((key, _png(fig)))
        plt.close(fig)
    return charts


def markdown_table(entries: list[tuple[str, dict]]) -> str:
    lines = ["| run | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 1) + "|"]
    for name, result in entries:
        if not_evaluated(result):
            lines.append(f"| {name} | {not_evaluated(result)} |" + " |" * (len(TABLE_KEYS) - 1))
        else:
            lines.append(f"| {name} | " + " | ".join(fmt(result.get(k)) for k in TABLE_KEYS) + " |")
    return "\n".join(lines)


def best_values(entries: list[tuple[str, dict]]) -> dict[str, float]:
    """The best value of each column that has a direction, over the evaluated entries."""
    best = {}
    for key, way in DIRECTION.items():
        values = [r[key] for _, r in entries if not not_evaluated(r) and isinstance(r.get(key), (int, float))]
        if values:
            best[key] = min(values) if way == LOWER else max(values)
    return best


def html_table(entries: list[tuple[str, dict]]) -> str:
    def header(key: str) -> str:
        way = DIRECTION.get(key)
        return (f"<th title='{way}'>{html.escape(key)} {way[0]}</th>" if way else f"<th>{html.escape(key)}</th>")

    best = best_values(entries)
    head = "<th>run</th>" + "".join(header(k) for k in TABLE_KEYS)
    body = []
    for name, result in entries:
        if not_evaluated(result):
            cells = f"<td colspan='{len(TABLE_KEYS)}' class='error'>{html.escape(not_evaluated(result))}</td>"
        else:
            cells = "".join(f"<td class='best'>{html.escape(fmt(result.get(k)))}</td>"
                            if k in best and result.get(k) == best[k] else f"<td>{html.escape(fmt(result.get(k)))}</td>"
                            for k in TABLE_KEYS)
        label = f"{html.escape(name)} <small>(before training)</small>" if name == "base" else html.escape(name)
        body.append(f"<tr{' class=base' if name == 'base' else ''}><th>{label}</th>{cells}</tr>")
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            "<p class='note'>↓ lower is better, ↑ higher is better; the best value of each is in bold.</p>")


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
                "dataset": f"{settings.get('dataset') or record.get('dataset')} ({record.get('train_split')}, "
                           f"{record.get('train_rows')} rows)",
                "learning rate": settings.get("learning_rate"), "effective batch": record.get("effective_batch"),
                "steps": record.get("global_step"), "LoRA r / alpha / dropout":
                    f"{settings.get('lora_r')} / {settings.get('lora_alpha')} / {settings.get('lora_dropout')}",
                "dtype / QLoRA": f"{hardware.get('dtype')} / {hardware.get('qlora')}",
                "wall time (s)": record.get("wall_time_seconds")}
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


def chart_images(entries: list[tuple[str, dict]]) -> list[str]:
    """The report's charts as <img> tags: the training curves of all runs, one bar chart per metric, the loss curves
    of each run (the HTML report and the web UI show the same)."""
    overlay, curves = loss_overlay(entries), loss_curves(entries)
    return ([f"<img alt='training curves, all runs' src='data:image/png;base64,{overlay}'>"] if overlay else []) + [
        f"<img alt='{key}' src='data:image/png;base64,{data}'>" for key, data in metric_bars(entries)] + (
        [f"<img alt='loss curves per run' src='data:image/png;base64,{curves}'>"] if curves else [])


def write_report(runs_dir: str, results_path: str | None = None) -> Path:
    runs = Path(runs_dir)
    results = load_results(Path(results_path) if results_path else runs / "evaluation_results.json")
    entries = ordered(results)
    images = chart_images(entries)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>unitune report</title><style>{STYLE}</style></head><body><h1>unitune report</h1>"
            f"<p>{len(entries)} entries from {html.escape(str(runs))}; the grey bar and row are the base model."
            "</p><h2>Metrics</h2>" + html_table(entries) +
            "".join(f"<p class='note'>{html.escape(line)}</p>" for line in notes(entries)) + lm_eval_html(entries) +
            "<h2>Charts</h2><div class='charts'>" + "".join(images) + "</div>"
            "<h2>Run settings</h2>" + settings_sections(entries) +
            "<h2>Generation samples</h2>" + samples_table(entries) + "</body></html>")
    runs.mkdir(parents=True, exist_ok=True)
    write_text_atomic(runs / "report.html", page)
    write_text_atomic(runs / "report.md", "# unitune report\n\n" + markdown_table(entries) + "\n"
                      + "".join(f"\n{line}\n" for line in notes(entries)) + lm_eval_markdown(entries))
    return runs / "report.html"
