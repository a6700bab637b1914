"""Check data and Export run as jobs of the UI's one queue (their own processes), into the runs folder only: what they
queue, what the page shows while they wait and when they are done, and what the gates refuse before anything runs."""

import json
from pathlib import Path

import pytest

from unitune.config import UiConfig
from unitune.ui.jobs import Job


@pytest.fixture
def ui(tmp_path, monkeypatch, tiny_model_dir):
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir="runs", allow_dir=[str(tiny_model_dir)]))  # the runs' base model lies outside
    yield ui
    ui.close()


def finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "unitune_run.json").write_text(json.dumps({"method": "sft", "status": "finished"}))
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_refusals_are_one_line_and_queue_nothing(ui, tmp_path):
    secret = tmp_path / "id_rsa.jinja"
    secret.write_text("{{ messages }}")
    line, text = next(ui.check_data({"method": "sft", "chat_template": str(secret)}))
    assert line.startswith("**Error:** chat_template") and "--allow_dir" in line and text == ""
    line, text = next(ui.check_data({"method": "sft", "max_length": -3}))
    assert line.startswith("**Error:** --max_length") and text == ""
    finished_run(ui.root / "sft_a")
    line, files = next(ui.export("sft_a", "gguf", "f16", "quantized", str(tmp_path / "elsewhere")))
    assert line.startswith("**Error:** output") and "runs folder" in line and files == []
    assert next(ui.export("", "gguf", "f16", "quantized", ""))[0].startswith("Pick a finished run")
    assert ui.queue.jobs == []


def test_export_is_a_job_into_the_runs_folder_and_offers_its_files(ui, tmp_path, monkeypatch):
    finished_run(ui.root / "sft_a")
    submitted = []

    def submit(argv, title, output_dir=None):  # the job, as the queue would leave it once `unitune export` is done
        folder = Path(output_dir)
        folder.mkdir(parents=True)
        (folder / "model-q8_0.gguf").write_bytes(b"GGUF")
        (folder / "Modelfile").write_text("FROM ./model-q8_0.gguf\n")
        job = Job(1, argv, title, tmp_path / "x.log", output_dir, "finished", 0)
        submitted.append(job)
        return job

    monkeypatch.setattr(ui.queue, "submit", submit)
    *_, (line, files) = ui.export("sft_a", "gguf", "q8_0", "quantized", "")
    folder = ui.root / "exported" / "sft_a-q8_0"
    assert line == f"Exported to `{folder}`."
    assert sorted(Path(f).name for f in files) == ["Modelfile", "model-q8_0.gguf"]
    assert submitted[0].argv == ["export", "--run", str(ui.root / "sft_a"), "--output", str(folder), "--format", "gguf",
                                 "--quant", "q8_0", "--merge_base", "quantized"]
    *_, (line, _) = ui.export("sft_a", "gguf", "q8_0", "quantized", "")
    assert "sft_a-q8_0-2" in line  # a new folder each time: the UI never replaces an export
    assert [p.name for p in ui.runs()] == ["sft_a"]  # exports are not runs
    assert ui.live_run() is None


def test_the_page_follows_a_queued_job_until_it_ends(ui, tmp_path):
    from unitune.ui import tasks

    log = tmp_path / "job.log"
    log.write_text("$ unitune check\nloading the tokenizer\n")
    ahead = Job(1, ["train"], "train a", tmp_path / "a.log", None, "running")
    job = Job(2, ["check"], "check data", log)
    ui.queue.jobs.extend([ahead, job])  # the queue's worker is idle: this test moves the jobs along
    seen = tasks.follow(ui.queue, job, lambda line, tail: (line, tail), tasks.check_result, every=0)
    assert next(seen) == ("Queued **check data** behind 1 job(s); it runs when they are done.", "")
    ahead.state, job.state = "finished", "running"
    assert next(seen) == ("**check data** is running.", "$ unitune check\nloading the tokenizer")
    with open(log, "a") as handle:
        handle.write("split  rows\ntrain  6\n")
    assert next(seen) == ("**check data** is running.", "$ unitune check\nloading the tokenizer\nsplit  rows\ntrain  6")
    job.state, job.returncode = "failed", 1  # exit 1: a split cannot feed the method, which its report says
    assert next(seen) == ("", "loading the tokenizer\nsplit  rows\ntrain  6")
    with pytest.raises(StopIteration):
        next(seen)


@pytest.mark.slow  # trains a tiny run, then `unitune export` in a job
def test_export_job_writes_a_gguf_under_the_runs_folder(ui, tiny_args, tiny_model_dir):
    from unitune.cli import main

    argv = tiny_args("sft")
    argv[argv.index("--output_dir") + 1] = str(ui.root / "sft_tiny")
    assert main(argv) == 0
    shown = list(ui.export("sft_tiny", "gguf", "f16", "quantized", ""))
    assert any("is running" in line for line, _ in shown[:-1]), shown
    line, files = shown[-1]
    folder = ui.root / "exported" / "sft_tiny-f16"
    assert line == f"Exported to `{folder}`.", line
    assert sorted(Path(f).name for f in files) == ["Modelfile", "model-f16.gguf", "unitune_export.json"]
    assert ui.queue.jobs[-1].argv[0] == "export" and ui.queue.jobs[-1].state == "finished"
    assert [p.name for p in ui.runs()] == ["sft_tiny"]
    # without --allow_dir for the base model its record names, the page may not export (nor chat with) that run
    from unitune.ui.actions import Ui

    strict = Ui(UiConfig(runs_dir="runs"))
    try:
        [(said, files)] = list(strict.export("sft_tiny", "gguf", "f16", "quantized", ""))
        assert said.startswith("**Error:** model_name ") and "--allow_dir" in said and files == []
        assert str(tiny_model_dir) not in [value for _, value in strict.chat_choices()]
        assert str(tiny_model_dir) in [value for _, value in ui.chat_choices()]
        assert strict.queue.jobs == []
    finally:
        strict.close()
