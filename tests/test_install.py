"""Installing into the user's own environment: ranges in pyproject.toml, the exact tested set in constraints.txt."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from unitune import env
from unitune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_ranges_admit_the_tested_set_and_torch_is_not_pinned():
    """A user's own torch (a CUDA build) must satisfy us; the tested versions must satisfy every range."""
    tested = env.tested_versions()
    for req in dependencies():
        assert req.name.lower() in tested, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(tested[req.name.lower()]), (req, tested[req.name.lower()])
    torch = next(r for r in dependencies() if r.name == "torch")
    assert all(spec.operator != "==" for spec in torch.specifier) and torch.specifier.contains("2.99.0")


@pytest.mark.slow
def test_install_into_the_tested_set_changes_nothing():
    """`pip install .` where the tested set is installed (this venv) installs unitune and nothing else."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    would = [line for line in done.stdout.splitlines() if line.startswith("Would install")]
    assert would == ["Would install unitune-0.1.0"], would


def test_env_compares_against_the_tested_versions(capsys, monkeypatch):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("unitune:", "Python:", "torch:", "transformers:", "trl:", "peft:", "CPU:", "UNITUNE_HOME:",
                 "CUDA available:"):
        assert name in out, name
    monkeypatch.setattr(env, "installed", lambda name: "0.0.1" if name == "peft" else "1.0")
    assert f"peft: 0.0.1 (tested: {env.tested_versions()['peft']})" in env.report()
