"""Each method's trainer: one module per row of the method table (unitune/methods.py), whose ``build`` makes the
method's TRL trainer from its public config. The rows it trains on come from the data pipeline (``rows`` in the
table)."""

from __future__ import annotations

import importlib
from types import ModuleType


def trainer_module(method: str) -> ModuleType:
    """The module of ``method``'s trainer (``unitune.train.methods.<method>``)."""
    return importlib.import_module(f"{__name__}.{method}")
