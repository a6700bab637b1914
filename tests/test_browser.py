"""report.html in a real browser (headless Chromium): the page renders and every chart image decodes.

.ci/run installs Debian's `chromium` when it is missing. Elsewhere the test is skipped without it,
except under CI=true, where a missing browser fails.
"""

import os
import re
import shutil
import subprocess

import pytest

from unitune.report import write_report

pytestmark = pytest.mark.slow  # a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the page: after load, count images that decoded to a real bitmap.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  document.body.insertAdjacentHTML('beforeend', `<p id="probe">images=${imgs.length} decoded=${ok}</p>`);
});</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed")
def test_report_renders_in_chromium(tmp_path):
    assert CHROMIUM, "chromium is missing: .ci/run installs it with apt-get install chromium"
    runs = tmp_path / "runs"
    run = runs / "sft_x"
    run.mkdir(parents=True)
    (run / "trainer_state.json").write_text('{"global_step": 3, "log_history": [{"step": 1, "loss": 2.0}, '
                                            '{"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.1, "eval_loss": 1.3}]}')
    results = {"base": {"method": "base", "test_loss": 2.1, "preference_accuracy": 0.4, "task_accuracy": 0.0,
                        "generation_samples": [{"prompt": "What is 2 + 2?", "response": "Five"}]},
               "sft_x": {"method": "sft", "test_loss": 1.2, "preference_accuracy": 0.7, "task_accuracy": 0.3,
                         "model_path": str(run), "generation_samples": [{"prompt": "What is 2 + 2?",
                                                                          "response": "Answer: 4"}]}}
    (runs / "evaluation_results.json").write_text(__import__("json").dumps(results))
    page = write_report(str(runs))
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'id="probe">images=(\d+) decoded=(\d+)<', dom)
    assert found, dom[-500:]
    images, decoded = map(int, found.groups())
    assert images == 4 and decoded == images  # loss curves + test_loss, preference_accuracy, task_accuracy bars
    assert "Answer: 4" in dom and "sft_x" in dom
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000  # a rendered page, not a blank one
