"""`unitune ui`: a local web UI (Gradio) over the same functions as the CLI.

    unitune ui                                # prints http://127.0.0.1:7860/?token=...: open that URL
    unitune ui --host 0.0.0.0 --auth FILE     # a password (the file holds USER:PASS) in place of the token

Tabs: Train (a form generated from the train flags), Runs (status, live curves, evaluate, resume, stop), Chat (a
base model or runs, side by side), Export (merge, GGUF). Training, evaluation, Check data and Export run in
subprocesses, one job at a time. The UI runs code and touches files as its user, so it answers only the printed URL
(server.py, access.py), and a page may run and read only what the command line allowed (gates.py).
"""

from .server import run_ui

__all__ = ["run_ui"]
