"""The report's charts (matplotlib, embedded as PNG): metric bars, loss curves, and training logs overlaid across runs."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

BAR_KEYS = ("test_loss", "perplexity", "preference_accuracy", "loss_margin", "task_accuracy", "mean_reward",
            "reward_accuracy", "reward_margin")
# Which way is better, for the table headers, the bold best values and the chart titles.
LOWER, HIGHER = "↓ lower is better", "↑ higher is better"
DIRECTION = {"test_loss": LOWER, "perplexity": LOWER, "preference_accuracy": HIGHER, "loss_margin": HIGHER,
             "task_accuracy": HIGHER, "mean_reward": HIGHER, "reward_accuracy": HIGHER, "reward_margin": HIGHER,
             "final_train_loss": LOWER, "final_eval_loss": LOWER}
# The training logs overlaid on one axis per key (runs differ in steps, so against progress, 0-100%).
OVERLAY_KEYS = (("loss", "training loss", LOWER), ("eval_loss", "eval loss", LOWER), ("reward", "reward", HIGHER),
                ("eval_task_accuracy", "eval task accuracy", HIGHER), ("eval_mean_reward", "eval mean reward", HIGHER))


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


def chart_images(entries: list[tuple[str, dict]]) -> list[str]:
    """The report's charts as <img> tags: the training curves of all runs, one bar chart per metric, the loss curves
    of each run (the HTML report and the web UI show the same)."""
    overlay, curves = loss_overlay(entries), loss_curves(entries)
    return ([f"<img alt='training curves, all runs' src='data:image/png;base64,{overlay}'>"] if overlay else []) + [
        f"<img alt='{key}' src='data:image/png;base64,{data}'>" for key, data in metric_bars(entries)] + (
        [f"<img alt='loss curves per run' src='data:image/png;base64,{curves}'>"] if curves else [])
