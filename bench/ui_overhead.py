"""What an open web UI costs a training job (issue 29: at most 2%): the same short SFT run, trained with `unitune ui`
up and N browser tabs polling its Runs tab, and without any UI, alternating A/B/A/B in one run on this machine.

    .venv/bin/python bench/ui_overhead.py                              # embedded model, 3 tabs, 3 pairs of runs
    .venv/bin/python bench/ui_overhead.py --tabs 5 --pairs 4 --steps 60
    .venv/bin/python bench/ui_overhead.py --tiny --steps 3 --pairs 1   # a smoke test on a tiny model: no timing value

A: `unitune train` alone. B: the same command with `unitune ui` running (its own process, as a user starts it) and
N simulated tabs, each a gradio_client session signed in through the URL the UI printed (its token cookie),
calling the Runs tab's timer event (/refresh) every REFRESH_S seconds as the page's gr.Timer does. Each tab selects
the training run once a tick lists it, so its curve is drawn as the Runs tab draws a running job's live curve (the
run was not started by this UI, which draws the live curve only of its own job); the runs folder also
holds --old finished runs (copies of a warm-up run), whose rows every tick lists. The UI starts, and the tabs
sign in, before the training starts, and stop after it ends.

The figure is the median of the Trainer's train_runtime (the training loop; model loading excluded) with the UI over
without: 1.02 is 2% slower. The job's wall time (process start to exit) is printed beside it. The CPU is named, as
in bench/run.py; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ENV = os.environ | {"PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu(pid: int) -> float:
    """A process's user + system CPU seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tiny_model(folder: Path) -> str:
    """A randomly initialised 2-layer Llama with the embedded tokenizer (as tests/conftest.py builds it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unitune.models.load import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(None))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def train(runs: Path, name: str, args, model: str | None) -> dict:
    """One `unitune train` process: its train_runtime (the Trainer's) and wall time."""
    out = runs / name
    argv = [sys.executable, "-m", "unitune", "train", "--method", "sft", "--output_dir", str(out),
            "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch),
            "--gradient_accumulation_steps", "1", "--max_train_samples", str(args.steps * args.batch),
            *(["--model_name", model] if model else [])]
    log = runs.parent / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV,
                              timeout=args.timeout).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"bench: training {name} failed (exit {code}):\n{log.read_text()[-2000:]}")
    state = json.loads((out / "trainer_state.json").read_text())
    runtime = next(e["train_runtime"] for e in reversed(state["log_history"]) if "train_runtime" in e)
    return {"train_runtime": runtime, "wall": wall}


class Ui:
    """`unitune ui` in its own process, and the tabs polling it."""

    def __init__(self, runs: Path, tabs: int, selected: list[str]):
        from unitune.ui.refresh import REFRESH_S

        self.every = REFRESH_S
        self.log = runs.parent / "ui.log"
        self.process = subprocess.Popen([sys.executable, "-m", "unitune", "ui", "--port", str(free_port()),
                                         "--runs_dir", str(runs)], stdout=open(self.log, "w"),
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV, cwd=runs.parent)
        self.url = self._printed_url()
        self.base = re.match(r"http://[^/?]+", self.url).group(0)
        self.headers = {"Cookie": self._cookie()}
        self.stop = threading.Event()
        self.polls, self.selecting, self.errors = 0, 0, []  # selecting: polls that drew the run's curve
        self.lock = threading.Lock()
        clients = [self._client() for _ in range(tabs)]  # signed in before the training starts
        self.threads = [threading.Thread(target=self._tab, args=(c, selected), daemon=True) for c in clients]
        for thread in self.threads:
            thread.start()
        self.cpu = (process_cpu(self.process.pid), time.process_time())  # the server's and the tabs' CPU seconds

    def cpu_used(self) -> tuple[float, float]:
        """CPU seconds since the tabs started: the UI server's, and the simulated tabs' (this process; a browser
        on the same machine spends its own)."""
        return process_cpu(self.process.pid) - self.cpu[0], time.process_time() - self.cpu[1]

    def _printed_url(self) -> str:
        end = time.time() + 180
        while time.time() < end:
            if self.process.poll() is not None:
                raise SystemExit(f"bench: unitune ui exited:\n{self.log.read_text()[-2000:]}")
            found = re.search(r"unitune ui: open (http://\S+)", self.log.read_text())
            if found:
                return found.group(1)
            time.sleep(0.5)
        raise SystemExit("bench: unitune ui printed no URL within 180 s")

    def _cookie(self) -> str:
        """What the browser keeps after opening the printed URL (the token's cookie; none without a token)."""
        jar = http.cookiejar.CookieJar()
        urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)).open(self.url, timeout=30).read()
        return "; ".join(f"{c.name}={c.value}" for c in jar)

    def _client(self):
        from gradio_client import Client

        return Client(self.base + "/", headers=self.headers, verbose=False)

    def _tab(self, client, selected: list[str]) -> None:
        listed = False  # a run can be selected once a tick has listed it (Gradio checks a choice is offered)
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                shown = client.predict(selected if listed else [], api_name="/refresh")
                with self.lock:
                    self.polls += 1
                    self.selecting += listed
                listed = listed or all(f"'{name}'" in str(shown[1]) for name in selected)
            except Exception as err:  # counted and shown: a tab that cannot poll measures nothing
                with self.lock:
                    self.errors.append(f"{type(err).__name__}: {err}"[:300])
            self.stop.wait(max(0.0, self.every - (time.perf_counter() - start)))

    def close(self) -> None:
        self.server_cpu, self.tabs_cpu = self.cpu_used()
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tabs", type=int, default=3, help="browser tabs polling the Runs tab")
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs of training runs")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per training run")
    parser.add_argument("--batch", type=int, default=2, help="per-device batch (no accumulation)")
    parser.add_argument("--old", type=int, default=6, help="finished runs already in the runs folder")
    parser.add_argument("--tiny", action="store_true", help="a tiny 2-layer model instead of the embedded one")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one training may take")
    args = parser.parse_args()
    from unitune.env import cpu_line

    cpu = cpu_line()
    model_name = "tiny 2-layer Llama" if args.tiny else "embedded SmolLM2-135M-Instruct"
    print(f"bench ui: {model_name}, SFT {args.steps} steps x batch {args.batch}, {args.tabs} tabs, "
          f"{args.pairs} A/B pairs\n  {cpu}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="unitune-bench-ui-"))
    try:
        runs = work / "runs"
        runs.mkdir()
        model = tiny_model(work / "tiny") if args.tiny else None
        train(runs, "warmup", args, model)  # caches filled (the embedded model's conversion), and the old runs' source
        for n in range(args.old):
            shutil.copytree(runs / "warmup", runs / f"sft_old_{n}")
        without, with_ui, polls, selecting, errors, server_cpu, tabs_cpu = [], [], [], [], [], [], []
        for pair in range(args.pairs):
            for mode in ("A", "B"):
                name = f"sft_{mode.lower()}{pair}"
                ui = Ui(runs, args.tabs, [name]) if mode == "B" else None
                try:
                    result = train(runs, name, args, model)
                finally:
                    if ui is not None:
                        ui.close()
                        polls.append(ui.polls)
                        selecting.append(ui.selecting)
                        errors += ui.errors
                        server_cpu.append(ui.server_cpu)
                        tabs_cpu.append(ui.tabs_cpu)
                (with_ui if mode == "B" else without).append(result)
                note = (f", {ui.polls} polls ({ui.selecting} with the run's curve), {len(ui.errors)} failed; CPU: "
                        f"UI server {ui.server_cpu:.1f} s, tabs {ui.tabs_cpu:.1f} s" if ui is not None else "")
                print(f"  {mode} {name}: train_runtime {result['train_runtime']:.2f} s, wall {result['wall']:.1f} s"
                      f"{note}", flush=True)
        if errors and not any(polls):
            raise SystemExit(f"bench: no tab could poll the UI: {errors[0]}")
        median = statistics.median
        results = {
            "ui_overhead_ratio": median(r["train_runtime"] for r in with_ui) / median(
                r["train_runtime"] for r in without),
            "ui_overhead_wall_ratio": median(r["wall"] for r in with_ui) / median(r["wall"] for r in without),
            "train_runtime_without_s": [r["train_runtime"] for r in without],
            "train_runtime_with_ui_s": [r["train_runtime"] for r in with_ui],
            # noise-free: the UI server's CPU over what the machine's cores gave the training runs beside it
            "ui_server_cpu_share": sum(server_cpu) / (sum(r["wall"] for r in with_ui) * (os.cpu_count() or 1)),
            "ui_server_cpu_s": [round(c, 2) for c in server_cpu], "tabs_cpu_s": [round(c, 2) for c in tabs_cpu],
            "polls_per_b_run": polls, "polls_with_curve": selecting,
            "poll_errors": len(errors), "first_poll_error": errors[0] if errors else None,
            "tabs": args.tabs, "steps": args.steps, "batch": args.batch, "old_runs": args.old, "model": model_name,
            "cpu": cpu,
        }
        results = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in results.items()}
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
