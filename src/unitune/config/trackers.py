"""Experiment trackers (``--report_to``), passed through to the Trainer's own integrations. unitune adds the
checks that turn a missing package or a missing login into one line before any data or model is loaded."""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path

from ..errors import UserError

# tracker -> (modules that provide it: any one will do, what to install)
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "trackio": (("trackio",), "pip install trackio"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
}
NONE = "none"


def check_names(report_to: list[str] | None) -> None:
    """Known tracker names only (a config-time check: nothing imported)."""
    from ..errors import closest

    for name in report_to or []:
        if name != NONE and name not in TRACKERS:
            raise UserError(f"unknown tracker '{name}' in --report_to{closest(name, TRACKERS)}; use {NONE} or any "
                            f"of: {', '.join(TRACKERS)}")
    if report_to and NONE in report_to and len(report_to) > 1:
        raise UserError(f"--report_to {' '.join(report_to)} mixes '{NONE}' with trackers; give one or the other")


def trackers(report_to: list[str] | None) -> list[str]:
    """The trackers asked for, checked: each installed, and wandb logged in (or offline)."""
    chosen = [name for name in report_to or [] if name != NONE]
    for name in chosen:
        modules, install = TRACKERS[name]
        if not any(importlib.util.find_spec(module) for module in modules):
            raise UserError(f"--report_to {name} needs the {modules[0]} package, which is not installed; "
                            f"run `{install}`, or drop {name} from --report_to")
    if "wandb" in chosen and not wandb_ready():
        raise UserError("--report_to wandb needs a Weights & Biases login: run `wandb login` or set WANDB_API_KEY "
                        "(or WANDB_MODE=offline to log locally)")
    return chosen


def wandb_ready() -> bool:
    """An API key in the environment or ~/.netrc (where `wandb login` puts it), or an offline/disabled mode."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
