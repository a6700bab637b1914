"""scripts/gpu_check.sh, the GPU check: it parses, it refuses to start without a GPU, and `record` files a run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
HEADING = "## GPU check runs (`scripts/gpu_check.sh`)"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow  # a Python process that imports torch: ~3 s
def test_refuses_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the check would run")
    env = {**os.environ, "BIN": str(Path(sys.executable).parent), "OUT_DIR": str(tmp_path / "out")}
    env.pop("GPU_CHECK_CPU", None)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device visible" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing replaced before the refusal


def test_record_appends_each_run_under_one_heading(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "bench").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts")
    (tmp_path / "bench" / "RESULTS.md").write_text("# Benchmark results\n")
    got = tmp_path / "from-the-gpu"
    got.mkdir()
    (got / "gpu_check.md").write_text("\n### 2026-12-05 00:00 UTC: NVIDIA H200\n\n`scripts/gpu_check.sh` at an unknown "
                                      "commit (and the working tree), STEPS=5:\n\n```\ngpu_check: ok    sft (30 s)\n```\n")
    (got / "results_gpu.json").write_text('{"device": "NVIDIA H200"}\n')
    for _ in range(2):
        subprocess.run(["bash", str(tmp_path / "scripts" / "gpu_check.sh"), "record", str(got)], check=True,
                       capture_output=True, timeout=60)
    text = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert text.count(HEADING) == 1 and text.index(HEADING) < text.index("### 2026-12-05")
    assert text.count("gpu_check: ok    sft (30 s)") == 2
    assert "an unknown commit" not in text  # the commit is named where the run is recorded
    assert (tmp_path / "bench" / "results_gpu.json").read_text() == '{"device": "NVIDIA H200"}\n'
    assert sorted(p.name for p in got.iterdir()) == ["gpu_check.md", "results_gpu.json"]  # read only
