"""One process per run folder, and only in run folders: the lock a training holds, what refuses it, and the folders
train refuses to write into."""

import json
import os
import platform
import signal
import subprocess
import sys
import time

import pytest

from unitune.cli import main
from unitune.errors import Interrupted, UserError
from unitune.train.lock import LOCK_FILE, RunLock, check_free, held_while_training, holder
from unitune.train.output_dir import check_model_card

from conftest import read_json


def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder, **record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": platform.node(), "since": "2026-01-02 03:04:05",
                                                **record}))


def test_a_held_lock_names_its_process_and_goes_on_release(tmp_path):
    lock = RunLock()
    lock.take(tmp_path)
    found = holder(tmp_path)
    assert found["pid"] == os.getpid() and found["host"] == platform.node() and found["since"]
    with pytest.raises(UserError) as refused:  # a second lock on the folder (another descriptor, as another process)
        RunLock().take(tmp_path)
    line = str(refused.value)
    assert f"unitune pid {os.getpid()} on host {platform.node()} has been training in it since {found['since']}" \
        in line and "wait for it to finish, or stop it" in line and "\n" not in line
    with pytest.raises(UserError, match=f"cannot merge {tmp_path}: unitune pid {os.getpid()}"):
        check_free(tmp_path, "merge")
    lock.release()
    assert holder(tmp_path) is None and not (tmp_path / LOCK_FILE).exists()
    check_free(tmp_path, "merge")


def test_a_dead_processs_lock_is_taken_over_with_a_line(tmp_path, capsys):
    pid = exited_pid()
    write_lock(tmp_path, pid=pid)
    assert holder(tmp_path) is None  # no live process: the UI shows no running run, merge goes ahead
    lock = RunLock()
    lock.take(tmp_path)
    out = capsys.readouterr().out
    assert out.strip() == (f"unitune: taking over the lock of {tmp_path}: pid {pid} (since 2026-01-02 03:04:05) is "
                           "no longer running")
    assert read_json(tmp_path / LOCK_FILE)["pid"] == os.getpid()
    lock.release()


def test_another_hosts_lock_is_respected(tmp_path):
    write_lock(tmp_path, pid=4242, host="gpu-node-7")
    for check in (lambda: RunLock().take(tmp_path), lambda: check_free(tmp_path, "export")):
        with pytest.raises(UserError) as refused:
            check()
        assert "unitune pid 4242 on host gpu-node-7 has been training in it since 2026-01-02 03:04:05" in \
            str(refused.value) and f"if that process is gone, delete {tmp_path / LOCK_FILE}" in str(refused.value)
    assert read_json(tmp_path / LOCK_FILE)["pid"] == 4242  # left as it was


def test_other_ranks_accept_their_own_launchs_lock_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("WORLD_SIZE", "2")
    lock = RunLock()
    lock.take(tmp_path)  # rank 0 of this launch
    check_free(tmp_path, "train into")  # rank 1 of the same launch goes on
    monkeypatch.setenv("MASTER_PORT", "29501")  # rank 1 of another launch
    with pytest.raises(UserError, match="has been training in it"):
        check_free(tmp_path, "train into")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process in a shell that exports them (sbatch): export, merge
    with pytest.raises(UserError, match="has been training in it"):
        check_free(tmp_path, "export")
    lock.release()


def test_sigterm_before_training_releases_the_lock(tmp_path):
    with pytest.raises(Interrupted) as stopped:
        with held_while_training() as lock:
            lock.take(tmp_path)
            assert (tmp_path / LOCK_FILE).exists()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert stopped.value.code == 143 and not (tmp_path / LOCK_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_users_readme_in_a_run_folder_is_never_written_over(tmp_path):
    (tmp_path / "README.md").write_text("---\nlibrary_name: peft\nbase_model: x\n---\n# Model card\n")
    check_model_card(tmp_path)  # TRL's or PEFT's card: training rewrites it
    (tmp_path / "README.md").write_text("# My notes on this run\n")
    with pytest.raises(UserError, match="is not a model card, and training would write TRL's model card over it"):
        check_model_card(tmp_path)


# ---- through the command line (the refusals one by one: tests/test_errors.py)


def test_a_stale_lock_does_not_stop_the_next_run(capsys, tiny_args, tmp_path):
    """A run killed at its start left only its lock: the next train there takes it over, says so, and trains."""
    out = tmp_path / "sft_run"
    pid = exited_pid()
    write_lock(out, pid=pid)
    assert main(tiny_args("sft", "--max_steps", "1")) == 0
    assert f"taking over the lock of {out}: pid {pid}" in capsys.readouterr().out
    assert read_json(out / "unitune_run.json")["status"] == "finished" and not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_trains_into_one_folder(tiny_model_dir, tmp_path, capsys):
    """A second train into a folder another process trains in refuses in one line naming it, as do --resume, merge
    and export; the first (paused meanwhile with SIGSTOP, so nothing here races it) finishes with its run intact."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    args = ["train", "--method", "sft", "--model_name", str(tiny_model_dir), "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_train_samples", "8",
            "--max_steps", "4", "--save_steps", "2", "--seed", "3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "unitune", *args], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600  # a loaded 2-core machine starts slowly
        while holder(out) is None and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None and holder(out)["pid"] == first.pid, (tmp_path / "first.log").read_text()
        os.kill(first.pid, signal.SIGSTOP)  # it holds the lock, wherever it is
        try:
            second = subprocess.run([sys.executable, "-m", "unitune", *args], env=env, capture_output=True, text=True,
                                    timeout=600)
            assert main(args + ["--resume"]) == 2
            assert main(["merge", "--run", str(out), "--output", str(tmp_path / "merged")]) == 2
            assert main(["export", "--run", str(out), "--output", str(tmp_path / "exported")]) == 2
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert lines[-1].startswith(f"unitune: error: cannot train into {out}: unitune pid {first.pid} on host "
                                f"{platform.node()} has been training in it since "), lines
    errors = capsys.readouterr().err
    for doing in (f"resume the run in {out}", f"merge {out}", f"export {out}"):
        assert f"cannot {doing}: unitune pid {first.pid}" in errors, doing
    record, state = read_json(out / "unitune_run.json"), read_json(out / "trainer_state.json")
    assert record["status"] == "finished" and record["global_step"] == 4 and not (out / LOCK_FILE).exists()
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]  # one run's steps, once each
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert all(read_json(out / f"checkpoint-{n}" / "trainer_state.json")["global_step"] == n for n in (2, 4))
    assert not (tmp_path / "merged").exists() and not (tmp_path / "exported").exists()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
