"""Several processes and requeued jobs: which process is rank 0 under each launcher, a failure on any rank in the
run's record, and --resume auto (one command whether a checkpoint exists yet or not)."""

import json

import pytest

from unitune import machine
from unitune.cli import main, parse_config
from unitune.config import TrainConfig
from unitune.errors import UserError
from unitune.train.lock import RunLock
from unitune.train.output_dir import prepare_output_dir
from unitune.train.records import RUN_FILE, clear_stale_failures, record_of, run_status, status_line, write_status
from unitune.train.resume import finished_already, resume_target

from conftest import read_json


@pytest.fixture
def launch(monkeypatch):
    """Start from no launcher's variables; ``launch(NAME=value, ...)`` sets some."""
    for name in machine.RANK_VARIABLES + machine.SIZE_VARIABLES + ("SLURM_STEP_ID",):
        monkeypatch.delenv(name, raising=False)

    def set_variables(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))
    return set_variables


@pytest.mark.parametrize("variables,rank,size", [
    ({}, 0, 1),  # a single process
    ({"RANK": 1, "WORLD_SIZE": 2}, 1, 2),  # torchrun, accelerate launch
    ({"SLURM_PROCID": 3, "SLURM_NTASKS": 4, "SLURM_STEP_ID": 0}, 3, 4),  # srun python -m unitune ...
    ({"OMPI_COMM_WORLD_RANK": 1, "OMPI_COMM_WORLD_SIZE": 2}, 1, 2),  # Open MPI's mpirun
    ({"PMI_RANK": 2, "PMI_SIZE": 3}, 2, 3),  # MPICH, Intel MPI
    # torchrun's workers inside an srun task: torchrun's numbering, not the task's
    ({"RANK": 0, "WORLD_SIZE": 8, "SLURM_PROCID": 1, "SLURM_NTASKS": 2, "SLURM_STEP_ID": 0}, 0, 8),
    # an sbatch script is one process, whatever its allocation's SLURM_NTASKS says (no SLURM_STEP_ID: not srun's)
    ({"SLURM_PROCID": 0, "SLURM_NTASKS": 4}, 0, 1),
])
def test_rank_and_world_size_from_each_launcher(launch, variables, rank, size):
    launch(**variables)
    assert (machine.rank(), machine.world_size(), machine.is_main_process()) == (rank, size, rank == 0)


def test_srun_without_torchrun_is_refused_in_one_line(launch, tmp_path, capsys):
    """srun's copies of unitune with nothing to join them would each train alone into one folder: refused before
    anything is written; inside torchrun (RANK set) it goes on."""
    launch(SLURM_PROCID=0, SLURM_NTASKS=2, SLURM_STEP_ID=0)
    assert main(["train", "--method", "sft", "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "srun started 2 copies of unitune" in err[0] and "srun torchrun" in err[0]
    assert not (tmp_path / "run").exists()
    launch(RANK=0)
    assert machine.bare_srun() == 0


def test_a_failure_on_another_rank_lands_in_the_record(launch, tmp_path):
    """Only rank 0 writes unitune_run.json; rank 1's failure goes to a file of its own, and reading the record
    (status, the evaluator's and the web UI's status line) finds it, also while rank 0's record still says running
    (rank 0 killed by the launcher before it could say anything)."""
    out = tmp_path / "run"
    out.mkdir()
    launch(RANK=0, WORLD_SIZE=2)
    record = write_status(out, {"method": "sft"}, "running")
    launch(RANK=1, WORLD_SIZE=2)
    write_status(out, record, "failed", error="ValueError: broke on rank 1")
    assert read_json(out / RUN_FILE)["status"] == "running"  # rank 1 never writes rank 0's file
    assert sorted(p.name for p in out.iterdir()) == ["failed-rank-1.json", RUN_FILE]
    assert run_status(out) == "failed"
    assert status_line(out) == "failed: rank 1: ValueError: broke on rank 1"
    assert record_of(out)["failed_ranks"][0]["rank"] == 1
    launch(RANK=0, WORLD_SIZE=2)  # then rank 0 fails too, on the collective its peer left
    write_status(out, record, "failed", error="RuntimeError: Connection closed by peer")
    assert status_line(out) == ("failed: rank 1: ValueError: broke on rank 1; rank 0: RuntimeError: Connection "
                                "closed by peer")


def test_a_rank_failure_without_a_record_and_after_a_finish(launch, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    launch(RANK=2, WORLD_SIZE=4)  # rank 2 failed before rank 0 had written anything
    write_status(out, {}, "failed", error="OSError: no such model folder")
    assert run_status(out) == "failed" and status_line(out) == "failed: rank 2: OSError: no such model folder"
    (out / RUN_FILE).write_text(json.dumps({"status": "finished"}))
    assert run_status(out) == "finished"  # a run that finished is finished


def test_a_new_attempt_clears_only_its_own_stale_failures(launch, tmp_path):
    """Each rank removes its own failure of an earlier attempt; rank 0 also those of ranks this launch lacks. No rank
    removes a peer's: that peer may already have failed in this attempt."""
    out = tmp_path / "run"
    out.mkdir()
    for rank in (1, 2, 5):
        (out / f"failed-rank-{rank}.json").write_text(json.dumps({"rank": rank, "error": "old"}))
    launch(RANK=1, WORLD_SIZE=4)
    prepare_output_dir(str(out), overwrite=False, resume=True, lock=RunLock())  # rank 1 starts the next attempt
    assert sorted(p.name for p in out.glob("failed-rank-*")) == ["failed-rank-2.json", "failed-rank-5.json"]
    launch(RANK=0, WORLD_SIZE=4)
    clear_stale_failures(out)
    assert sorted(p.name for p in out.glob("failed-rank-*")) == ["failed-rank-2.json"]


def test_overwrite_moves_the_failures_aside_with_their_run(launch, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / RUN_FILE).write_text(json.dumps({"status": "running"}))
    (out / "failed-rank-1.json").write_text(json.dumps({"rank": 1, "error": "ValueError: old"}))
    launch(RANK=1, WORLD_SIZE=2)  # rank 1 first: the folder is rank 0's to move, failure and all
    prepare_output_dir(str(out), overwrite=True, resume=False, lock=RunLock())
    assert (out / "failed-rank-1.json").exists()
    launch(RANK=0, WORLD_SIZE=2)
    lock = RunLock()
    prepare_output_dir(str(out), overwrite=True, resume=False, lock=lock)
    aside = next(tmp_path.glob("run.old-*"))
    assert [p.name for p in out.iterdir()] == ["unitune.lock"] and lock.path == out / "unitune.lock"
    assert not (aside / "unitune.lock").exists()  # the old run's lock went once the new folder's was held
    lock.release()
    assert status_line(aside) == "failed: rank 1: ValueError: old" and not list(out.iterdir())


def parse(*argv):
    return parse_config(TrainConfig, ["--method", "sft", *argv], "unitune train")


def test_resume_values(tmp_path):
    assert parse().resume == "false"
    assert parse("--resume").resume == "true"  # the bare flag, as before
    assert [parse("--resume", v).resume for v in ("auto", "AUTO", "true", "yes", "false", "0")] == \
        ["auto", "auto", "true", "true", "false", "false"]
    config = tmp_path / "c.yaml"
    config.write_text("method: sft\nresume: auto\n")
    assert parse_config(TrainConfig, ["--config", str(config)], "t").resume == "auto"
    config.write_text("method: sft\nresume: true\n")  # YAML's bool
    assert parse_config(TrainConfig, ["--config", str(config)], "t").resume == "true"
    with pytest.raises(UserError, match="--resume must be true, false or auto, got 'maybe'; use --resume auto"):
        parse("--resume", "maybe")


def checkpoint(out, step: int, complete: bool = True):
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_resume_auto_takes_the_newest_complete_checkpoint_or_starts_fresh(tmp_path, capsys):
    out = tmp_path / "run"
    assert resume_target("auto", None, out) is None  # the first start: no folder yet
    assert "--resume auto: no checkpoint in" in capsys.readouterr().out
    out.mkdir()
    (out / RUN_FILE).write_text(json.dumps({"status": "running"}))  # killed before its first checkpoint
    checkpoint(out, 4, complete=False)  # ... or while writing it
    assert resume_target("auto", None, out) is None
    assert "skipping" in capsys.readouterr().err
    with pytest.raises(UserError, match="--resume: no complete checkpoint-.* or pass --resume auto"):
        resume_target("true", None, out)
    done = checkpoint(out, 2)
    assert resume_target("auto", None, out) == resume_target("true", None, out) == str(done)
    assert resume_target("false", None, out) is None


def test_resume_auto_leaves_a_finished_run_as_it_is(tmp_path, capsys):
    """A requeued job whose run had finished trains nothing (resuming from the last checkpoint would train a step
    past the end); a finished run of other settings is refused, as a resume of it is."""
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_FILE).write_text(json.dumps({"status": "finished", "method": "sft", "settings": {"seed": 3}}))
    lock = RunLock()
    prepare_output_dir(str(out), overwrite=False, resume=True, lock=lock)  # the folder guard lets --resume auto through
    lock.release()
    assert finished_already("auto", out, {"method": "sft", "settings": {"seed": 3}})
    assert "the run in" in capsys.readouterr().out
    assert not finished_already("true", out, {"method": "sft", "settings": {"seed": 3}})  # --resume trains further
    assert not finished_already("auto", tmp_path / "new", {"method": "sft"})
    with pytest.raises(UserError, match=r"cannot continue the finished run in .*: it was trained with --seed 3, this "
                                        r"command has 4; use the original settings"):
        finished_already("auto", out, {"method": "sft", "settings": {"seed": 4}})
    with pytest.raises(UserError, match="--overwrite_output_dir and --resume contradict"):
        prepare_output_dir(str(out), overwrite=True, resume=True, lock=RunLock())


def test_resume_auto_trains_where_a_killed_run_left_no_checkpoint(tiny_args, tmp_path, capsys):
    """A requeue's one command: the first attempt was killed before its first checkpoint (its record says running),
    so --resume auto starts fresh in that folder; once the run has finished, the same command trains nothing."""
    out = tmp_path / "sft_run"
    out.mkdir()
    (out / RUN_FILE).write_text(json.dumps({"method": "sft", "status": "running"}))
    assert main(tiny_args("sft", "--resume", "auto")) == 0
    assert "--resume auto: no checkpoint in" in capsys.readouterr().out
    record = read_json(out / RUN_FILE)
    assert record["status"] == "finished" and record["global_step"] == 2 and record["settings"]["resume"] == "auto"
    adapter = (out / "adapter_model.safetensors").read_bytes()
    assert main(tiny_args("sft", "--resume", "auto")) == 0  # requeued once more after it finished: nothing changes
    assert "has finished; nothing to train" in capsys.readouterr().out
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 2 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    assert read_json(out / RUN_FILE) == record and (out / "adapter_model.safetensors").read_bytes() == adapter


def test_a_rank_after_rank_0_takes_the_folder_as_rank_0_left_it(launch, tmp_path):
    """Rank 0 prepared the folder and holds it; it is writing its record (the temp file before the rename) when rank 1
    comes to prepare. Rank 1 goes on in it, clearing only its own failure of an earlier attempt: judged afresh, the temp
    file read as "not a run folder", rank 1 refused, and on two nodes rank 0 waited for it for 30 minutes (seen once in
    CI). A lock of another launch still refuses."""
    out = tmp_path / "run"
    launch(RANK=0, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=29500)
    lock = RunLock()
    prepare_output_dir(str(out), overwrite=False, resume=False, lock=lock)
    (out / ".unitune_run.json.x1y2").write_text("{")  # write_json_atomic's temp file, mid-write
    launch(RANK=1)
    assert prepare_output_dir(str(out), overwrite=False, resume=False, lock=RunLock()) == out
    (out / "failed-rank-1.json").write_text(json.dumps({"rank": 1, "error": "ValueError: old"}))
    prepare_output_dir(str(out), overwrite=False, resume=True, lock=RunLock())
    assert not (out / "failed-rank-1.json").exists()
    (out / ".unitune_run.json.x1y2").rename(out / RUN_FILE)
    launch(MASTER_PORT=29501)  # rank 1 of another launch
    with pytest.raises(UserError, match="unitune pid .* has been training in it"):
        prepare_output_dir(str(out), overwrite=False, resume=False, lock=RunLock())
    lock.release()
    (out / RUN_FILE).rename(out / ".unitune_run.json.x1y2")
    launch(MASTER_PORT=29500)  # rank 0 gone (it refused, or died): rank 1 judges the folder itself
    with pytest.raises(UserError, match="is not a run folder"):
        prepare_output_dir(str(out), overwrite=False, resume=False, lock=RunLock())
