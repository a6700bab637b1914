"""A run of a Hub model is pinned to the commit it trained on: eval, merge, export, chat and --resume load that one,
with a line when the repo has moved on; the evaluator's cache keys Hub models by commit. Tested on a local Hub cache
(offline), laid out as the Hub client lays it out."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unitune.cli import main

from conftest import read_json

OLD, NEW = "a" * 40, "b" * 40


def publish(cache, repo: str, commit: str, folder) -> None:
    """``folder`` as commit ``commit`` of the Hub model ``repo`` in the cache, which now resolves ``main`` to it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_run_loads_the_revision_it_trained_on(hub_cache, tiny_args, tiny_model_dir, tmp_path, capsys):
    from unitune.deploy.merge import merge_adapter
    from unitune.evaluate.cache import fingerprint
    from unitune.models.revision import newest_revision

    publish(hub_cache, "org/tiny", OLD, tiny_model_dir)
    run = tmp_path / "runs" / "sft_hub"
    assert main(tiny_args("sft", "--model_name", "org/tiny", "--output_dir", str(run))) == 0
    assert read_json(run / "unitune_run.json")["base_revision"] == OLD

    moved = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # the repo moves on: other weights
    with torch.no_grad():
        moved.get_input_embeddings().weight.mul_(3)
    moved.save_pretrained(tmp_path / "moved")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "moved")
    publish(hub_cache, "org/tiny", NEW, tmp_path / "moved")
    assert newest_revision("org/tiny") == NEW
    capsys.readouterr()

    merged = merge_adapter(run).model  # what merge, export and chat load
    trained_on = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(merged.get_input_embeddings().weight, trained_on.get_input_embeddings().weight)
    assert f"trained on org/tiny at revision {OLD[:12]}; loading that one, though the newest is {NEW[:12]}" in \
        capsys.readouterr().err

    # the evaluator's base: the commit the runs trained on, and a cache key per commit
    assert main(["eval", "--runs_dir", str(tmp_path / "runs"), "--max_samples", "4", "--max_new_tokens", "2",
                 "--max_generation_samples", "1", "--report", "false"]) == 0
    results = read_json(tmp_path / "runs" / "evaluation_results.json")
    said = capsys.readouterr().err
    assert f"the run sft_hub trained on org/tiny at revision {OLD[:12]}" in said
    assert f"the runs trained on org/tiny at revision {OLD[:12]}" in said  # the base entry
    from unitune.evaluate.heldout import EvalData
    from unitune.config import EvalConfig
    from unitune.data.load import DEMO_DIR
    from unitune.evaluate.scoring import reply_nll, token_weighted
    from unitune.models.load import load_tokenizer

    items = EvalData(str(DEMO_DIR), EvalConfig(max_samples=4)).sft
    expected = token_weighted(reply_nll(trained_on.eval(), load_tokenizer(str(tiny_model_dir)), items))
    assert results["base"]["test_loss"] == pytest.approx(expected, abs=1e-6)
    assert fingerprint("org/tiny", "model", OLD) != fingerprint("org/tiny", "model", NEW) == fingerprint("org/tiny")


def test_resume_keeps_the_revision_of_the_run(hub_cache, tiny_args, tiny_model_dir, tmp_path, capsys):
    """--resume continues on the commit the run started on, though the repo has moved on since."""
    publish(hub_cache, "org/tiny", OLD, tiny_model_dir)
    run = tmp_path / "sft_hub"
    assert main(tiny_args("sft", "--model_name", "org/tiny", "--output_dir", str(run), "--save_steps", "1")) == 0
    publish(hub_cache, "org/tiny", NEW, tiny_model_dir)
    capsys.readouterr()
    assert main(tiny_args("sft", "--model_name", "org/tiny", "--output_dir", str(run), "--save_steps", "1",
                          "--max_steps", "3", "--resume")) == 0
    assert read_json(run / "unitune_run.json")["base_revision"] == OLD
    assert read_json(run / "trainer_state.json")["global_step"] == 3
    assert f"trained on org/tiny at revision {OLD[:12]}; loading that one" in capsys.readouterr().err
