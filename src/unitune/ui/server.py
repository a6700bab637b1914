"""Start the UI, keep it up until Ctrl-C (or SIGTERM), then stop the running job cleanly, with a checkpoint."""

from __future__ import annotations

import signal
import sys
import time

from ..config import UiConfig
from ..errors import UserError


def run_ui(cfg: UiConfig) -> None:
    from .actions import Ui
    from .app import build

    ui = Ui(cfg)
    page = build(ui)
    try:
        page.launch(server_name=cfg.host, server_port=cfg.port, auth=cfg.credentials, share=False, quiet=True,
                    prevent_thread_lock=True, allowed_paths=[str(ui.root.resolve())], show_error=True)
    except OSError as err:  # the port is taken
        ui.close()
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} ({err}); pass another --port") from None
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"unitune ui: open http://{host}:{cfg.port} (runs in {ui.root}); Ctrl-C stops it, and the running job "
          "with a checkpoint", flush=True)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt; `kill -INT` (or a launcher's Ctrl-C) must still stop the UI cleanly.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("unitune ui: shutting down", file=sys.stderr, flush=True)
    finally:
        ui.close()  # a second Ctrl-C or SIGTERM in here makes the job exit at once (see JobQueue.shutdown)
        page.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
