"""The web UI's parts without a browser: the form generated from TrainConfig, the host/auth rule, the live log, the
job queue (a failing job's error line, Stop with a checkpoint, Resume to the end, Check data as a job)."""

import json
import time
from dataclasses import fields
from pathlib import Path

import pytest

from unitune.cli import main, parse_config
from unitune.config import TrainConfig, UiConfig
from unitune.errors import UserError
from unitune.train.live_log import LOG_FILE, read_log
from unitune.ui import form
from unitune.ui.listing import history


def test_the_form_has_every_train_flag_with_its_help_and_default():
    shown = {f.name: f for f in form.form_fields()}
    flags = {f.name: f for f in fields(TrainConfig)}
    assert set(shown) == set(flags) - set(form.BUTTON_FLAGS)
    for name, field in shown.items():
        assert field.help == flags[name].metadata["help"]
        assert field.default == (flags[name].default if name != "method" else "sft")
    assert shown["use_qlora"].kind == "choice" and shown["use_qlora"].choices == ("auto", "true", "false")
    assert shown["train_on_prompt"].kind == "bool" and shown["reward_funcs"].kind == "list"
    assert shown["num_generations"].applies_to("grpo") and not shown["num_generations"].applies_to("sft")
    assert shown["beta"].applies_to("dpo") and not shown["beta"].applies_to("sft")
    assert shown["train_on_prompt"].applies_to("sft") and not shown["train_on_prompt"].applies_to("dpo")
    assert shown["learning_rate"].methods is None


def test_form_values_become_the_command_line_and_yaml_the_cli_reads(tmp_path):
    values = {f.name: f.default for f in form.form_fields()}
    values.update(method="grpo", max_steps=2.0, learning_rate="1e-4", reward_funcs="accuracy, format",
                  train_on_prompt=True, lora_r=16, num_generations="", model_name="  ")
    mapping = form.to_mapping(values)
    # defaults, empty inputs and another method's fields (train_on_prompt is SFT's) are left out
    assert mapping == {"method": "grpo", "max_steps": 2, "learning_rate": "1e-4",
                       "reward_funcs": ["accuracy", "format"]}
    line = form.command_line(mapping)
    assert line == "unitune train --method grpo --max_steps 2 --learning_rate 1e-4 --reward_funcs accuracy format"
    from_flags = parse_config(TrainConfig, line.split()[2:], "unitune train")
    (tmp_path / "c.yaml").write_text(form.yaml_text(mapping))
    from_yaml = parse_config(TrainConfig, ["--config", str(tmp_path / "c.yaml")], "unitune train")
    assert from_flags == from_yaml == form.check(mapping)
    assert from_yaml.learning_rate == 1e-4 and from_yaml.reward_funcs == ["accuracy", "format"]


def test_a_bad_form_value_is_the_cli_one_line_error():
    with pytest.raises(UserError, match="max_steps.*not a valid int"):
        form.check(form.to_mapping({"method": "sft", "max_steps": "two"}))
    with pytest.raises(UserError, match="--lora_dropout must be in"):
        form.check(form.to_mapping({"method": "sft", "lora_dropout": 1.5}))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "::", "127.evil.com"])
def test_an_open_host_needs_the_token_or_auth(host, monkeypatch, tmp_path):
    monkeypatch.delenv("UNITUNE_UI_AUTH", raising=False)
    assert UiConfig(host=host).credentials is None  # the token guards it
    with pytest.raises(UserError, match="--no_token would open the UI"):
        UiConfig(host=host, no_token=True)
    (tmp_path / "auth").write_text("me:secret\n")
    assert UiConfig(host=host, auth=str(tmp_path / "auth")).credentials == ("me", "secret")
    monkeypatch.setenv("UNITUNE_UI_AUTH", "env:pass")
    assert UiConfig(host=host).credentials == ("env", "pass")


def test_loopback_may_drop_the_token_and_auth_must_be_user_colon_pass(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("UNITUNE_UI_AUTH", raising=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert UiConfig(host=host, no_token=True).credentials is None
    (tmp_path / "auth").write_text("nopassword")
    with pytest.raises(UserError, match="must hold USER:PASS"):
        UiConfig(auth=str(tmp_path / "auth"))
    with pytest.raises(UserError, match="not the password itself"):
        UiConfig(auth="me:secret")
    with pytest.raises(UserError, match="no such file"):
        UiConfig(auth=str(tmp_path / "missing"))
    (tmp_path / "auth").write_text("me:secret")
    with pytest.raises(UserError, match="choose one"):
        UiConfig(auth=str(tmp_path / "auth"), no_token=True)
    assert main(["ui", "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err


def test_eval_runs_names_runs_under_the_runs_folder(tmp_path, capsys):
    (tmp_path / "sft_a").mkdir()
    (tmp_path / "sft_a" / "unitune_run.json").write_text('{"status": "finished", "method": "sft"}')
    assert main(["eval", "--runs_dir", str(tmp_path), "--runs", "sft_a", "sft_b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--runs: no run named sft_b" in err


def test_the_live_log_keeps_the_resumed_history(tmp_path):
    lines = [{"event": "begin", "step": 0, "max_steps": 4}, {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5},
             {"step": 3, "loss": 2.4},  # the stop came after step 3; the checkpoint is step 2
             {"event": "begin", "step": 2, "max_steps": 4}, {"step": 3, "loss": 2.2}, {"step": 4, "loss": 2.0}]
    (tmp_path / LOG_FILE).write_text("\n".join(map(json.dumps, lines)) + "\n{\"step\": 5, \"lo")
    losses = [(e["step"], e["loss"]) for e in read_log(tmp_path) if "loss" in e]
    assert losses == [(1, 3.0), (2, 2.5), (3, 2.2), (4, 2.0)]
    assert read_log(tmp_path / "missing") == []


def wait_for(check, timeout: float = 120):
    end = time.time() + timeout
    while time.time() < end:
        if check():
            return True
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.mark.slow  # training subprocesses
def test_a_job_that_dies_shows_its_error_line_and_the_queue_goes_on(tmp_path, monkeypatch):
    from unitune.config import UiConfig
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir=str(tmp_path / "runs")))
    try:
        message = ui.start({"method": "sft", "dataset": str(tmp_path / "runs" / "nowhere.jsonl")})
        assert "Queued" in message
        second = ui.start({"method": "sft", "dataset": str(tmp_path / "runs" / "also-missing.jsonl"),
                           "output_dir": "runs/x"})
        assert "behind 1 job" in second
        wait_for(lambda: all(job.state == "failed" for job in ui.queue.jobs))
        rows = ui.table()
        assert len(rows) == 2
        assert all(row[2].startswith("failed: unitune: error: dataset path not found") for row in rows)
        assert "nowhere.jsonl" in rows[0][2] + rows[1][2] and "Traceback" not in str(rows)
        title, tail = ui.job_log()
        assert "(failed)" in title and "also-missing.jsonl" in tail
    finally:
        ui.close()


@pytest.mark.slow
def test_stop_saves_a_checkpoint_and_resume_finishes_the_run(tiny_model_dir, tmp_path, monkeypatch):
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir="runs", allow_dir=[str(tiny_model_dir)]))
    run = Path("runs/long")
    values = {"method": "sft", "model_name": str(tiny_model_dir), "output_dir": str(run), "max_steps": 40,
              "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_train_samples": 16,
              "save_steps": 1000}
    try:
        assert "Queued" in ui.start(values)
        wait_for(lambda: any(e.get("step", 0) >= 2 for e in read_log(run)))
        assert ui.live_run().resolve() == run.resolve() and "<img" in ui.chart([ui.live_run()])
        assert "running" in next(row for row in ui.table() if row[0] == "long")[2]
        assert "stopping" in ui.stop()
        wait_for(lambda: ui.queue.jobs[0].state == "stopped")
        record = json.loads((run / "unitune_run.json").read_text())
        assert record["status"] == "interrupted" and list(run.glob("checkpoint-*"))
        assert "interrupted at step" in next(row for row in ui.table() if row[0] == "long")[2]
        assert "Error" in ui.start(values)  # the folder holds a run: Start refuses, Resume is the way
        assert "Queued" in ui.resume(["long"])
        wait_for(lambda: ui.queue.jobs[-1].state in ("finished", "failed"), 300)
        assert ui.queue.jobs[-1].state == "finished", ui.queue.jobs[-1].tail()
        record = json.loads((run / "unitune_run.json").read_text())
        assert record["status"] == "finished" and record["global_step"] == 40
        steps = [e["step"] for e in history(run) if "loss" in e]
        assert steps == list(range(1, 41))  # one history, no repeated steps
    finally:
        ui.close()


@pytest.mark.slow  # a `unitune check` process
def test_check_data_runs_as_a_job_and_shows_its_report_and_token_view(tmp_path, monkeypatch):
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir="runs"))
    data = Path("runs/.ui/uploads/pairs.jsonl")
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps({"prompt": f"What is {n} + 1?", "chosen": f"{n + 1}", "rejected": "no"}) + "\n"
                            for n in range(6)))
    try:
        shown = list(ui.check_data({"method": "dpo", "max_length": 512, "dataset": str(data)}))
        assert shown[0][0].startswith(("Queued **check data**", "**check data** is running"))
        line, text = shown[-1]
        assert line == "" and "train" in text and "no problems found" in text and "[[" in text  # report, token view
        assert not text.startswith("$ unitune") and ui.queue.jobs[-1].argv[:2] == ["check", "--dataset"]
        line, text = list(ui.check_data({"method": "sft", "dataset": "runs/nowhere.jsonl"}))[-1]
        assert line.startswith("**Error:** dataset path not found") and text == ""  # its one line, from the job
        assert [job.state for job in ui.queue.jobs] == ["finished", "failed"]
        assert all("check data" not in row[0] for row in ui.table())  # its error is on the Train tab, not the runs'
    finally:
        ui.close()


def test_upload_keeps_each_file_beside_the_runs(tmp_path, monkeypatch):
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir="runs"))
    try:
        upload = tmp_path / "gradio-cache" / "mine.jsonl"
        upload.parent.mkdir()
        upload.write_text('{"prompt": "hi", "completion": "hello"}\n')
        kept = ui.upload(str(upload))
        assert Path(kept).read_text() == upload.read_text() and Path(kept).parent == Path("runs/.ui/uploads")
        assert ui.upload(str(upload)) == kept  # the same file again: the same path
        upload.write_text('{"prompt": "hi", "completion": "changed"}\n')
        other = ui.upload(str(upload))  # another file of that name never replaces the one a run may have used
        assert other.endswith("mine-2.jsonl") and "hello" in Path(kept).read_text()
    finally:
        ui.close()


def test_the_table_says_what_became_of_the_last_job_for_a_run(tmp_path, monkeypatch):
    """A job killed after its run folder existed, or stopped while loading the model, leaves a record saying
    "running": the table shows the job's error line or the stop instead, and Start accepts the folder again."""
    from unitune.ui.actions import Ui, problem
    from unitune.ui.jobs import Job

    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir="runs"))
    try:
        for name, state, last_line in (("killed", "failed", "Killed"), ("early", "stopped", "loading the model"),
                                       ("resumed", "failed", "unitune: error: --resume: the checkpoint differs")):
            run = Path("runs") / name
            run.mkdir(parents=True)
            status = "interrupted" if name == "resumed" else "running"
            (run / "unitune_run.json").write_text(json.dumps({"method": "sft", "status": status}))
            if name == "resumed":
                (run / "checkpoint-2").mkdir()
            log = tmp_path / f"{name}.log"
            log.write_text(f"$ unitune train\n{last_line}\n")
            ui.queue.jobs.append(Job(len(ui.queue.jobs) + 1, ["train"], f"train {name}", log, str(run), state))
        rows = {row[0]: row[2] for row in ui.table()}
        assert rows["killed"] == "failed: Killed"
        assert rows["early"] == "stopped before its first checkpoint (Start it again)"
        assert rows["resumed"] == "failed: unitune: error: --resume: the checkpoint differs"
        queued = []
        monkeypatch.setattr(ui.queue, "submit", lambda argv, title, output_dir=None: queued.append(output_dir) or
                            Job(99, argv, title, tmp_path / "x.log", output_dir))
        assert "Queued" in ui.start({"method": "sft", "output_dir": "runs/early"})  # nothing to continue or lose
        assert queued == ["runs/early"]
        assert "holds a run (interrupted)" in ui.start({"method": "sft", "output_dir": "runs/resumed"})
    finally:
        ui.close()
    assert problem(ValueError("bad\nmore")) == "**Error:** ValueError: bad"
    assert problem(UserError("one line")) == "**Error:** one line"


def test_ui_without_gradio_is_one_line_naming_the_extra(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'unitune[ui]'" in err


def test_a_run_another_process_trains_in_shows_as_running_and_start_refuses(tmp_path, monkeypatch):
    """Whoever started it (the CLI, another UI, a SLURM job), a locked run is running, with its pid; Start and Resume
    refuse it before queueing. Once the lock is gone, a record still saying running means its process died."""
    import os

    from unitune.train.lock import RunLock
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "sft_cli"
    run.mkdir(parents=True)
    (run / "unitune_run.json").write_text(json.dumps({"status": "running", "method": "sft",
                                                      "settings": {"method": "sft"}}))
    lock = RunLock()
    lock.take(run)  # stands in for the other process: a flock is per open file, so this process sees it held
    ui = Ui(UiConfig(runs_dir="runs"))
    try:
        [row] = [r for r in ui.table() if r[0] == "sft_cli"]
        assert row[2].startswith(f"running (pid {os.getpid()} on ") and " since " in row[2]
        said = ui.start({"method": "sft", "output_dir": str(Path("runs") / "sft_cli")})
        assert said.startswith("**Error:** cannot train into runs/sft_cli: unitune pid") and "\n" not in said, said
        (run / "unitune_run.json").write_text(json.dumps({"status": "interrupted", "method": "sft",
                                                          "settings": {"method": "sft"}}))
        assert "cannot resume the run in" in ui.resume(["sft_cli"])
        assert ui.queue.jobs == []
        lock.release()
        (run / "unitune_run.json").write_text(json.dumps({"status": "running", "method": "sft"}))
        [row] = [r for r in ui.table() if r[0] == "sft_cli"]
        assert row[2] == "stopped: its process is gone (killed before it could say so)"
    finally:
        lock.release()
        ui.close()
