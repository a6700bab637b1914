"""Speed probes you can trust (fast/probes.py): keyed by the whole machine (ARM and macOS too), kept 30 days,
refused when the machine was busy, measured again when their file is broken or partial, and by `unitune env
--reprobe`."""

import json
import os
import platform
import subprocess
import sys
import time

import pytest
import torch

from unitune.cli import main
from unitune.fast import packed_linear, probes
from unitune.models import precision

NEOVERSE_CORE = """processor\t: {}
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""
NEOVERSE_N1 = "\n".join(NEOVERSE_CORE.format(n) for n in (0, 1))  # two cores, each listing the same lines
# a Graviton3 (Neoverse V1), bf16 in its Features: another CPU, which the old key (no "model name") took for the N1
NEOVERSE_V1 = NEOVERSE_N1.replace("0xd0c", "0xd40").replace("0x3", "0x1").replace("asimddp", "asimddp bf16 i8mm")


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("UNITUNE_HOME", str(tmp_path))
    return tmp_path


def _arm(monkeypatch, tmp_path, text: str, name: str):
    """An aarch64 Linux machine whose /proc/cpuinfo reads ``text`` (what machine.cpu_info finds there: no model name,
    no "flags" line)."""
    cpuinfo = tmp_path / name
    cpuinfo.write_text(text)
    monkeypatch.setattr(probes, "CPUINFO", cpuinfo, raising=False)
    monkeypatch.setattr(probes, "cpu_info", lambda: ("aarch64", set()))
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(platform, "system", lambda: "Linux")


def test_arm_cpus_are_told_apart(monkeypatch, tmp_path, home):
    _arm(monkeypatch, tmp_path, NEOVERSE_N1, "n1")
    n1 = probes.probe_file("dtype")
    _arm(monkeypatch, tmp_path, NEOVERSE_V1, "v1")
    assert probes.probe_file("dtype") != n1
    assert probes.cpu_identity()["CPU part"] == "0xd40"
    # a board names itself on a "Model" line (a Raspberry Pi): two boards with one core type are two machines
    _arm(monkeypatch, tmp_path, NEOVERSE_N1 + "\nModel\t: Raspberry Pi 4 Model B Rev 1.4\n", "pi")
    assert probes.probe_file("dtype") != n1 and probes.cpu_identity()["Model"] == "Raspberry Pi 4 Model B Rev 1.4"
    _arm(monkeypatch, tmp_path, NEOVERSE_N1, "n1")
    identity = probes.cpu_identity()
    assert identity["CPU implementer"] == "0x41" and identity["CPU part"] == "0xd0c"  # each value once, not per core
    assert probes.probe_file("dtype") == n1  # and the same machine keeps its key


def test_macos_names_the_chip(monkeypatch, tmp_path, home):
    monkeypatch.setattr(probes, "CPUINFO", tmp_path / "no-such-file", raising=False)
    monkeypatch.setattr(probes, "cpu_info", lambda: ("arm", set()))  # what machine.cpu_info says on macOS
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    keys = set()
    for chip in ("Apple M1", "Apple M3 Max"):
        brand = {"machdep.cpu.brand_string": chip}
        monkeypatch.setattr(probes, "sysctl", lambda name, brand=brand: brand.get(name, ""), raising=False)
        keys.add(probes.probe_file("dtype"))
    assert len(keys) == 2
    assert probes.cpu_identity() == {"brand": "Apple M3 Max"}


@pytest.mark.parametrize("change", ["arch", "cores", "threads", "torch", "flags"])
def test_every_part_of_the_machine_is_in_the_key(monkeypatch, home, change):
    before = probes.probe_file("dtype")
    if change == "arch":
        monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    elif change == "cores":
        monkeypatch.setattr(os, "cpu_count", lambda: 512)
    elif change == "threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 333)
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    else:
        monkeypatch.setattr(probes, "cpu_info", lambda: ("Test CPU", {"a_new_flag"}))
    assert probes.probe_file("dtype") != before


def _counted(result):
    calls = []
    return calls, lambda: calls.append(1) or dict(result)


def _age(path, days: float):
    """The kept probe as if measured ``days`` ago, read by a new process."""
    record = json.loads(path.read_text())
    record["measured_at"] = time.time() - days * 86400
    path.write_text(json.dumps(record))
    probes._READ.clear()


def test_probes_expire_after_30_days(home):
    calls, measure = _counted({"x": 1})
    assert probes.cached("test", measure)[0] == {"x": 1} and len(calls) == 1
    path = probes.probe_file("test")
    assert abs(json.loads(path.read_text())["measured_at"] - time.time()) < 60  # when it was measured is kept
    _age(path, 29)
    found, where = probes.cached("test", measure)
    assert found == {"x": 1} and len(calls) == 1 and "cached" in where
    _age(path, 31)
    found, where = probes.cached("test", measure)
    assert found == {"x": 1} and len(calls) == 2 and "measured now" in where


def _clocks(monkeypatch, ran: float, wanted: float):
    """While the probe ran, its threads ran ``ran`` seconds of the ``wanted`` seconds they wanted to run."""
    readings = iter([(10.0, 10.0, 100.0), (10.0 + ran, 10.0 + wanted, 101.0)])
    monkeypatch.setattr(probes, "cpu_clock", lambda: next(readings), raising=False)


def test_a_probe_taken_while_the_machine_was_busy_is_refused(monkeypatch, home):
    calls, measure = _counted({"x": 1})
    _clocks(monkeypatch, ran=1.2, wanted=2.0)  # they waited 40% of the time for a CPU: another process ran
    found, where = probes.cached("test", measure)
    assert found is None and len(calls) == 1
    assert "busy" in where and "60%" in where and "not kept" in where
    assert "result" not in json.loads(probes.probe_file("test").read_text())  # the busy timing is not kept
    # the other processes of the launch take the refusal and agree, without measuring on a busy machine
    probes._READ.clear()
    assert probes.cached("test", measure)[0] is None and len(calls) == 1
    # minutes later, on an idle machine, it is measured again and kept
    _age(probes.probe_file("test"), 11 / 1440)
    _clocks(monkeypatch, ran=1.96, wanted=2.0)
    assert probes.cached("test", measure)[0] == {"x": 1} and len(calls) == 2
    assert json.loads(probes.probe_file("test").read_text())["cpu_share"] == pytest.approx(0.98)


def _spin(seconds: float):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return {"x": 1}


SCHEDSTAT = os.path.exists(f"/proc/self/task/{os.getpid()}/schedstat")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not SCHEDSTAT,
                    reason="Linux's run-queue counts (schedstat) and CPU affinity")
def test_another_process_on_the_probes_core_refuses_it(home):
    """Real clocks: the probe (a Python loop on this thread) and a busy process share one core, so the probe's thread
    waits for it about half the time."""
    mine = os.sched_getaffinity(0)
    core = min(mine)
    rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(rival.pid, {core})
        os.sched_setaffinity(0, {core})
        time.sleep(0.1)  # the rival is running
        found, where = probes.cached("test", lambda: _spin(0.3))
    finally:
        os.sched_setaffinity(0, mine)
        rival.kill()
        rival.wait()
    assert found is None and "busy" in where


def test_without_run_queue_counts_a_probe_that_did_not_get_the_cpu_is_refused(monkeypatch, home):
    """Where the kernel does not count run-queue waits (macOS), a probe's threads are taken to want the whole wall
    time: one that got no CPU time over it (here it slept, as while other processes hold the cores) is refused."""
    monkeypatch.setattr(probes, "run_queue_seconds", lambda: None, raising=False)
    found, where = probes.cached("test", lambda: time.sleep(0.2) or {"x": 1})
    assert found is None and "busy" in where


@pytest.mark.parametrize("text", ["", "{not json", "[]", '{"packed": true}', '{"sgemm_s": "fast", "packed": true}'])
def test_a_broken_or_partial_packed_probe_is_measured_again(monkeypatch, home, text):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    calls, measure = _counted({"sgemm_s": 2.0, "packed_s": 1.0, "packed": True})
    monkeypatch.setattr(packed_linear, "measure", measure)
    path = probes.probe_file("packed-linear")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    pays, why = packed_linear.packing_pays()
    assert pays and "2.00x sgemm" in why and "measured now" in why and len(calls) == 1
    assert json.loads(path.read_text())["result"]["sgemm_s"] == 2.0


def test_env_reprobe_measures_again(monkeypatch, home, capsys):
    monkeypatch.setattr(probes, "cpu_info", lambda: ("Test CPU", {"avx512_bf16"}))
    monkeypatch.setattr(precision, "cpu_info", lambda: ("Test CPU", {"avx512_bf16"}))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    dtype_calls, dtype_measure = _counted({"fp32_s": 2.0, "bf16_s": 1.0, "bf16": True,
                                           "parity": {"rel_error": 0.004, "limit": 0.02, "passed": True}})
    packed_calls, packed_measure = _counted({"sgemm_s": 1.0, "packed_s": 1.0, "packed": False})
    monkeypatch.setattr(precision, "measure", dtype_measure)
    monkeypatch.setattr(packed_linear, "measure", packed_measure)
    assert precision.cpu_dtype()[0] == torch.bfloat16 and packed_linear.packing_pays()[0] is False
    assert main(["env"]) == 0 and len(dtype_calls) == len(packed_calls) == 1  # plain `env` measures nothing
    assert "speed probes kept for this machine: dtype-" in capsys.readouterr().out
    assert main(["env", "--reprobe"]) == 0
    out = capsys.readouterr().out
    assert len(dtype_calls) == len(packed_calls) == 2  # both measured again, though kept a minute ago
    assert "speed probes measured again (2 kept file(s) removed)" in out
    assert "dtype: native bf16, autocast ran 2.00x fp32 and passed the parity check" in out and "measured now" in out
