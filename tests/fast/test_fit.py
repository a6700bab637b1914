"""Memory sizing: the container's limit, not the host's, and evaluation batches cut to the memory there is."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from unitune import machine
from unitune.data.load import DEMO_DIR
from unitune.evaluate.heldout import EvalData
from unitune.config import EvalConfig
from unitune.fast import fit

GIB = 2**30


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_cgroup_limit_caps_the_memory(version, tmp_path, monkeypatch):
    """Under a container limit of 2 GiB with 1.5 GiB used, sizing sees 2 GiB in all and at most 0.5 GiB free (the
    host has more); a v1 "no limit" (a huge number) and v2's "max" leave the host's memory."""
    folder = tmp_path if version == "v2" else tmp_path / "memory"
    folder.mkdir(exist_ok=True)
    limit, used = ("memory.max", "memory.current") if version == "v2" else \
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (folder / limit).write_text(f"{2 * GIB}\n")
    (folder / used).write_text(f"{3 * GIB // 2}\n")
    monkeypatch.setattr(machine, "CGROUP", tmp_path)
    monkeypatch.setattr(machine, "PROC_CGROUP", tmp_path / "none")
    monkeypatch.setattr(machine, "physical_memory", lambda: 64 * GIB)
    assert machine.memory_limit() == 2 * GIB
    assert machine.available_memory() <= GIB // 2
    (folder / limit).write_text("max\n" if version == "v2" else f"{2**63 - 4096}\n")
    assert machine.memory_limit() == 64 * GIB and machine.available_memory() > GIB // 2


def test_a_limit_up_a_nested_cgroup_counts_and_page_cache_is_not_lost(tmp_path, monkeypatch):
    """A SLURM job step sits in a nested cgroup (v2): the job's folder two levels up holds the 2 GiB limit, the
    step's own says "max". Its usage counts less the page cache the kernel can drop (inactive_file)."""
    job = tmp_path / "slurm" / "job_7"
    step = job / "step_0"
    step.mkdir(parents=True)
    (step / "memory.max").write_text("max\n")
    (step / "memory.current").write_text(f"{GIB}\n")
    (job / "memory.max").write_text(f"{2 * GIB}\n")
    (job / "memory.current").write_text(f"{3 * GIB // 2}\n")
    (job / "memory.stat").write_text(f"anon {GIB // 2}\ninactive_file {GIB}\nactive_file 0\n")
    (tmp_path / "proc-cgroup").write_text("0::/slurm/job_7/step_0\n")
    monkeypatch.setattr(machine, "CGROUP", tmp_path)
    monkeypatch.setattr(machine, "PROC_CGROUP", tmp_path / "proc-cgroup")
    monkeypatch.setattr(machine, "physical_memory", lambda: 64 * GIB)
    assert machine.cgroup_memory() == (2 * GIB, GIB // 2)
    assert machine.memory_limit() == 2 * GIB
    assert machine.available_memory() <= 3 * GIB // 2


def test_evaluation_batches_shrink_to_the_free_memory(tiny_model_dir, tokenizer, monkeypatch):
    """With little memory free the scorer and generation cut their batches (down to one row), and the losses and
    replies stay those of full batches."""
    from unitune.evaluate.scoring import reply_nll
    from unitune.fast.generation import generate_replies

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    items = EvalData(str(DEMO_DIR), EvalConfig(max_samples=8)).sft
    widths = [40, 60, 80, 100, 120, 140, 160, 180]
    assert fit.rows_that_fit(model, widths, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    full = reply_nll(model, tokenizer, items, batch_size=8)
    replies = generate_replies(model, tokenizer, [p for p, _ in items], 6, batch_size=8, desc=None)
    cuts = []
    rows_that_fit = fit.rows_that_fit
    monkeypatch.setattr(fit, "available_memory", lambda: 2 * fit.row_bytes(model, 200) / fit.SHARE)
    for module in ("unitune.evaluate.scoring", "unitune.fast.generation"):
        monkeypatch.setattr(f"{module}.rows_that_fit", lambda *a, **k: cuts.append(rows_that_fit(*a, **k)) or cuts[-1])
    batches = fit.rows_that_fit(model, widths, 4)
    assert batches[-1] == [6, 7] and sum(batches, []) == list(range(8))
    assert all(len(b) * fit.row_bytes(model, widths[b[-1]]) <= 2 * fit.row_bytes(model, 200) for b in batches)
    # room for one row of 40 tokens and a half: the demo's rows are longer, so one row a batch
    monkeypatch.setattr(fit, "available_memory", lambda: 1.5 * fit.row_bytes(model, 40, 0, 1) / fit.SHARE)
    tight = reply_nll(model, tokenizer, items, batch_size=8)
    assert len(cuts) == 1 and [len(b) for b in cuts[0]] == [1] * len(items)
    assert [t for t, _ in tight] == pytest.approx([t for t, _ in full], abs=1e-4)
    assert [n for _, n in tight] == [n for _, n in full]
    monkeypatch.setattr(fit, "available_memory", lambda: 1.5 * fit.row_bytes(model, 20, 6, 1) / fit.SHARE)
    assert generate_replies(model, tokenizer, [p for p, _ in items], 6, batch_size=8, desc=None) == replies
    assert [len(b) for b in cuts[1]] == [1] * len(items)
    assert torch.finfo(next(model.parameters()).dtype).bits == 32
