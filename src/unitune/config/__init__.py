"""The one source of settings: a dataclass per command. The CLI flags, the YAML keys, ``--help``, the web UI's form
and docs/configuration.md all come from these dataclasses."""

from .commands import (GGUF_QUANTS, K_QUANTS, MERGE_BASES, MERGE_DTYPES, ChatConfig, CheckConfig, DemoConfig, EnvConfig,
                       EvalConfig, ExportConfig, MergeConfig, ReportConfig, UiConfig)
from .fields import as_bool, base_type, from_mapping, parse_columns
from .train import TrainConfig, default_run_dir

__all__ = ["GGUF_QUANTS", "K_QUANTS", "MERGE_BASES", "MERGE_DTYPES", "ChatConfig", "CheckConfig", "DemoConfig",
           "EnvConfig", "EvalConfig", "ExportConfig", "MergeConfig", "ReportConfig", "TrainConfig", "UiConfig",
           "as_bool", "base_type", "default_run_dir", "from_mapping", "parse_columns"]
