"""GRPO's log-prob passes with each prompt computed once for its group of completions.

TRL's GRPOTrainer scores ``num_generations`` completions per prompt as separate rows: the prompt is computed once
per completion, and every row is padded to the longest prompt plus the longest completion. Here the rows that share
a prompt become one packed row, the way the evaluator scores replies (evaluate/scoring.py):

    prompt[:-1] | prompt[-1] completion 1 | prompt[-1] completion 2 | ...

Each completion segment sees the shared prompt and itself (a 4D mask), with the position ids it has in its own
row (rotary models: the same scores as TRL's padded rows; absolute-position models such as GPT-2 get the positions
generation gave them, where TRL's pass shifts left-padded rows). The prompt's last token is repeated at the head
of every segment, so that the hidden state which predicts a completion's first token sits inside its segment and
TRL's fused LM head takes the labels as given (``shift_labels``: the label at a position is the token it
predicts). The per-token log-probs and entropies are then put back in TRL's (rows, completion tokens) layout.
The same numbers as TRL's pass up to float rounding, on fewer tokens: 2 prompts x 4 completions of the bench went
from 8 x 94 padded tokens to 2 rows of ~140.
"""

from __future__ import annotations

import torch

from .packing import attention_masks, attention_only


def groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """Rows with the same prompt tokens (padding ignored), in first-seen order."""
    seen: dict[tuple[int, ...], list[int]] = {}
    for row, (ids, mask) in enumerate(zip(prompt_ids.tolist(), prompt_mask.tolist())):
        seen.setdefault(tuple(t for t, m in zip(ids, mask) if m), []).append(row)
    return list(seen.values())


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_width: int) -> tuple[list[dict], list]:
    """Packed rows (ids, positions, segments, labels) and, for each original row, (packed row, first label index,
    completion tokens)."""
    prompt_ids, prompt_mask = input_ids[:, :-completion_width], attention_mask[:, :-completion_width]
    completions = input_ids[:, -completion_width:].tolist()
    lengths = attention_mask[:, -completion_width:].sum(1).tolist()
    rows, where = [], [None] * input_ids.size(0)
    for members in groups(prompt_ids, prompt_mask):
        prompt = [t for t, m in zip(prompt_ids[members[0]].tolist(), prompt_mask[members[0]].tolist()) if m]
        head = prompt[:-1]
        ids, positions, segments = list(head), list(range(len(head))), [-1] * len(head)
        labels = [-100] * len(head)
        for k, member in enumerate(members):
            tail = completions[member][: lengths[member]]
            where[member] = (len(rows), len(ids), len(tail))
            ids += [prompt[-1], *tail]
            positions += range(len(head), len(head) + len(tail) + 1)
            segments += [k] * (len(tail) + 1)
            labels += [*tail, -100]
        rows.append({"ids": ids, "positions": positions, "segments": segments, "labels": labels})
    return rows, where


def usable(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_width: int):
    """The packing (see ``pack``) where it pays and is exact: prompts that repeat, non-empty, an attention-only
    model. None: TRL's own pass."""
    prompt_mask = attention_mask[:, :-completion_width]
    if not attention_only(getattr(model, "module", model)) or not bool(prompt_mask.sum(1).min() > 0):  # DDP: .module
        return None
    rows, where = pack(input_ids, attention_mask, completion_width)
    return (rows, where) if len(rows) < input_ids.size(0) else None


def per_token_logps(model, packing, input_ids: torch.Tensor, completion_width: int,
                    pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TRL's (log-probs, entropies) of the completion tokens, each (rows, completion_width), zero past a row's end.

    ``packing`` is what ``usable`` returned; ``model`` is what TRL calls: its forward takes ``fused_lm_head`` and
    ``shift_labels`` (TRL's fused LM head)."""
    rows, where = packing
    width = max(len(r["ids"]) for r in rows)
    device = input_ids.device
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row["ids"])
        ids[b, :n], positions[b, :n], labels[b, :n] = (torch.tensor(row[k]) for k in ("ids", "positions", "labels"))
    core = getattr(model, "module", model)  # DDP wraps; the mask is built from the model's config and dtype
    outputs = model(input_ids=ids.to(device), position_ids=positions.to(device),
                    attention_mask=attention_masks(core, rows, width, device), shift_labels=labels.to(device),
                    fused_lm_head=True)
    index_row, index_col, out_row, out_col = [], [], [], []
    for member, (b, start, count) in enumerate(where):
        index_row += [b] * count
        index_col += range(start, start + count)
        out_row += [member] * count
        out_col += range(count)
    source = (torch.tensor(index_row, device=device), torch.tensor(index_col, device=device))
    target = (torch.tensor(out_row, device=device), torch.tensor(out_col, device=device))

    def unpacked(values: torch.Tensor | None) -> torch.Tensor | None:
        if values is None:
            return None
        return values.new_zeros((input_ids.size(0), completion_width)).index_put(target, values[source])

    return unpacked(outputs.log_probs), unpacked(outputs.entropy)
