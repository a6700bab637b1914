"""The base model's evaluation results, kept in $UNITUNE_HOME/eval-cache and reused while nothing they depend on
has changed: the model's files (a Hub model's commit), the data's files (a Hub dataset's commit), the columns, the
rewards, the evaluation settings, the device and the library versions. `make demo`, a second `unitune eval` and the
web UI's Evaluate score the same base every time; with the cache they score it once (about a sixth of the demo's
evaluation)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from ..config import EvalConfig
from ..files import write_json_atomic
from ..machine import library_versions
from ..models.revision import is_hub_id, newest_revision

# How the evaluator scores: raised when scoring changes, so results of an older scorer are not reused (2: the model's
# output transform, the base in bf16 on CUDA).
SCORER = 2
# The EvalConfig fields a base result depends on (the others choose runs, files, or run after it, like lm-eval).
SETTINGS = ("max_samples", "max_generation_samples", "skip_perplexity", "sft_split", "prefs_split", "gen_split",
            "batch_size", "max_new_tokens", "answer_format")


def cache_dir() -> Path:
    """$UNITUNE_EVAL_CACHE, else $UNITUNE_HOME/eval-cache (the tests keep theirs apart)."""
    from ..machine import unitune_home

    return Path(os.environ.get("UNITUNE_EVAL_CACHE") or unitune_home() / "eval-cache")


def fingerprint(source: str | None, kind: str = "model", revision: str | None = None) -> object:
    """A local file or folder by its files' names, sizes and modification times; a Hub id by its commit (``revision``,
    else the one it resolves to now: a repo that moved on is scored again); anything else as is."""
    path = Path(str(source)) if source else None
    if path is None or not path.exists():
        return f"{source}@{revision or newest_revision(source, kind)}" if is_hub_id(source) else source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [str(path.resolve())] + [[str(f.relative_to(path)) if f != path else f.name, f.stat().st_size,
                                     f.stat().st_mtime_ns] for f in files]


def base_key(model: str, dataset: str, columns: dict, rewards, cfg: EvalConfig, device: str,
             revision: str | None = None, tools=None) -> str:
    reward = asdict(rewards) if rewards is not None else None
    calls = asdict(tools) if tools is not None else None
    names = [*(reward or {}).get("names", []), *(calls or {}).get("tools", []), (calls or {}).get("environment") or ""]
    code = [fingerprint(name.rsplit(":", 1)[0]) for name in names if ".py:" in name]
    payload = {"model": fingerprint(model, "model", revision), "dataset": fingerprint(dataset, "dataset"),
               "columns": columns, "rewards": reward, "tools": calls, "reward_code": code,
               "reward_model": fingerprint((reward or {}).get("model")),  # a folder retrained in place: scored again
               "settings": {k: getattr(cfg, k) for k in SETTINGS}, "device": device, "versions": library_versions(),
               "scorer": SCORER}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load(key: str) -> dict | None:
    """The saved result, marked ``"cached": true``; None when there is none."""
    try:
        found = json.loads((cache_dir() / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return found | {"cached": True} if isinstance(found, dict) else None


def save(key: str, result: dict) -> None:
    write_json_atomic(cache_dir() / f"{key}.json", result)
