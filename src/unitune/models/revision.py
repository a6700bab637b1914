"""Which commit of a Hub repo a name stands for: a run records the one it trained on, and eval, merge, export, chat
and --resume load that one again (saying so when the repo has moved on).

A name resolves to the newest commit the Hub serves (online), else to the one the local Hub cache's ``refs/main``
points at (offline, as ``from_pretrained`` resolves it then). Local folders and files have no revision.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import warn
from ..hub import hub_reachable


def is_hub_id(source: str | None) -> bool:
    return bool(source) and not Path(str(source)).expanduser().exists() and not str(source).startswith((".", "/", "~"))


def newest_revision(source: str | None, kind: str = "model") -> str | None:
    """The commit ``source`` (a Hub id of a model or dataset) resolves to now; None for a local path, or when neither
    the Hub nor the cache knows it."""
    if not is_hub_id(source):
        return None
    if hub_reachable():
        from huggingface_hub import HfApi

        try:
            info = HfApi().model_info(source) if kind == "model" else HfApi().dataset_info(source)
            return info.sha
        except Exception:  # a private or missing repo: the loading itself says why
            return None
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / f"{kind}s--{source.replace('/', '--')}" / "refs" / "main"
    try:
        return refs.read_text().strip() or None
    except OSError:
        return None


def pinned(source: str, revision: str | None, who: str) -> str | None:
    """The revision to load for ``who`` (a run, say): the recorded one, with a line when the repo has a newer one."""
    if revision and is_hub_id(source):
        newest = newest_revision(source)
        if newest and newest != revision:
            warn(f"{who} trained on {source} at revision {revision[:12]}; loading that one, though the newest is "
                 f"{newest[:12]}")
    return revision if is_hub_id(source) else None
