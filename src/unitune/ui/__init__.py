"""`unitune ui`: a local web UI (Gradio) over the same functions as the CLI.

    unitune ui                                  # http://127.0.0.1:7860, runs in ./runs
    unitune ui --host 0.0.0.0 --auth me:secret  # other machines: only with a password

Tabs: Train (a form generated from the train flags), Runs (status, live curves, evaluate, resume, stop), Chat (a
base model or runs, side by side), Export (merge, GGUF). Training runs in a subprocess, one job at a time.
"""

from .server import run_ui

__all__ = ["run_ui"]
