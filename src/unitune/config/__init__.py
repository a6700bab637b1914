"""The one source of settings: a dataclass per command (the CLI flags, YAML keys and --help come from them)."""

from .train import *  # noqa: F401,F403
