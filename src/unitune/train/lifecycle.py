"""A clean stop: on SIGTERM/SIGINT every rank finishes its step and saves a checkpoint; at the end the process group
is torn down before the interpreter's exit can abort a rank."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from ..errors import Interrupted

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal, as shells report them


END_BARRIER_S = 300  # see end_process_group


class GracefulStop(TrainerCallback):
    """On SIGTERM or SIGINT: finish the optimizer step, save a checkpoint, stop. A second signal exits at once.

    Ranks agree every step (a max over the processes), so all of them stop and save at the same step even when
    only one got the signal.
    """

    DUPLICATE_WITHIN = 3.0  # seconds: SLURM signals every process of a step and torchrun forwards it again

    def __init__(self, resume_hint: str = "run the same command with --resume to continue"):
        self.signal: int | None = None
        self.received = 0.0
        self.stopped_at: int | None = None
        self.finished = False
        self.resume_hint = resume_hint
        self._previous: dict = {}

    def install(self) -> None:
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            if time.monotonic() - self.received < self.DUPLICATE_WITHIN:
                return  # the same stop, delivered twice (SLURM + torchrun)
            os._exit(EXIT_CODES[signal.Signals(signum)])
        self.signal, self.received = signum, time.monotonic()
        print(f"\nunitune: {signal.Signals(signum).name}: finishing this step and saving a checkpoint (send it again "
              "to stop at once)", file=sys.stderr, flush=True)

    def _agreed(self, args) -> int:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.signal or 0
        flag = torch.tensor([self.signal or 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        agreed = self._agreed(args)
        if agreed:
            self.signal = self.signal or agreed
            self.stopped_at = state.global_step
            self.finished = state.global_step >= state.max_steps  # the last step: the run is complete anyway
            control.should_save = control.should_save or not self.finished
            control.should_evaluate = False  # the grace period is for the checkpoint
            control.should_training_stop = True
        return control

    def outcome(self, out: Path) -> Interrupted | None:
        if self.stopped_at is None or self.finished:
            return None
        name = signal.Signals(self.signal).name
        return Interrupted(f"{name}: stopped at step {self.stopped_at} with a checkpoint in "
                           f"{out / f'checkpoint-{self.stopped_at}'}; {self.resume_hint}",
                           EXIT_CODES[signal.Signals(self.signal)])


def end_process_group() -> None:
    """Destroy torch.distributed's process group once training is over, as torch asks: left to interpreter exit,
    gloo's threads were seen to abort a rank now and then ("terminate called without an active exception").
    First a barrier (gloo's waits for every collective still queued on this rank, e.g. FSDP's last gathers) and a
    garbage collection (the trainer's reference cycles hold the sharded model and the work objects of its
    collectives), so nothing of the group is left for the interpreter's own teardown: CI once saw a rank abort that
    way after an FSDP run had been written, with the destroy alone. The barrier waits END_BARRIER_S at most: a rank
    that failed after training (writing its files) never arrives, and the others must not wait for the group's
    30-minute timeout."""
    import gc
    from datetime import timedelta

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier(async_op=True).wait(timeout=timedelta(seconds=END_BARRIER_S))
        except RuntimeError:  # timed out: a peer is gone; its launcher reports why
            pass
        gc.collect()
        dist.destroy_process_group()
