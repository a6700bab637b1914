"""What a command prints besides its results: library noise kept out (unless ``--verbose``), and progress bars,
one per long phase, that turn into occasional plain lines when the output is a log file, not a terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from tqdm.auto import tqdm

# Data preparation shows the datasets library's own bars (one per map: tokenizing, the trainer's truncation...)
# only from this many rows on: below it the whole preparation takes seconds and the bars are noise.
LONG_DATA_ROWS = 10_000
LOG_INTERVAL_S = 30  # a bar in a log file prints at most one line this often

_quiet = False


def is_quiet() -> bool:
    """Whether library chatter is kept out (every command, unless --verbose)."""
    return _quiet


def quiet_libraries(loads_models: bool) -> None:
    """Keep library chatter out of unitune's output (``--verbose`` keeps it): Python warnings from libraries
    (deprecations of arguments we set on purpose), transformers' info logs and its weight loading/saving bars,
    the datasets library's bars for reading files, DeepSpeed's accelerator guess, bitsandbytes failing to fetch an
    optional CPU kernel from the Hub. unitune's own warnings are printed lines, not Python warnings, so they stay."""
    global _quiet
    _quiet = True
    warnings.simplefilter("ignore")
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # DeepSpeed sets its logger's level when imported (the Trainer imports it), so a filter, which it keeps.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", str(LOG_INTERVAL_S))
    if loads_models:  # importing transformers costs seconds: only for the commands that load it anyway
        import datasets
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # its weight loading/saving bars; Hub downloads keep theirs
        datasets.disable_progress_bars()  # see dataset_bars for the ones that stay


@contextlib.contextmanager
def dataset_bars(rows: int):
    """The datasets library's map bars during one data preparation: shown when it is long (``rows`` at least
    LONG_DATA_ROWS) or with ``--verbose``, hidden otherwise."""
    import datasets

    if not _quiet or rows < LONG_DATA_ROWS:
        yield
        return
    datasets.enable_progress_bars()
    try:
        yield
    finally:
        datasets.disable_progress_bars()


class _Lines:
    """A stream for tqdm in a log file: each refresh becomes its own line (not ``\\r`` overwrites that make one
    endless line), and the blank refreshes that erase a finished bar are dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable=None, **kwargs) -> tqdm:
    """A progress bar: tqdm's own on a terminal; in a log file, one plain line at most every LOG_INTERVAL_S
    seconds, and none at all for work that ends sooner."""
    if not sys.stderr.isatty():
        kwargs.setdefault("file", _Lines(sys.stderr))
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("delay", LOG_INTERVAL_S)
    return tqdm(iterable, **kwargs)


def use_training_bar(trainer) -> None:
    """Swap the Trainer's progress bar, or the printer of log dicts it uses instead when transformers' logging is
    quieted (``disable_tqdm``), for a TrainingBar; ``--verbose`` keeps the Trainer's own."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if _quiet and (trainer.pop_callback(ProgressCallback) or trainer.pop_callback(PrinterCallback)):
        trainer.add_callback(_training_bar(ProgressCallback)())


def _training_bar(base: type) -> type:
    """TrainingBar, built on transformers' ProgressCallback only when a trainer needs it (importing transformers
    costs seconds, and `unitune report` or `unitune env` never do)."""
    from transformers.trainer_utils import has_length

    class TrainingBar(base):
        """The Trainer's progress bar with the latest loss (and reward, for GRPO) in it, instead of one printed
        dict per logging step: a 12-step run printed 13 lines of dicts. The numbers are all in trainer_state.json;
        ``--verbose`` prints the dicts as before."""

        SHOWN = {"loss": "loss", "reward": "reward", "eval_loss": "eval_loss", "learning_rate": "lr"}

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.training_bar = bar(total=state.max_steps, desc="training", unit="step", dynamic_ncols=True)
            self.current_step = 0

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            if state.is_world_process_zero and self.prediction_bar is None and has_length(eval_dataloader):
                self.prediction_bar = bar(total=len(eval_dataloader), desc="evaluating", unit="batch", leave=False,
                                          dynamic_ncols=True)
            if self.prediction_bar is not None:
                self.prediction_bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {name: f"{logs[key]:.4g}" for key, name in self.SHOWN.items()
                         if isinstance(logs.get(key), (int, float))}
                if shown:  # an eval log updates its numbers and keeps the training loss beside them
                    self.shown = {**getattr(self, "shown", {}), **shown}
                    self.training_bar.set_postfix(self.shown, refresh=False)

    return TrainingBar
