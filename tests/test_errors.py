"""Bad input: one line naming the problem and the fix, a non-zero exit, no traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from unitune.cli import main
from unitune.hub import hub_reachable

from conftest import read_json


def run_cli(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.fixture(autouse=True)
def offline():
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


@pytest.mark.slow
def test_unknown_method_subprocess():
    """The real process: exit status 2, one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "unitune", "train", "--method", "ppo"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("unitune: error: unknown method 'ppo' (did you mean 'dpo'?); "
                                   "choose --method from: sft, dpo, orpo, kto, grpo, rm, rloo, distill")
    assert "Traceback" not in proc.stderr


def test_help_explains_every_command(capsys):
    from unitune.cli import COMMANDS

    for flag in ("--help", "-h"):
        assert main([flag]) == 0
        out = capsys.readouterr().out
        for name, command in COMMANDS.items():
            assert f"  {name}" in out and command.summary in out
        assert "unitune demo" in out and "unitune train --method dpo --dataset" in out and "unitune eval" in out
    assert main([]) == 2 and "commands:" in capsys.readouterr().out  # no command: the help, and a failure


def test_train_help_groups_its_flags(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "{% generation %}" in out  # a literal % in a help text must not break it
    sections = ["what to train:", "training:", "LoRA and QLoRA:", "sequences, logging and checkpoints:",
                "chat template and loss mask:", "method-specific (preference, sampling, distillation):",
                "output, resume and dry run:", "data columns and broken rows:"]
    assert [out.index(s) for s in sections] == sorted(out.index(s) for s in sections)
    assert out.index("--lora_r") > out.index("LoRA and QLoRA:") > out.index("--learning_rate")


def test_version_names_the_libraries(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"unitune {version('unitune')} (") and f"trl {version('trl')}" in out
    assert f"torch {version('torch')}" in out and "peft" in out and "transformers" in out


def test_unknown_command_points_to_help(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian' (did you mean 'train'?)" in capsys.readouterr().err


def test_debug_shows_traceback(capsys):
    from unitune.errors import UserError

    with pytest.raises(UserError):
        main(["train", "--method", "ppo", "--debug"])


@pytest.mark.slow
def test_seed_script_same_errors():
    proc = subprocess.run([sys.executable, "code/SFT.py", "--method", "sft", "--dataset", "/nope/data.jsonl"],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "dataset path not found: /nope/data.jsonl" in proc.stderr


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "/does/not/exist"], "dataset path not found: /does/not/exist; check the path"),
    (["--dataset", "someorg/somedata"], "cannot reach the Hugging Face Hub to load dataset 'someorg/somedata'; "
                                        "pass a local folder"),
    (["--split", "train_nope"], "split 'train_nope' not found in"),
    (["--learning_rate", "0"], "--learning_rate must be greater than 0, got 0.0"),
    (["--lora_dropout", "1"], "--lora_dropout must be in [0, 1), got 1.0"),
    (["--max_batch_tokens", "-1"], "--max_batch_tokens must be 0 (off) or more, got -1"),
    (["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16' (choose from 'auto', 'float32', 'bfloat16')"),
    (["--max_train_samples", "0"], "--max_train_samples must be at least 1"),
    (["--chat_template", "/nope/t.jinja"], "--chat_template /nope/t.jinja is not a file; pass a Jinja template file"),
    (["--dataset", "a.jsonl", "b.jsonl", "--dataset_weights", "0.5"], "--dataset_weights has 1 values for 2 --dataset"),
    (["--dataset_weights", "0.5", "0.5"], "--dataset_weights mixes several sources; give two or more --dataset"),
    (["--streaming", "--max_steps", "0"], "--max_steps must be greater than 0"),
    (["--method", "grpo", "--streaming"], "--streaming trains sft and dpo"),
])
def test_bad_input(capsys, tiny_args, extra, message):
    code, line = run_cli(capsys, tiny_args("sft", *extra))
    assert code == 2 and message in line, line


def test_template_without_a_correct_mask(capsys, tiny_args, tmp_path):
    """A template that ends no reply with an end-of-turn token: one line naming the fix, nothing trained."""
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")
    code, line = run_cli(capsys, tiny_args("sft", "--chat_template", str(template)))
    assert code == 2 and "cannot find a correct loss mask with the chat template of" in line
    assert "would not learn to stop" in line and "--chat_template FILE" in line
    assert not (tmp_path / "sft_run" / "adapter_config.json").exists()


def test_template_error_is_one_line(capsys, tiny_args, tmp_path):
    template = tmp_path / "strict.jinja"
    template.write_text("{% for m in messages %}{% if 'Answer' in m['content'] %}"
                        "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['content'] }}<|im_end|>"
                        "{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    code, line = run_cli(capsys, tiny_args("sft", "--chat_template", str(template)))
    assert code == 2 and "the chat template rejected a row (roles must alternate)" in line


def test_check_bad_show_tokens(capsys):
    code, line = run_cli(capsys, ["check", "--show_tokens", "-1"])
    assert code == 2 and "--show_tokens must be 0 (off) or more, got -1" in line


def test_missing_split_lists_available(capsys, tiny_args):
    _, line = run_cli(capsys, tiny_args("sft", "--split", "nope"))
    assert "available splits: train_sft, test_sft, train_prefs, test_prefs, train_gen, test_gen" in line


def test_hub_model_offline(capsys, tiny_args):
    code, line = run_cli(capsys, tiny_args("sft") + ["--model_name", "someorg/somemodel"])
    assert code == 2
    assert "could not load model 'someorg/somemodel' from the Hugging Face Hub" in line
    assert "omit --model_name to use the embedded smollm2-135m-instruct" in line


def test_missing_columns_for_sft(capsys, tiny_args, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "reply": "r"}\n')
    code, line = run_cli(capsys, tiny_args("sft", "--dataset", str(data)))
    assert code == 2
    assert "found columns [question, reply]" in line and "conversational: messages" in line
    assert "prompt_completion: prompt+completion" in line and "text: text" in line


def test_finished_run_is_not_overwritten(capsys, tiny_args, tmp_path):
    out = tmp_path / "sft_run"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    code, line = run_cli(capsys, tiny_args("sft"))
    assert code == 2 and "already holds a finished run; pass --resume" in line and "--overwrite_output_dir" in line
    assert (out / "adapter_config.json").read_text() == "{}"


# ---- the rest of the bad-input battery (issue: dataset checker, dry run, YAML configs)


@pytest.mark.parametrize("flag,name,text,expected", [
    ("--config", "c.yaml", "learning_rte: 0.1\n",
     ["unknown key 'learning_rte' in {path} (did you mean 'learning_rate'?)"]),
    ("--config", "c.yaml", "method: sft\nlora_r: [1, 2\n", ["{path} is not valid YAML at line 3"]),
    ("--dataset", "empty.jsonl", "", ["data file is empty: {path}"]),
    ("--dataset", "bad.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n',
     ["{path}: line 3 is not valid JSON", "fix or remove that line"]),
])
def test_bad_file_names_the_problem(capsys, tiny_args, tmp_path, flag, name, text, expected):
    """Unknown YAML keys get the closest one; bad YAML and data files say where."""
    path = tmp_path / name
    path.write_text(text)
    code, line = run_cli(capsys, tiny_args("sft", flag, str(path)))
    assert code == 2 and all(part.format(path=path) in line for part in expected)


@pytest.mark.parametrize("flag,value", [("--learning_rate", "-1"), ("--per_device_train_batch_size", "0"),
                                        ("--num_train_epochs", "0"), ("--lora_r", "-4"),
                                        ("--gradient_accumulation_steps", "0")])
def test_non_positive_numbers(capsys, tiny_args, flag, value):
    code, line = run_cli(capsys, tiny_args("sft", flag, value))
    assert code == 2 and f"{flag} must be greater than 0" in line


def test_dropout_below_zero(capsys, tiny_args):
    code, line = run_cli(capsys, tiny_args("sft", "--lora_dropout", "-0.1"))
    assert code == 2 and "--lora_dropout must be in [0, 1)" in line


def test_wrong_flag_type(capsys, tiny_args):
    code, line = run_cli(capsys, tiny_args("sft", "--lora_r", "many"))
    assert code == 2 and "argument --lora_r: invalid int value: 'many'" in line


def test_more_samples_than_rows_warns_and_uses_all(capsys, tiny_args, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "Hi", "completion": "Hello"}\n' * 3)
    assert main(tiny_args("sft", "--dataset", str(data), "--max_train_samples", "50", "--max_steps", "1")) == 0
    captured = capsys.readouterr()
    assert "--max_train_samples 50 is more than the 3 rows of split 'train'; using all of them" in captured.err
    assert "plan: sft on 3 rows" in captured.out


def test_unwritable_output_dir(capsys, tiny_args, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, line = run_cli(capsys, tiny_args("sft", "--output_dir", str(blocker / "run")))
    assert code == 2 and f"cannot write to --output_dir {blocker / 'run'}" in line


def test_overwrite_moves_the_old_run_aside(capsys, tiny_args, tmp_path):
    """--overwrite_output_dir moves the previous run (checkpoints included) aside, deletes nothing, and a later
    --resume cannot continue the old run's checkpoints."""
    out = tmp_path / "sft_run"
    (out / "checkpoint-50").mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    (out / "my_notes.txt").write_text("keep me")
    assert main(tiny_args("sft", "--overwrite_output_dir", "--max_steps", "1")) == 0
    [aside] = tmp_path.glob("sft_run.old-*")
    assert f"aside to {aside}" in capsys.readouterr().out
    assert (aside / "my_notes.txt").read_text() == "keep me" and (aside / "checkpoint-50").is_dir()
    assert not (out / "checkpoint-50").exists() and read_json(out / "unitune_run.json")["status"] == "finished"


def test_unfinished_run_is_not_trained_over(capsys, tiny_args, tmp_path):
    out = tmp_path / "sft_run"
    (out / "checkpoint-3").mkdir(parents=True)
    code, line = run_cli(capsys, tiny_args("sft"))
    assert code == 2 and "already holds an unfinished run" in line and "pass --resume" in line
    code, line = run_cli(capsys, tiny_args("sft", "--resume", "--overwrite_output_dir"))
    assert code == 2 and "contradict" in line


def test_no_chat_template(capsys, tiny_model_dir, tmp_path, tiny_args):
    plain = tmp_path / "plain-model"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink()
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    code, line = run_cli(capsys, tiny_args("sft") + ["--model_name", str(plain)])
    assert code == 2 and "has no chat template, which conversational data need" in line


# ---- data people have: column mapping and broken rows (issue: bring the data people actually have)

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


@pytest.mark.parametrize("columns,message", [
    ("prompt=question,answer", "--columns expects KEY=COLUMN[,KEY=COLUMN...], got 'answer'"),
    ("prompts=question", "unknown --columns key 'prompts'; keys are: "),
    ("prompt=quest", "--columns maps prompt to 'quest', which is not a column; the data has: question, good, bad"),
])
def test_column_mapping_errors(capsys, tiny_args, tmp_path, columns, message):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q", "good": "a", "bad": "b"}) + "\n")
    code, line = run_cli(capsys, tiny_args("dpo", "--dataset", str(data), "--columns", columns))
    assert code == 2 and message in line, line


@pytest.mark.parametrize("row,kind", [
    ({"messages": None}, "null or empty conversation"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}, "turn with no content"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}, "empty reply"),
])
def test_too_many_broken_rows(capsys, tiny_args, tmp_path, row, kind):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [CHAT, row, CHAT, row]))
    code, line = run_cli(capsys, tiny_args("sft", "--dataset", str(data)))
    assert code == 2 and f"2 of 4 rows of split 'train' cannot be used (2 {kind} (rows 1, 3))" in line, line
    assert "more than --max_bad_rows 0.05" in line and "raise --max_bad_rows" in line
    assert main(tiny_args("sft", "--dataset", str(data), "--max_bad_rows", "0.5", "--max_steps", "1")) == 0


@pytest.mark.parametrize("rows,message", [
    ([{"messages": None}, {"messages": []}], "no usable rows in split 'train': 2 null or empty conversation (rows 0, 1)"),
    ([{"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": 2}]}],
     "no usable rows in split 'train': 1 non-string content (row 0)"),
    ([{"prompt": "q", "chosen": "a", "rejected": None}], "no usable rows in split 'train': 1 pair with a missing side"),
    ([{"conversations": [{"from": "robot", "value": "x"}]}], "row 0: unknown speaker 'robot' in a ShareGPT conversation"),
])
def test_unusable_data(capsys, tiny_args, tmp_path, rows, message):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, line = run_cli(capsys, tiny_args("sft", "--dataset", str(data)))
    assert code == 2 and message in line, line


def test_max_bad_rows_range(capsys, tiny_args):
    code, line = run_cli(capsys, tiny_args("sft", "--max_bad_rows", "5"))
    assert code == 2 and "--max_bad_rows must be a share in [0, 1], got 5.0" in line


# ---- nothing lost, nothing surprising (issue 14)


def test_default_rewards_count_for_weights(tiny_args, capsys):
    """No --reward_funcs: the weights must match the defaults the data choose (accuracy, format)."""
    assert main(tiny_args("grpo", "--reward_weights", "1", "--max_completion_length", "4",
                          "--num_generations", "2")) == 2
    assert "--reward_weights has 1 values but the rewards are accuracy, format" in capsys.readouterr().err


def test_trl_rejection_is_one_line(tiny_args, capsys):
    """A flag combination TRL's config refuses becomes one line, not a ValueError traceback."""
    # GRPO evaluates with the micro-batch (1 prompt), which cannot hold the 2 generations of a group
    assert main(tiny_args("grpo", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2",
                          "--num_generations", "2", "--eval_split", "test_gen")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("unitune: error: TRL rejected these grpo settings:")
    assert "divisible by the number of generations used for evaluation (2); change the flags it names" in err


def test_resume_refuses_other_settings(capsys, tiny_args, tmp_path):
    assert main(tiny_args("sft", "--save_steps", "1")) == 0
    out = tmp_path / "sft_run"
    code = main(tiny_args("sft", "--resume", "--max_steps", "3", "--per_device_train_batch_size", "4"))
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err and "the effective batch" in err and "it was trained with" in err
    assert (out / "checkpoint-2").is_dir()
    assert main(tiny_args("sft", "--resume_from_checkpoint", str(out / "checkpoint-2"), "--max_steps", "3")) == 0
    assert read_json(out / "unitune_run.json")["global_step"] == 3


# ---- one process per run folder, and only in run folders (issue 29)


def files_under(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path):
    """tiny_args' --output_dir holding a user's project: a README.md and a script, no run."""
    folder = tmp_path / "sft_run"
    folder.mkdir()
    (folder / "README.md").write_text("# My project\n\nNotes that must survive.\n")
    (folder / "train.py").write_text("print('mine')\n")
    return folder


@pytest.mark.parametrize("extra", [[], ["--overwrite_output_dir"], ["--resume", "auto"]])
def test_output_dir_that_is_not_a_run(capsys, tiny_args, tmp_path, project, extra):
    """Checkpoints, tokenizer files and TRL's model card (README.md) would land among the user's files: refused,
    whatever the flag, and every file stays byte for byte."""
    before = files_under(tmp_path)
    code, line = run_cli(capsys, tiny_args("sft", *extra))
    assert code == 2 and f"--output_dir {project} is not a run folder (it holds README.md, train.py)" in line
    assert "whatever the overwrite flag" in line and files_under(tmp_path) == before


def test_output_dir_dot_in_a_project_folder(capsys, tiny_args, tmp_path, project, monkeypatch):
    before = files_under(tmp_path)
    monkeypatch.chdir(project)
    code, line = run_cli(capsys, tiny_args("sft", "--output_dir", "."))
    assert code == 2 and "--output_dir . is not a run folder" in line and files_under(tmp_path) == before


def test_resume_over_a_users_readme(capsys, tiny_args, tmp_path):
    out = tmp_path / "sft_run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "README.md").write_text("# What I tried in this run\n")
    before = files_under(tmp_path)
    code, line = run_cli(capsys, tiny_args("sft", "--resume"))
    assert code == 2 and f"{out / 'README.md'} is not a model card" in line and files_under(tmp_path) == before


@pytest.mark.parametrize("command", [["train"], ["train", "--resume"], ["train", "--overwrite_output_dir"],
                                     ["merge"], ["export"]])
def test_a_run_another_process_trains_in(capsys, tiny_args, tmp_path, command):
    """A process holds the run's lock: a second train, --resume, --overwrite_output_dir (it would move the folder
    away under the running process), merge and export refuse in one line naming it; nothing moves."""
    from unitune.train.lock import RunLock, holder

    out = tmp_path / "sft_run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    lock = RunLock()
    lock.take(out)  # this process stands in for the other: a lock is per open file, so it refuses itself too
    try:
        before = files_under(tmp_path)
        argv = tiny_args("sft", *command[1:]) if command[0] == "train" else \
            [command[0], "--run", str(out), "--output", str(tmp_path / "model")]
        code, line = run_cli(capsys, argv)
        held = holder(out)
        assert code == 2 and f"unitune pid {os.getpid()} on host {held['host']} has been training in it since " \
            f"{held['since']}" in line and "wait for it to finish, or stop it" in line, line
        assert files_under(tmp_path) == before and not list(tmp_path.glob("sft_run.old-*"))
    finally:
        lock.release()


# ---- the UI answers only its owner (issue 29)


@pytest.mark.parametrize("argv,message", [
    (["ui", "--auth", "me:a-long-secret"], "--auth takes a file holding USER:PASS, not the password itself"),
    (["ui", "--auth", "/nope/ui-auth"], "--auth /nope/ui-auth: no such file; give a file holding USER:PASS"),
    (["ui", "--host", "0.0.0.0", "--no_token"], "--no_token would open the UI on --host 0.0.0.0 to anyone"),
    (["ui", "--allow_dir", "/nope/dir"], "--allow_dir /nope/dir is not a folder"),
    (["ui", "--allow_dir", "~nosuchuser-unitune"], "--allow_dir ~nosuchuser-unitune is not a folder"),
    (["ui", "--port", "0"], "--port must be between 1 and 65535, got 0"),
])
def test_ui_flags(capsys, argv, message):
    """Refused before anything listens; a password given on the command line is never echoed back."""
    code, line = run_cli(capsys, argv)
    assert code == 2 and message in line and "a-long-secret" not in line, line


def test_ui_auth_file_that_cannot_be_read(capsys, tmp_path):
    auth = tmp_path / "auth"
    auth.write_bytes(b"me:\xff\xfe-not-utf8")
    code, line = run_cli(capsys, ["ui", "--auth", str(auth)])
    assert code == 2 and f"cannot read --auth {auth} (not UTF-8 text)" in line and "xff" not in line, line


@pytest.mark.parametrize("values,message", [
    ({"method": "grpo", "reward_funcs": "my_rewards.py:score"}, "unless started with --allow_code"),
    ({"method": "grpo", "reward_funcs": "os:system"}, "unless started with --allow_code"),
    ({"method": "sft", "chat_template": "{outside}/t.jinja"}, "lies outside the runs folder"),
    ({"method": "sft", "dataset": "{outside}/d.jsonl"}, "start the UI with --allow_dir FOLDER"),
    ({"method": "sft", "output_dir": "{outside}/run"}, "the UI writes only there"),
])
def test_ui_page_refusals(tmp_path, monkeypatch, values, message):
    """What a page may not do: one line on the page naming the flag that allows it, nothing queued, nothing written."""
    from unitune.config import UiConfig
    from unitune.ui.actions import Ui

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "t.jinja").write_text("{{ messages }}")
    (outside / "d.jsonl").write_text(json.dumps(CHAT) + "\n")
    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir="runs"))
    try:
        said = ui.start({k: v.format(outside=outside) for k, v in values.items()})
        assert said.startswith("**Error:** ") and message in said and "\n" not in said, said
        assert ui.queue.jobs == [] and not (outside / "run").exists()
    finally:
        ui.close()
