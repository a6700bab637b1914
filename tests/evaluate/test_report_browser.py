"""report.html in a real browser (headless Chromium): the page renders and every chart image decodes.

.ci/run installs Debian's `chromium` when it is missing. Elsewhere the test is skipped without it,
except under CI=true, where a missing browser fails.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from unitune.evaluate.report import write_report

pytestmark = pytest.mark.slow  # a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # git-ignored

# Appended to a copy of the page: after load, count images that decoded to a real bitmap, measure the page's
# width against the window's, and find the overlay chart.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  const scroll = document.documentElement.scrollWidth, overlay = imgs.filter(i => i.alt.includes('all runs')).length;
  document.body.insertAdjacentHTML('beforeend',
    `<p id="probe">images=${imgs.length} decoded=${ok} scroll=${scroll} window=${window.innerWidth} overlay=${overlay}</p>`);
});</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           *args], capture_output=True, text=True, timeout=120)


def two_runs(runs: Path) -> None:
    """Two runs of different lengths with their records, and results for them and the base."""
    results = {"base": {"method": "base", "test_loss": 2.1, "preference_accuracy": 0.4, "task_accuracy": 0.0,
                        "generation_samples": [{"prompt": "What is 2 + 2?", "response": "Five"}]}}
    for name, steps, loss in (("sft_x", 3, 1.2), ("dpo_long_name_to_widen_the_table", 8, 1.4)):
        run = runs / name
        run.mkdir(parents=True)
        history = [{"step": i, "loss": 2.0 - 0.1 * i} for i in range(1, steps + 1)] + [{"step": steps, "eval_loss": 1.3}]
        (run / "trainer_state.json").write_text(json.dumps({"global_step": steps, "log_history": history}))
        (run / "unitune_run.json").write_text(json.dumps({
            "method": name.split("_")[0], "model_name": None, "base_model": "/cache/smollm2", "dataset": "demo",
            "train_split": "train_sft", "train_rows": 64, "effective_batch": 16, "global_step": steps,
            "settings": {"learning_rate": 2e-4, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05},
            "hardware": {"dtype": "torch.float32", "qlora": False}, "wall_time_seconds": 12.5}))
        results[name] = {"method": name.split("_")[0], "test_loss": loss, "preference_accuracy": 0.7,
                         "task_accuracy": 0.3, "model_path": str(run),
                         "generation_samples": [{"prompt": "What is 2 + 2?", "response": "Answer: 4"}]}
    (runs / "evaluation_results.json").write_text(json.dumps(results))


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed")
def test_report_renders_in_chromium(tmp_path):
    """At a 1280 x 800 window: every chart decodes, the overlay of all runs is there, the page never scrolls
    sideways. The screenshot is kept in test-artifacts/ to look at."""
    assert CHROMIUM, "chromium is missing: .ci/run installs it with apt-get install chromium"
    runs = tmp_path / "runs"
    two_runs(runs)
    page = write_report(str(runs))
    html = page.read_text()
    assert "test_loss ↓" in html and "preference_accuracy ↑" in html and "<td class='best'>1.2</td>" in html
    assert "<summary>sft_x</summary>" in html and "(before training)" in html
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = chromium("--window-size=1280,800", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'id="probe">images=(\d+) decoded=(\d+) scroll=(\d+) window=(\d+) overlay=(\d)<', dom)
    assert found, dom[-500:]
    images, decoded, scroll, window, overlay = map(int, found.groups())
    assert images == 5 and decoded == images  # overlay, test_loss/preference/task bars, per-run panels
    assert overlay == 1 and window == 1280 and scroll <= window, (scroll, window)
    assert "Answer: 4" in dom and "sft_x" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-1280x800.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,800", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000  # a rendered page, not a blank one
