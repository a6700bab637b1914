"""The held-out rows every entry is scored on: the first --max_samples rows of each test split, the unusable ones
dropped, through the data pipeline; loaded once per dataset and column mapping."""

from __future__ import annotations

from ..config import EvalConfig
from ..data.load import split_names
from ..data.pipeline import DataSettings, prepare
from ..data.views import row_views
from ..methods import METHODS


class EvalData:
    """The first max_samples rows of the test splits of one dataset, loaded once and shared by entries."""

    def __init__(self, dataset: str, cfg: EvalConfig, columns: dict[str, str] | None = None):
        self.dataset = dataset
        available = split_names(dataset)
        self.splits = {kind: split for kind, split in
                       (("sft", cfg.sft_split), ("prefs", cfg.prefs_split), ("gen", cfg.gen_split))
                       if split in available}
        settings = DataSettings(columns or {}, cfg.max_samples)
        # each split as the method it measures trains on it: test loss on SFT's rows, preference accuracy on DPO's
        # and generation on GRPO's (its prompts, not a whole conversation whose replies, tool results included, would
        # be in the prompt)
        found = {kind: prepare(dataset, split, {"sft": METHODS["sft"], "prefs": METHODS["dpo"],
                                                "gen": METHODS["grpo"]}[kind], settings, required=False)
                 for kind, split in self.splits.items()}
        if "gen" in self.splits and getattr(found["gen"], "format", None) is None:  # implicit pairs: any prompt
            found["gen"] = prepare(dataset, self.splits["gen"], None, settings, required=False)
        self.sft = self._sft_items(*self._usable(found.get("sft")))
        self.pairs = self._pairs(*self._usable(found.get("prefs")))
        gen, self.gen_format = self._usable(found.get("gen"))
        self.gen_rows = list(gen) if gen is not None else []
        self._answer_formats: dict[str, str] = {}

    def answer_format(self, requested: str, prompts) -> str:
        """--answer_format resolved on this data's generation rows (said once per format asked for)."""
        if requested not in self._answer_formats:
            from ..train.rewards import answer_format_of

            chosen, why = answer_format_of(requested, [{"prompt": p, "answer": row.get("answer")}
                                                       for p, row in zip(prompts, self.gen_rows)])
            print(f"unitune eval: answers checked as {chosen} ({why})", flush=True)
            self._answer_formats[requested] = chosen
        return self._answer_formats[requested]

    @staticmethod
    def _usable(prepared):
        """(canonical usable rows, format), or (None, None) when the split is absent or fits no format looked for."""
        return (prepared.rows, prepared.format) if prepared is not None else (None, None)

    @staticmethod
    def _sft_items(ds, fmt):
        """(prompt, reply) per row: a conversation's last turn, a pair's chosen reply, a completion."""
        if fmt in (None, "text"):
            return []
        return [(prompt, replies[0][-1:] if fmt == "conversational" else replies[0])
                for prompt, replies in (row_views(row, fmt) for row in ds)]

    @staticmethod
    def _pairs(ds, fmt):
        """(prompt, chosen, rejected) per row."""
        if fmt is None:
            return []
        return [(prompt, chosen, rejected) for prompt, (chosen, rejected) in (row_views(row, fmt) for row in ds)]
