"""What a page may run, read and write (unitune.ui.gates): built-in rewards always, reward files and modules only
with --allow_code; reads under the runs folder (uploads included) or an --allow_dir folder; writes under the runs
folder; a symlink cannot lead out."""

from pathlib import Path

import pytest

from unitune.errors import UserError
from unitune.ui.gates import Gates, looks_local, within


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "runs" / ".ui" / "uploads").mkdir(parents=True)
    return tmp_path / "runs"


def test_built_in_rewards_pass_and_code_needs_allow_code(root):
    Gates(root).code(["accuracy", "format", "length", "reference"])
    for spec in ("my_rewards.py:score", "some.module:fn", "/abs/r.py:f"):
        with pytest.raises(UserError, match="--allow_code") as err:
            Gates(root).mapping({"method": "grpo", "reward_funcs": ["accuracy", spec]})
        assert spec in str(err.value) and "\n" not in str(err.value)
        Gates(root, allow_code=True).mapping({"method": "grpo", "reward_funcs": ["accuracy", spec]})


def test_the_calculator_passes_and_tool_or_environment_code_needs_allow_code(root):
    Gates(root).mapping({"method": "grpo", "tools": ["calculator"]})
    for key, spec in (("tools", ["calculator", "my_tools.py:add"]), ("environment", "envs.py:Game")):
        with pytest.raises(UserError, match=f"{key} '.*' would run code from a file or module.*--allow_code"):
            Gates(root).mapping({"method": "grpo", key: spec})
        Gates(root, allow_code=True).mapping({"method": "grpo", key: spec})


def test_hub_ids_pass_and_local_paths_outside_are_refused(root, tmp_path):
    gates = Gates(root)
    gates.mapping({"model_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset": "trl-lib/Capybara",
                   "reward_model": "org/reward"})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "data.jsonl").write_text("{}\n")
    for key, value in (("dataset", outside / "data.jsonl"), ("model_name", outside), ("reward_model", outside),
                       ("chat_template", Path.home() / ".ssh" / "id_rsa"), ("chat_template", "template.jinja")):
        with pytest.raises(UserError, match="--allow_dir") as err:
            gates.mapping({key: str(value)})
        assert f"{key} {value}" in str(err.value)
    Gates(root, allow_dirs=[str(outside)]).mapping({"dataset": str(outside / "data.jsonl"), "model_name": str(outside)})


def test_uploads_and_files_in_the_runs_folder_pass(root):
    upload = root / ".ui" / "uploads" / "data.jsonl"
    upload.write_text("{}\n")
    (root / "t.jinja").write_text("{{ messages }}")
    Gates(root).mapping({"dataset": str(upload), "chat_template": str(root / "t.jinja"),
                         "output_dir": str(root / "sft_new")})


def test_a_symlink_out_of_the_runs_folder_is_refused(root, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("key")
    (root / "innocent.jinja").symlink_to(secret)
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(UserError, match="outside the runs folder"):
        Gates(root).mapping({"chat_template": str(root / "innocent.jinja")})
    with pytest.raises(UserError, match="outside the runs folder"):
        Gates(root).mapping({"output_dir": str(root / "escape" / "run")})
    with pytest.raises(UserError, match="outside the runs folder"):
        Gates(root).mapping({"dataset": str(root / ".." / "secret.txt")})


def test_writes_go_only_under_the_runs_folder(root, tmp_path):
    with pytest.raises(UserError, match="the UI writes only there"):
        Gates(root, allow_dirs=[str(tmp_path)]).mapping({"output_dir": str(tmp_path / "run")})  # --allow_dir reads


def test_looks_local_and_within():
    assert not looks_local("HuggingFaceTB/SmolLM2-135M-Instruct") and not looks_local("")
    assert all(map(looks_local, ("./data", "/abs", "~/x", "d.jsonl", "a/b/c", "t.jinja")))
    assert within("/a/b/c", [Path("/a/b")]) and within("/a/b", [Path("/a/b")]) and not within("/a/bc", [Path("/a/b")])


def test_values_no_path_can_be_are_refused_in_one_line(root):
    """~nosuchuser, a NUL byte or a name too long: refused by the gate, never a traceback on the page."""
    gates = Gates(root)
    for value in ("~nosuchuser-unitune/data.jsonl", "data\x00.jsonl", "x" * 300 + "/d.jsonl"):
        with pytest.raises(UserError, match="--allow_dir"):
            gates.read("dataset", value)


def test_a_run_the_page_names_is_gated_on_its_record(root, tmp_path):
    """Evaluate, Export and Chat read what a run's record names (anyone may have written it); a folder named like a
    flag would be read as one by the job's command line."""
    import json

    gates = Gates(root)
    run = root / "sft_theirs"
    run.mkdir()
    (run / "unitune_run.json").write_text(json.dumps({"settings": {"model_name": str(tmp_path / "their-model"),
                                                                   "dataset": None}}))
    (tmp_path / "their-model").mkdir()
    with pytest.raises(UserError, match="model_name .* lies outside the runs folder"):
        gates.run(run)
    assert not gates.readable("model_name", str(tmp_path / "their-model"))
    Gates(root, allow_dirs=[str(tmp_path / "their-model")]).run(run)
    (run / "unitune_run.json").write_text(json.dumps({"settings": {"model_name": None, "dataset": None}}))
    gates.run(run)  # the embedded model and the bundled data
    flag = root / "--trust_reward_code"
    flag.mkdir()
    with pytest.raises(UserError, match="starts with '-'"):
        gates.run(flag)


def test_every_mixed_source_passes_the_read_gate(root, tmp_path):
    """--dataset with several sources (the form's list): one outside the allowed folders is refused."""
    inside = root / ".ui" / "uploads" / "a.jsonl"
    inside.write_text("{}\n")
    outside = tmp_path / "b.jsonl"
    outside.write_text("{}\n")
    Gates(root).mapping({"dataset": [str(inside), "trl-lib/Capybara"]})
    with pytest.raises(UserError, match="--allow_dir") as err:
        Gates(root).mapping({"dataset": [str(inside), str(outside)]})
    assert f"dataset {outside}" in str(err.value)
