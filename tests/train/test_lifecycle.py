"""Run lifecycle: resume after a crash, merge and export, GGUF input, several processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from unitune.cli import main

from conftest import ROOT, read_json

pytestmark = pytest.mark.slow  # subprocesses, signals, training, GGUF conversion



def tiny_train(model_dir, out, *extra):
    return [sys.executable, "-m", "unitune", "train", "--method", "sft", "--model_name", str(model_dir),
            "--output_dir", str(out), "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--learning_rate", "1e-3", "--seed", "7", *extra]


def env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def test_resume_after_sigkill(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = tiny_train(tiny_model_dir, out, "--max_steps", "30", "--save_steps", "2", "--max_train_samples", "64")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded 2-core machine starts slowly
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoint-4" / "trainer_state.json").exists():
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint-2").is_dir(), "the run never reached its first checkpoints"
    assert read_json(out / "unitune_run.json")["status"] == "running", "the run finished before it was killed"
    before = sorted(p.name for p in out.glob("checkpoint-*"))
    # a checkpoint the crash cut short: model written, trainer_state.json not yet
    (out / "checkpoint-999").mkdir()
    (out / "checkpoint-999" / "adapter_model.safetensors").write_bytes(b"partial")
    done = subprocess.run(cmd + ["--resume"], env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping" in done.stderr and "checkpoint-999: incomplete" in done.stderr
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 30 and read_json(out / "unitune_run.json")["status"] == "finished"
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == list(range(1, 31)), steps  # continuous: no gap, no repeat
    assert set(before) <= {p.name for p in out.glob("checkpoint-*")}  # no earlier checkpoint lost
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)


def train_until(cmd, losses_seen: int, sig=signal.SIGTERM) -> tuple[int, str]:
    """Run ``cmd``; once it has logged ``losses_seen`` losses, send ``sig``. (exit code, output) --verbose makes
    the Trainer print its per-step log dicts, which show how far it is."""
    proc = subprocess.Popen(cmd + ["--verbose"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen, sent, lines = 0, False, []
    for line in proc.stdout:
        lines.append(line)
        seen += line.count("'loss'")
        if seen >= losses_seen and not sent:
            proc.send_signal(sig)
            sent = True
    return proc.wait(), "".join(lines)


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("method,sig,code,stream", [("sft", signal.SIGTERM, 143, False),
                                                    ("dpo", signal.SIGINT, 130, False),
                                                    ("dpo", signal.SIGTERM, 143, True)])
def test_interrupted_and_resumed_equals_uninterrupted(method, sig, code, stream, tiny_model_dir, tmp_path):
    """A signal mid-run saves a checkpoint and exits 143/130 with how to resume; --resume then trains exactly the
    steps an uninterrupted run trains (data order, dropout RNG, scheduler): same losses, same adapter. With
    --streaming, the stream continues from the right row."""
    def cmd(out):  # 12 steps over 20 rows: the interruption and the resume cross an epoch boundary
        return tiny_train(tiny_model_dir, out, "--method", method, "--max_steps", "12", "--max_train_samples", "20",
                          "--gradient_accumulation_steps", "2", "--lora_dropout", "0.1",
                          *(["--streaming"] if stream else []))

    whole = subprocess.run(cmd(tmp_path / "whole"), env=env(), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "stopped"
    rc, log = train_until(cmd(out), losses_seen=3, sig=sig)
    record = read_json(out / "unitune_run.json")
    step = record["global_step"]
    assert rc == code and record["status"] == "interrupted" and 3 <= step < 12, log[-2000:]
    assert f"stopped at step {step} with a checkpoint in {out / f'checkpoint-{step}'}; run the same command with " \
           "--resume" in log
    assert not (out / "adapter_model.safetensors").exists()  # not a finished run: the evaluator skips it
    done = subprocess.run(cmd(out) + ["--resume"], env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_json(out / "unitune_run.json")["status"] == "finished"
    logged = {name: [(e["step"], e["loss"]) for e in read_json(tmp_path / name / "trainer_state.json")["log_history"]
                     if "loss" in e] for name in ("whole", "stopped")}
    assert [s for s, _ in logged["stopped"]] == [s for s, _ in logged["whole"]] == list(range(1, 13))
    assert [x for _, x in logged["stopped"]] == pytest.approx([x for _, x in logged["whole"]], abs=1e-6)
    a, b = adapter(tmp_path / "whole"), adapter(out)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_without_checkpoint(capsys, tiny_args, tmp_path):
    (tmp_path / "sft_run").mkdir()
    assert main(tiny_args("sft", "--resume")) == 2
    assert "--resume: no complete checkpoint-* folder" in capsys.readouterr().err


def test_resume_auto_is_one_command_for_a_requeued_job(tiny_model_dir, tmp_path):
    """What a requeue script runs every time: the first start finds no folder and starts fresh; preempted (SIGTERM),
    it saves a checkpoint and says to run the same command; requeued, the same command continues from there and
    trains the run to its end, every step once."""
    out = tmp_path / "run"
    cmd = tiny_train(tiny_model_dir, out, "--max_steps", "8", "--max_train_samples", "16", "--resume", "auto")
    rc, log = train_until(cmd, losses_seen=3)
    step = read_json(out / "unitune_run.json")["global_step"]
    assert rc == 143 and 3 <= step < 8, log[-2000:]
    assert "--resume auto: no checkpoint in" in log and "; run the same command to continue" in log
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {out / f'checkpoint-{step}'}" in done.stdout
    assert read_json(out / "unitune_run.json")["status"] == "finished"
    steps = [e["step"] for e in read_json(out / "trainer_state.json")["log_history"] if "loss" in e]
    assert steps == list(range(1, 9)), steps


def test_merge_generates_like_base_plus_adapter(tiny_args, tiny_model_dir, tmp_path):
    assert main(tiny_args("sft", "--learning_rate", "5e-2")) == 0
    run, merged_dir = tmp_path / "sft_run", tmp_path / "merged"
    assert main(["merge", "--run", str(run), "--output", str(merged_dir)]) == 0
    assert (merged_dir / "model.safetensors").exists() and (merged_dir / "chat_template.jinja").exists()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run).eval()
    for text in ["What is 2 + 2?", "Count: apple, pear.", "Write 'cat' in capitals."]:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        a = merged.generate(**inputs, max_new_tokens=12, do_sample=False)
        b = adapted.generate(**inputs, max_new_tokens=12, do_sample=False)
        assert torch.equal(a, b)
    assert main(["merge", "--run", str(run), "--output", str(merged_dir)]) == 2  # not empty: refuse


def test_merge_dtype(tiny_args, tmp_path):
    assert main(tiny_args("sft", "--max_steps", "1")) == 0
    out = tmp_path / "merged16"
    assert main(["merge", "--run", str(tmp_path / "sft_run"), "--output", str(out), "--dtype", "bfloat16"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_merge_overwrite_never_destroys_a_run(tiny_args, tmp_path, capsys, monkeypatch):
    """--overwrite replaces an old merge only once the new one is complete, and never a run, its checkpoints, a
    parent of the run, another run, the current folder, home or /."""
    assert main(tiny_args("sft", "--max_steps", "1", "--save_steps", "1")) == 0
    run = tmp_path / "sft_run"
    before = sorted(p.name for p in run.rglob("*"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for output, why in [(run, "the run folder"), (tmp_path, "a parent of the run folder"),
                        (run / "checkpoint-1", "inside the run's checkpoint checkpoint-1"), (".", "the current folder"),
                        (Path.home(), "your home folder"), ("/", "the root folder")]:
        assert main(["merge", "--run", str(run), "--output", str(output), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"is {why}" in err and "refused even with --overwrite" in err, (output, err)
    assert sorted(p.name for p in run.rglob("*")) == before
    other = tmp_path / "other_run"
    shutil.copytree(run, other)
    assert main(["merge", "--run", str(run), "--output", str(other), "--overwrite"]) == 2
    assert "is a training run folder" in capsys.readouterr().err
    shelf = tmp_path / "shelf"  # a folder of the user's things, holding a run elsewhere's copy
    shutil.copytree(run, shelf / "kept_run")
    assert main(["merge", "--run", str(run), "--output", str(shelf), "--overwrite"]) == 2
    assert "is not a merged model" in capsys.readouterr().err and (shelf / "kept_run").is_dir()
    merged = tmp_path / "merged"
    assert main(["merge", "--run", str(run), "--output", str(merged)]) == 0
    (merged / "old.txt").write_text("old merge")
    assert main(["merge", "--run", str(run), "--output", str(merged), "--overwrite"]) == 0
    assert not (merged / "old.txt").exists() and (merged / "model.safetensors").exists()
    assert merged.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~current_umask() for f in merged.iterdir())  # safetensors: 0600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_merge_bad_run(capsys, tmp_path):
    assert main(["merge", "--run", str(tmp_path), "--output", str(tmp_path / "m")]) == 2
    assert "holds no adapter" in capsys.readouterr().err


def test_gguf_file_as_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Any .gguf path: converted once into a cached safetensors folder that trains. The file is a tiny Llama
    written by unitune's GGUF writer (the embedded model's own GGUF goes the same way, once per session)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune.deploy.gguf_writer import write_gguf

    monkeypatch.setenv("UNITUNE_HOME", str(tmp_path / "home"))
    gguf = tmp_path / "my-model.gguf"
    write_gguf(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
               tiny_model_dir, gguf, "f32", "my-model")
    args = ["train", "--method", "sft", "--model_name", str(gguf), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "1", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
            "--max_train_samples", "2"]
    assert main(args) == 0
    converted = list((tmp_path / "home" / "models").iterdir())
    assert len(converted) == 1 and converted[0].name.startswith("my-model-")
    assert not json.loads((converted[0] / "config.json").read_text()).get("quantization_config")
    assert read_json(tmp_path / "run" / "unitune_run.json")["base_model"] == str(converted[0])
    assert "converting my-model.gguf" in capsys.readouterr().err
    assert main(args + ["--overwrite_output_dir"]) == 0  # second time: the cache, no conversion
    assert "converting" not in capsys.readouterr().err


def test_interrupted_conversion_leaves_nothing_that_loads(tmp_path, monkeypatch):
    import transformers

    from unitune.models import gguf_import

    monkeypatch.setenv("UNITUNE_HOME", str(tmp_path))

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", die)
    with pytest.raises(KeyboardInterrupt):
        gguf_import.convert_gguf(gguf_import.embedded_gguf_path(), "x")
    assert list((tmp_path / "models").iterdir()) == []


def test_every_install_shares_one_embedded_conversion(embedded_dir, tmp_path, monkeypatch):
    """The embedded model's cache folder is keyed by its package version, not the wheel's path: another venv (the
    same file at another path, with another mtime) reuses the conversion instead of writing 540 MB again."""
    from unitune.models import load as models
    from unitune.models.gguf_import import EMBEDDED_GGUF

    other_venv = tmp_path / "venv2" / EMBEDDED_GGUF
    other_venv.parent.mkdir()
    os.symlink(models.embedded_gguf_path(), other_venv)
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: other_venv)
    assert models.resolve_model(None) == str(embedded_dir)


@pytest.mark.parametrize("method,stream", [("sft", False), ("dpo", False), ("sft", True)])
def test_two_processes_match_one(method, stream, tiny_model_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): one complete run folder, same losses as 1 process; on a stream too
    (the main process reads it and hands each process its share of a batch)."""
    common = ["--method", method, "--model_name", str(tiny_model_dir), "--max_steps", "3", "--seed", "3",
              "--learning_rate", "1e-3", "--max_train_samples", "24", "--lora_dropout", "0",
              *(["--streaming"] if stream else [])]
    one = subprocess.run([sys.executable, "-m", "unitune", "train", *common, "--output_dir", str(tmp_path / "one"),
                          "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"],
                         env=env(), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "unitune",
                          "train", *common, "--output_dir", str(tmp_path / "two"),
                          "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"],
                         env=env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    record = read_json(tmp_path / "two" / "unitune_run.json")
    assert record["hardware"]["world_size"] == 2
    assert not list(tmp_path.glob("two/.*"))  # no leftover temp files from racing ranks
    losses = {name: [e["loss"] for e in read_json(tmp_path / name / "trainer_state.json")["log_history"]
                     if "loss" in e] for name in ("one", "two")}
    assert len(losses["one"]) == len(losses["two"]) == 3
    # Same global batch (4 rows) and seed. DDP averages per-process mean losses, one process averages over
    # all tokens, so steps agree to ~1e-2 relative, not bit for bit.
    assert losses["two"] == pytest.approx(losses["one"], rel=2e-2), losses


def test_accelerate_cpu_config_starts_two_processes(tiny_model_dir, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "examples/accelerate/cpu.yaml"),
           "--main_process_port", "29541", "-m", "unitune", "train", "--method", "sft", "--model_name",
           str(tiny_model_dir), "--output_dir", str(tmp_path / "acc"), "--max_steps", "2",
           "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_train_samples", "8"]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_json(tmp_path / "acc" / "unitune_run.json")["hardware"]["world_size"] == 2
