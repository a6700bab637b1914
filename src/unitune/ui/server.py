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
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    print(f"unitune ui: open http://{host}:{cfg.port} (runs in {ui.root}); Ctrl-C stops it, and the running job "
          "with a checkpoint", flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("unitune ui: shutting down", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        ui.close()
        page.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt
