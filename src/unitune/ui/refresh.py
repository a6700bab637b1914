"""What the Runs tab's timer asks for, every REFRESH_S seconds from every open tab, while a job may be training on
the same CPUs: the runs, the running job's output, the live and selected curves, and the evaluation results when they
were rewritten. Each part is read again only when its files changed (listing.py, watch.py), and the charts are drawn
again only when a run wrote something; bench/ui_overhead.py measures what it costs a training job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REFRESH_S = 5.0  # how often the Runs tab asks; each ask costs the UI process ~45 ms of CPU in Gradio (bench/ui_overhead.py)


@dataclass
class Poll:
    names: list[str]  # the runs, newest first
    table: list[list]
    running: Path | None  # the run the running training job writes
    log_title: str
    log_tail: str
    live_chart: str | None  # None: what the tab shows already (a chart is tens of kB, sent to every tab)
    selected_chart: str | None
    results: tuple | None  # ui.results() when evaluation_results.json changed since the tab last saw it
    seen: dict  # the tab's state for the next tick


def poll(ui, selected: list[str] | None, seen: dict) -> Poll:
    """One tick of a Runs tab that last saw ``seen`` ({"choices": run names, "results": results version, "charts":
    the charts' hashes})."""
    names = [p.name for p in ui.runs()]
    running = ui.live_run()
    title, tail = ui.job_log()
    version = ui.results_version()
    results = ui.results() if version != seen.get("results") else None
    charts = (ui.chart([running]) if running else "", ui.chart([ui.root / name for name in selected or []]))
    shown = seen.get("charts") or (None, None)
    live, chosen = (None if hash(chart) == before else chart for chart, before in zip(charts, shown))
    return Poll(names, ui.table(), running, title, tail, live, chosen, results,
                {"choices": names, "results": version, "charts": tuple(map(hash, charts))})


__all__ = ["Poll", "REFRESH_S", "poll"]
