"""The comparison report: report.html (self-contained: charts are embedded PNGs, no JS) and report.md."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .errors import UserError
from .runs import write_text_atomic

TABLE_KEYS = ("method", "test_loss", "perplexity", "preference_accuracy", "loss_margin", "task_accuracy",
              "mean_reward", "initial_train_loss", "final_train_loss", "final_eval_loss", "total_steps",
              "training_time_seconds")
BAR_KEYS = ("test_loss", "perplexity", "preference_accuracy", "loss_margin", "task_accuracy", "mean_reward")


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
    """Lines explaining empty cells: why a metric was not computed for an entry."""
    return [f"{name}: mean_reward {result['mean_reward_note']}" for name, result in entries
            if result.get("mean_reward_note")]


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
    runs = []
    for name, result in entries:
        state = Path(result.get("model_path") or "") / "trainer_state.json"
        if name != "base" and state.is_file():
            runs.append((name, json.loads(state.read_text()).get("log_history", [])))
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
        ax.set_title(key.replace("_", " "))
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


def html_table(entries: list[tuple[str, dict]]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ("run", *TABLE_KEYS))
    body = []
    for name, result in entries:
        if not_evaluated(result):
            cells = f"<td colspan='{len(TABLE_KEYS)}' class='error'>{html.escape(not_evaluated(result))}</td>"
        else:
            cells = "".join(f"<td>{html.escape(fmt(result.get(k)))}</td>" for k in TABLE_KEYS)
        body.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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
    return f"<table class='samples'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;
margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
pre{white-space:pre-wrap;margin:0;max-width:28em}.error{color:#b00}.charts img{margin:4px;border:1px solid #eee}"""


def write_report(runs_dir: str, results_path: str | None = None) -> Path:
    runs = Path(runs_dir)
    results = load_results(Path(results_path) if results_path else runs / "evaluation_results.json")
    entries = ordered(results)
    curves = loss_curves(entries)
    bars = metric_bars(entries)
    images = ([f"<img alt='loss curves' src='data:image/png;base64,{curves}'>"] if curves else []) + [
        f"<img alt='{key}' src='data:image/png;base64,{data}'>" for key, data in bars]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>unitune report</title><style>{STYLE}</style>"
            f"</head><body><h1>unitune report</h1><p>{len(entries)} entries from {html.escape(str(runs))}; "
            "the grey bar is the base model.</p><h2>Metrics</h2>" + html_table(entries) +
            "".join(f"<p class='note'>{html.escape(line)}</p>" for line in notes(entries)) +
            "<h2>Charts</h2><div class='charts'>" + "".join(images) + "</div>"
            "<h2>Generation samples</h2>" + samples_table(entries) + "</body></html>")
    runs.mkdir(parents=True, exist_ok=True)
    write_text_atomic(runs / "report.html", page)
    write_text_atomic(runs / "report.md", "# unitune report\n\n" + markdown_table(entries) + "\n"
                      + "".join(f"\n{line}\n" for line in notes(entries)))
    print(f"unitune report: {runs / 'report.html'}", flush=True)
    return runs / "report.html"
