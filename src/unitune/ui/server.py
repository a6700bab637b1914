"""Start the UI behind its guard (unitune.ui.access), print the one URL to open, keep it up until Ctrl-C (or
SIGTERM), then stop the running job cleanly, with a checkpoint.

Gradio's app is mounted in our own FastAPI app, served by uvicorn in a thread, so that the guard stands in front of
every route: launch() has no hook for that, and its optional static-file workers would serve on ports of their own."""

from __future__ import annotations

import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

from ..config import UiConfig
from ..errors import UserError
from .access import Guard, address


@dataclass
class Served:
    """A running UI: the URL to open (with its token), and what close() stops."""

    url: str
    ui: object  # the Ui (its job queue)
    page: object  # the gr.Blocks
    gradio: object  # Gradio's mounted App
    guard: Guard
    server: object  # the uvicorn.Server
    thread: threading.Thread

    def close(self) -> None:
        try:
            self.ui.close()  # a second Ctrl-C or SIGTERM in here makes the job exit at once (see JobQueue.shutdown)
        finally:
            self.page.close(verbose=False)  # Gradio's queue
            self.gradio.stop_event.set()  # ends its open event streams, so that uvicorn need not wait for them
            self.server.should_exit = True
            self.thread.join(10)


def listen(host: str, port: int) -> socket.socket:
    """The bound socket; binding here (not in uvicorn's thread) makes a taken port this thread's OSError."""
    family, kind, proto, _, where = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(where)
    except OSError:
        sock.close()
        raise
    return sock


def serve(cfg: UiConfig) -> Served:
    """Build the page, put the guard in front of it and listen; the caller closes what it returns."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI
    from gradio.routes import App

    from .actions import Ui
    from .app import build

    ui = Ui(cfg)
    try:
        sock = listen(cfg.host, cfg.port)
    except OSError as err:  # the port is taken
        ui.close()
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} ({err}); pass another --port") from None
    try:
        page = build(ui)
        outer = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        gr.mount_gradio_app(outer, page, path="/", auth=cfg.credentials, allowed_paths=[str(ui.root.resolve())],
                            show_error=True, ssr_mode=False, server_name=cfg.host, server_port=cfg.port)
        gradio = next(route.app for route in outer.routes if isinstance(getattr(route, "app", None), App))
        # Gradio's queue looks for work every 1 ms when idle (on Linux; 50 ms on Windows), its progress loop every
        # 10 ms: 3% of a core with no one on the page, taken from the training beside it (bench/ui_overhead.py).
        # Windows' pace is unnoticeable to a person; set on this page's own queue, nothing else changes.
        page._queue.sleep_when_free, page._queue.progress_update_sleep_when_free = 0.05, 0.1
    except BaseException:
        sock.close()
        ui.close()
        raise
    signed_in = None
    if cfg.credentials is not None:
        def signed_in(cookies: dict[str, str]) -> bool:  # Gradio's login cookies, as its /user route reads them
            return any(cookies.get(f"access-token{kind}-{gradio.cookie_id}") in gradio.tokens
                       for kind in ("", "-unsecure"))
    token = None if cfg.no_token or cfg.credentials is not None else secrets.token_urlsafe(32)
    guarded = Guard(outer, cfg.host, cfg.port, token=token, signed_in=signed_in)
    server = uvicorn.Server(uvicorn.Config(guarded, log_level="warning", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="unitune-ui-server", daemon=True)
    thread.start()
    end = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > end:
            server.should_exit = True
            sock.close()
            ui.close()
            raise UserError(f"the UI's server did not start on {cfg.host}:{cfg.port}; see the lines above")
        time.sleep(0.02)
    url = address(cfg.host, cfg.port) + (f"?token={token}" if token else "")
    return Served(url, ui, page, gradio, guarded, server, thread)


def banner(cfg: UiConfig, served: Served) -> str:
    """The line that gives the one URL to open."""
    how = f" and sign in as {cfg.credentials[0]}" if cfg.credentials else ""
    if cfg.host in ("0.0.0.0", "::"):
        how += " (from another machine, with this machine's name in place of 127.0.0.1)"
    return (f"unitune ui: open {served.url}{how} (runs in {served.ui.root}); Ctrl-C stops it, and the running job "
            "with a checkpoint")


def run_ui(cfg: UiConfig) -> None:
    served = serve(cfg)
    print(banner(cfg, served), flush=True)
    if cfg.no_token:
        print("unitune ui: warning: --no_token: every local user and process can drive this UI, which runs code and "
              "reads and writes files as you", file=sys.stderr, flush=True)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt; `kill -INT` (or a launcher's Ctrl-C) must still stop the UI cleanly.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("unitune ui: shutting down", file=sys.stderr, flush=True)
    finally:
        served.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
