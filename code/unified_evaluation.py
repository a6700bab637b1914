"""Seed-compatible evaluation entry: `python code/unified_evaluation.py ...` == `unitune eval ...`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without `pip install -e .` too

from unitune.cli import entry_point  # noqa: E402

entry_point("eval")
