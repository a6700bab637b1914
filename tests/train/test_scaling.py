"""Scaling out, run for real on CPU processes (gloo): two torchrun nodes, the shipped FSDP and DeepSpeed ZeRO-2/3
accelerate configs. Each run must leave a complete run folder whose adapter loads, and train exactly as one
2-process DDP launcher does (same seed, same global batch of 4 rows, same data order)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from unitune.train.records import record_of, run_status, status_line

from conftest import ROOT, read_json, tiny_config

BIN = Path(sys.executable).parent
STEPS = 3
# Ports 2955x: no other test uses them, so these tests can run beside the rest.
PORTS = {"reference": 29550, "nodes": 29551, "fsdp": 29552, "deepspeed_zero2": 29553, "deepspeed_zero3": 29554,
         "grpo_ddp": 29555, "grpo_zero3": 29556, "failure": 29557}

# FSDP on CPU processes: accelerate 1.15 turns ACCELERATE_USE_FSDP into DistributedType.FSDP only for GPU-like
# device types (AcceleratorState.__init__); CPU processes stay MULTI_CPU, i.e. plain DDP, silently. torch 2.13 itself
# shards on CPU with gloo (FSDP2 fully_shard), so this shim does the promotion accelerate skips, nothing else: the
# plugin, wrapping, sharding, checkpointing and saving are accelerate's and transformers' own, from fsdp.yaml.
FSDP_ON_CPU = '''
import sys
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def init(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = init
from unitune.cli import main

sys.exit(main(sys.argv[1:]))
'''


# A launch here takes 10-60 s; a hang is cut at HANG_S. PYTHONFAULTHANDLER: the SIGABRT that ends a hung launch makes
# every process of it (launcher and ranks) print where each of its threads stood into its log.
HANG_S = 300


def env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **extra}


def launch(cmd, log: Path) -> subprocess.Popen:
    """Start one launcher, its output (its ranks' included) into ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env(), stdout=out, stderr=subprocess.STDOUT)


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = HANG_S) -> list[int]:
    """The launchers' exit codes. Past ``timeout`` the test fails with every log's tail, each process's stacks
    included (SIGABRT + faulthandler), so a hang says where it hung instead of only that it did."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        # the ranks first (torchrun starts each in a session of its own), then the launchers
        hung = [child for proc in procs if proc.poll() is None
                for child in psutil.Process(proc.pid).children(recursive=True)] + procs
        for each in hung:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                each.send_signal(signal.SIGABRT)
        time.sleep(5)
        for each in hung:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                each.kill()
        for proc in procs:
            proc.wait()
        tails = "\n".join(f"--- {log.name}:\n{log.read_text()[-6000:]}" for log in logs)
        pytest.fail(f"hung past {timeout} s; stacks and logs:\n{tails}")
    return [proc.returncode for proc in procs]


def train_args(model_dir, out, dtype: str | None = "float32"):
    """The run every launcher below trains: 3 steps of 2 rows per process, 2 processes. In fp32: the launchers are
    compared with DDP to 1e-5, which bf16 autocast's rounding exceeds (2e-5 on a CPU with native bf16, where
    --dtype auto picks it); ``dtype`` None leaves --dtype auto."""
    return ["train", "--method", "sft", "--model_name", str(model_dir), "--output_dir", str(out),
            "--max_steps", str(STEPS), "--seed", "3", "--learning_rate", "1e-3", "--max_train_samples", "12",
            "--lora_dropout", "0", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            *(["--dtype", dtype] if dtype else [])]


def run(cmd, log: Path):
    code, = wait_all([launch(cmd, log)], [log])
    assert code == 0, log.read_text()[-3000:]


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in read_json(out / "trainer_state.json")["log_history"] if "loss" in e]


def check_run(out: Path, model_dir: Path, reference: Path) -> None:
    """A complete run folder of 2 processes whose adapter loads on the base and equals the reference's."""
    for name in ("unitune_run.json", "trainer_state.json", "adapter_config.json", "adapter_model.safetensors",
                 "generation_config.json", f"checkpoint-{STEPS}/trainer_state.json"):
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    assert not list(out.glob(".*")), "temp files left by racing ranks"
    record = read_json(out / "unitune_run.json")
    assert record["hardware"]["world_size"] == 2 and record["global_step"] == STEPS
    assert len(losses(out)) == STEPS
    # Same ranks, same rows, same loss reduction as the DDP reference; only the summation order of the gradient
    # reductions differs (ZeRO-3's reduce-scatter most: losses 1e-7 relative, LoRA tensors 5e-5 relative in norm).
    # Training anything else (other rows, one rank's gradients only) moves both by far more than 1e-5 / 1e-3.
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5), (losses(out), losses(reference))
    saved, expected = load_file(out / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert saved.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.linalg.norm(saved[key] - tensor) <= 1e-3 * torch.linalg.norm(tensor), key
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out)
    loaded = get_peft_model_state_dict(model)
    assert loaded.keys() == saved.keys()  # every saved tensor landed in a LoRA layer, none missing
    assert any(tensor.abs().max() > 0 for key, tensor in loaded.items() if "lora_B" in key)  # trained, not init


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """One torchrun launcher, 2 processes, DDP: what every other launcher must reproduce."""
    out = tmp_path_factory.mktemp("scaling") / "reference"
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(PORTS["reference"]),
         "-m", "unitune", *train_args(tiny_model_dir, out)], out.with_suffix(".log"))
    assert read_json(out / "unitune_run.json")["hardware"]["world_size"] == 2
    return out


@pytest.mark.slow
def test_two_nodes_train_one_run(tiny_model_dir, reference, tmp_path):
    """Two torchrun launchers (--nnodes 2, one process each) on 127.0.0.1 train one run into a shared folder."""
    out = tmp_path / "nodes"
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    procs = [launch([str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                     "--master_addr", "127.0.0.1", "--master_port", str(PORTS["nodes"]),
                     "-m", "unitune", *train_args(tiny_model_dir, out)], log) for rank, log in enumerate(logs)]
    for code, log in zip(wait_all(procs, logs), logs):
        assert code == 0, f"{log.name}:\n{log.read_text()[-3000:]}"
    check_run(out, tiny_model_dir, reference)
    # One writer: the run line comes from global rank 0 (node 0) only.
    assert "unitune: run written" in logs[0].read_text() and "unitune: run written" not in logs[1].read_text()


@pytest.mark.slow
def test_fsdp_config_shards_two_cpu_processes(tiny_model_dir, reference, tmp_path):
    """examples/accelerate/fsdp.yaml (FSDP2, transformer wrap, full state dict) on 2 CPU processes."""
    shim, out = tmp_path / "fsdp_on_cpu.py", tmp_path / "fsdp"
    shim.write_text(FSDP_ON_CPU)
    # --mixed_precision no: the config's bf16 is for GPUs; on CPU unitune decides the dtype (--dtype).
    run([str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "examples/accelerate/fsdp.yaml"),
         "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(PORTS["fsdp"]),
         str(shim), *train_args(tiny_model_dir, out)], tmp_path / "fsdp.log")
    # Written only by accelerate's save_fsdp_model: FSDP, not a silent DDP fallback, trained this run.
    assert list((out / f"checkpoint-{STEPS}").glob("pytorch_model_fsdp*")), "FSDP did not run"
    check_run(out, tiny_model_dir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_config_two_cpu_processes(name, tiny_model_dir, reference, tmp_path):
    """The shipped ZeRO-2/3 configs on 2 CPU processes (DeepSpeed's CPU accelerator, gloo). The first run on a
    machine JIT-compiles DeepSpeed's shared-memory all-reduce op (g++, ~2 min on 2 cores, cached after). --dtype
    auto: under DeepSpeed on CPU it is fp32 even where the CPU has native bf16 (DeepSpeed's bf16 casts the weights,
    and with unitune's autocast the first matmul failed: float != BFloat16)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    out = tmp_path / name
    run([str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / f"examples/accelerate/{name}.yaml"),
         "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(PORTS[name]),
         "-m", "unitune", *train_args(tiny_model_dir, out, dtype=None)], tmp_path / f"{name}.log")
    hardware = read_json(out / "unitune_run.json")["hardware"]
    assert hardware["dtype"] == "torch.float32" and "DeepSpeed on CPU processes: fp32" in hardware["reason"]
    # DeepSpeed's engine wrote a ZeRO checkpoint, partitioned over both ranks.
    for rank in (0, 1):
        assert (out / f"checkpoint-{STEPS}" / f"global_step{STEPS}" /
                f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    check_run(out, tiny_model_dir, reference)


@pytest.mark.parametrize("name", ["multi_gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "cpu"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
    expected = {"multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED",
                "deepspeed_zero3": "DEEPSPEED", "cpu": "MULTI_GPU"}[name]
    assert str(config.distributed_type).endswith(expected) and config.num_processes >= 2
    if name == "fsdp":  # FSDP2; a sharded state dict would leave the run folder without an adapter
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


# GRPO's rewards for the tests below: the length of each completion varies, so the advantages and the update are not
# zero and the policy moves from step 1 on; FLAKY fails on rank 1 only.
REWARDS = '''
import os


def chars(completions, **kwargs):
    return [float(len(c if isinstance(c, str) else "".join(m["content"] for m in c))) for c in completions]


def flaky(completions, **kwargs):
    if os.environ["RANK"] == "1":
        raise ValueError("broke on rank 1")
    return [0.0] * len(completions)
'''


def grpo_args(model_dir, out, reward: str, learning_rate: str = "1e-1"):
    """3 GRPO steps, 2 prompts of 2 completions (8 tokens) per step over 2 processes; fp32 (see train_args). The
    large learning rate moves the policy far enough in one step that it samples other tokens than before."""
    return ["train", "--method", "grpo", "--model_name", str(model_dir), "--output_dir", str(out),
            "--max_steps", str(STEPS), "--seed", "3", "--learning_rate", learning_rate, "--max_train_samples", "8",
            "--lora_dropout", "0", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--num_generations", "2", "--max_completion_length", "8", "--reward_funcs", reward]


def completions(out: Path) -> list[tuple]:
    """What rank 0 sampled at each step (completions.jsonl): (step, prompt, completion)."""
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    return [(row["call"], row["prompt"], row["completion"]) for row in rows]


@pytest.mark.slow
def test_grpo_under_zero3_samples_the_trained_policy(tokenizer, tmp_path):
    """GRPO under the shipped ZeRO-3 config samples the completions a DDP run samples, step for step, with the same
    seed. The MLP weights (64 x 2048) exceed DeepSpeed's default stage3_param_persistence_threshold (1e5 elements),
    so ZeRO-3 keeps them partitioned between steps as it does a real model's: merging LoRA into such a weight for
    sampling (fast.lora_merge) crashed, or sampled from the base model. A run whose policy barely moves (lr 1e-12)
    samples other completions after step 1, so equal completions are the trained policy's."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    model_dir = tmp_path / "wide"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama", tokenizer, intermediate_size=2048)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS)
    reward = f"{rewards}:chars"
    runs = {name: tmp_path / name for name in ("ddp", "zero3", "untrained")}
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(PORTS["grpo_ddp"]),
         "-m", "unitune", *grpo_args(model_dir, runs["ddp"], reward)], tmp_path / "ddp.log")
    run([str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "examples/accelerate/deepspeed_zero3.yaml"),
         "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(PORTS["grpo_zero3"]),
         "-m", "unitune", *grpo_args(model_dir, runs["zero3"], reward)], tmp_path / "zero3.log")
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(PORTS["grpo_ddp"]),
         "-m", "unitune", *grpo_args(model_dir, runs["untrained"], reward, "1e-12")], tmp_path / "untrained.log")
    sampled = {name: completions(out) for name, out in runs.items()}
    assert [step for step, _, _ in sampled["zero3"]] == [1, 1, 2, 2, 3, 3]
    assert sampled["zero3"] == sampled["ddp"]
    untrained = sampled["untrained"]
    assert untrained[:2] == sampled["ddp"][:2]  # step 1 samples the initial policy in every run
    assert untrained[2:] != sampled["ddp"][2:]  # later steps sample the trained policy
    assert read_json(runs["zero3"] / "unitune_run.json")["status"] == "finished"


@pytest.mark.slow
def test_a_failure_on_rank_1_lands_in_the_run_record(tiny_model_dir, tmp_path):
    """Rank 1 fails (its reward function raises); rank 0 writes the run record, yet the record reads as failed with
    rank 1's error, whatever became of rank 0 (torchrun stops it)."""
    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS)
    out, log = tmp_path / "run", tmp_path / "run.log"
    code, = wait_all([launch([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(PORTS["failure"]),
                              "-m", "unitune", *grpo_args(tiny_model_dir, out, f"{rewards}:flaky")], log)], [log])
    assert code != 0, log.read_text()[-3000:]
    assert run_status(out) == "failed", log.read_text()[-3000:]
    assert "rank 1: UserError: reward function" in status_line(out) and "ValueError: broke on rank 1" in \
        status_line(out), status_line(out)
    assert [f["rank"] for f in record_of(out)["failed_ranks"]] == [1]
