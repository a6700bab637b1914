"""The UI answers only its owner, over real HTTP against the running server (unitune.ui.server and .access): no token,
403 on every route; the printed URL, a cookie; a foreign Host or a cross-site Origin, refused; wrong tokens and
passwords, rate-limited; --auth from a file, never argv; through Gradio's API, the gates' one-line refusals; and the
jobs started by the UI never see its password."""

import json
import re
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from unitune.cli import main
from unitune.config import UiConfig
from unitune.config.commands import is_loopback
from unitune.errors import UserError
from unitune.ui.access import FAILURES, Limiter
from unitune.ui.jobs import JobQueue
from unitune.ui.server import banner, serve

pytest.importorskip("gradio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start(tmp_path, monkeypatch):
    """serve() in this process on a free port, with tmp_path/runs; every server is closed after the test."""
    monkeypatch.delenv("UNITUNE_UI_AUTH", raising=False)
    servers = []

    def make(**settings):
        cfg = UiConfig(port=free_port(), runs_dir=str(tmp_path / "runs"), **settings)
        served = serve(cfg)
        servers.append(served)
        return cfg, served
    yield make
    for served in servers:
        served.close()


def printed_url(cfg, served) -> str:
    return re.search(r"open (http://\S+)", banner(cfg, served)).group(1)


def test_without_the_token_every_route_is_403(start):
    cfg, served = start()
    base = f"http://127.0.0.1:{cfg.port}"
    for method, path in (("GET", "/"), ("GET", "/config"), ("GET", "/gradio_api/info"),
                         ("GET", "/gradio_api/queue/data?session_hash=x"), ("POST", "/gradio_api/queue/join"),
                         ("POST", "/gradio_api/upload"), ("GET", f"/gradio_api/file={served.ui.root}/x"),
                         ("POST", "/gradio_api/call/lambda"), ("POST", "/gradio_api/component_server")):
        answer = httpx.request(method, base + path)
        assert answer.status_code == 403, (path, answer.status_code)
        assert answer.text == "refused: open the URL `unitune ui` printed (it carries the token)\n"


def test_the_printed_url_signs_in_with_a_cookie_and_drops_the_token(start):
    cfg, served = start()
    # Gradio's idle queue loops at Windows' pace, not every 1 ms: 3% of a core with no one on the page
    assert (served.page._queue.sleep_when_free, served.page._queue.progress_update_sleep_when_free) == (0.05, 0.1)
    url = printed_url(cfg, served)
    assert re.fullmatch(rf"http://127\.0\.0\.1:{cfg.port}/\?token=[\w-]{{40,}}", url)
    with httpx.Client() as browser:
        first = browser.get(url)
        assert first.status_code == 303 and first.headers["location"] == "/"  # the token leaves the address bar
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and cookie.startswith(f"unitune-ui-{cfg.port}=")
        page = browser.get(f"http://127.0.0.1:{cfg.port}/")
        assert page.status_code == 200 and "<html" in page.text
        assert browser.get(f"http://127.0.0.1:{cfg.port}/config").json()["mode"] == "blocks"
        # a second UI's cookie is no key to this one
        assert httpx.get(f"http://127.0.0.1:{cfg.port}/", cookies={f"unitune-ui-{cfg.port}": "old"}).status_code == 403


def test_the_redirect_keeps_the_rest_of_the_query_and_stays_on_the_site(start):
    cfg, served = start()
    token = served.url.split("token=")[1]
    base = f"http://127.0.0.1:{cfg.port}"
    assert httpx.get(f"{base}/?page=runs&token={token}").headers["location"] == "/?page=runs"
    assert httpx.get(f"{base}//attacker.example/?token={token}").headers["location"] == "/attacker.example/"
    assert httpx.get(f"{base}/?token=%C3%A9t%C3%A9").status_code == 403  # a non-ASCII guess: refused, not a crash


def test_a_foreign_host_and_a_cross_site_origin_are_refused(start):
    cfg, served = start()
    token = served.url.split("token=")[1]
    base = f"http://127.0.0.1:{cfg.port}"
    with httpx.Client(cookies={f"unitune-ui-{cfg.port}": token}) as owner:
        assert owner.get(base + "/config").status_code == 200
        assert owner.get(base + "/config", headers={"Host": f"localhost:{cfg.port}"}).status_code == 200
        for host in ("rebind.attacker.example", f"rebind.attacker.example:{cfg.port}", f"127.0.0.1:{cfg.port + 1}",
                     f"127.evil.com:{cfg.port}"):
            answer = owner.get(base + "/config", headers={"Host": host})  # what a DNS-rebound page sends
            assert answer.status_code == 403 and "DNS rebinding" in answer.text, host
        # a form posted from another site carries the browser's cookie, and its Origin
        post = owner.post(base + "/gradio_api/call/lambda", json={"data": []},
                          headers={"Origin": "http://attacker.example"})
        assert post.status_code == 403 and post.text == "refused: a request from another site (http://attacker.example)\n"
        assert owner.get(base + "/config", headers={"Origin": "null"}).status_code == 403
        for bad in ({"Host": "[x"}, {"Origin": "http://["}):  # headers that do not parse: one line, no traceback
            answer = owner.get(base + "/config", headers=bad)
            assert answer.status_code == 403 and answer.text.startswith("refused: ") and answer.text.count("\n") == 1
        assert owner.get(base + "/config", headers={"Origin": base}).status_code == 200


def test_wrong_tokens_are_rate_limited(start):
    cfg, served = start()
    base = f"http://127.0.0.1:{cfg.port}"
    for n in range(FAILURES):
        assert httpx.get(f"{base}/?token=guess{n}").status_code == 403
    assert httpx.get(f"{base}/?token=guess-more").status_code == 429
    # local users share 127.0.0.1: another's guesses must not lock the owner out of the printed URL
    assert httpx.get(served.url).status_code == 303
    token = served.url.split("token=")[1]
    assert httpx.get(base + "/config", cookies={f"unitune-ui-{cfg.port}": token}).status_code == 200  # signed in
    served.guard.limiter.clock = lambda: float("inf")  # the block is over
    assert httpx.get(f"{base}/?token=guess-again").status_code == 403


def test_auth_from_a_file_replaces_the_token_and_is_rate_limited(start, tmp_path):
    (tmp_path / "ui-auth").write_text("me:a-long-secret\n")
    cfg, served = start(auth=str(tmp_path / "ui-auth"))
    base = f"http://127.0.0.1:{cfg.port}"
    assert "?token=" not in served.url and "sign in as me" in banner(cfg, served)
    assert httpx.get(base + "/config").status_code == 403
    assert httpx.get(base + "/gradio_api/info").status_code == 403
    assert httpx.get(base + "/").status_code == 200  # Gradio's login page
    with httpx.Client() as browser:
        assert browser.post(base + "/login", data={"username": "me", "password": "wrong"}).status_code == 400
        assert browser.post(base + "/login", data={"username": "me", "password": "a-long-secret"}).status_code == 200
        assert browser.get(base + "/config").status_code == 200
    for _ in range(FAILURES):  # the sign-in above cleared the one before it
        assert httpx.post(base + "/login", data={"username": "me", "password": "wrong"}).status_code == 400
    assert httpx.post(base + "/login", data={"username": "me", "password": "a-long-secret"}).status_code == 429


def test_a_password_on_the_command_line_is_refused(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("UNITUNE_UI_AUTH", raising=False)
    assert main(["ui", "--auth", "me:a-long-secret"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--auth FILE" in err and "UNITUNE_UI_AUTH" in err and "a-long-secret" not in err
    (tmp_path / "bad").write_text("no-colon")
    with pytest.raises(UserError, match="must hold USER:PASS"):
        UiConfig(auth=str(tmp_path / "bad"))
    monkeypatch.setenv("UNITUNE_UI_AUTH", "env:pass")
    assert UiConfig().credentials == ("env", "pass")


def test_a_taken_port_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("UNITUNE_UI_AUTH", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port} .*; pass another --port"):
            serve(UiConfig(port=port, runs_dir=str(tmp_path / "runs")))


def test_the_limiter_counts_distinct_wrong_secrets_and_forgives_after_the_block():
    now = [0.0]
    limiter = Limiter(failures=3, window=60, block=30, clock=lambda: now[0])
    for _ in range(10):
        limiter.failed("a", "stale-cookie")  # one stale cookie, sent with every asset, counts once
    assert not limiter.blocked("a")
    limiter.failed("a", "guess-1")
    limiter.failed("a", "guess-2")
    assert limiter.blocked("a") and not limiter.blocked("b")
    now[0] = 31.0
    assert not limiter.blocked("a")


def test_no_token_serves_loopback_without_the_token_but_keeps_the_host_check(start):
    cfg, served = start(no_token=True)
    base = f"http://127.0.0.1:{cfg.port}"
    assert served.url == base + "/"
    assert httpx.get(base + "/config").status_code == 200
    assert httpx.get(base + "/config", headers={"Host": f"attacker.example:{cfg.port}"}).status_code == 403
    with pytest.raises(UserError, match="--no_token"):
        UiConfig(host="0.0.0.0", no_token=True)


def call(client: httpx.Client, base: str, api: str, named: dict) -> str:
    """Press a button through Gradio's HTTP API: its inputs' defaults, with ``named`` (by label) set."""
    info = client.get(f"{base}/gradio_api/info").json()["named_endpoints"][f"/{api}"]
    data = [named.get(p["label"], p["parameter_default"]) for p in info["parameters"]]
    event = client.post(f"{base}/gradio_api/call/{api}", json={"data": data}).json()["event_id"]
    stream = client.get(f"{base}/gradio_api/call/{api}/{event}").text
    assert "event: complete" in stream, stream
    return json.loads(stream.split("data:")[-1])[0]


def test_start_through_the_api_is_gated(start, tmp_path, tiny_model_dir):
    cfg, served = start(allow_dir=[str(tiny_model_dir)])
    base = f"http://127.0.0.1:{cfg.port}"
    token = served.url.split("token=")[1]
    outside = tmp_path / "template.jinja"
    outside.write_text("{{ messages }}")
    with httpx.Client(cookies={f"unitune-ui-{cfg.port}": token}, timeout=60) as owner:
        said = call(owner, base, "lambda", {"method": "grpo", "model_name": str(tiny_model_dir),
                                            "reward_funcs": "accuracy x.py:fn"})
        assert said.startswith("**Error:** reward_funcs 'x.py:fn' would run code") and "--allow_code" in said
        said = call(owner, base, "lambda", {"model_name": str(tiny_model_dir), "chat_template": str(outside)})
        assert said.startswith(f"**Error:** chat_template {outside} lies outside the runs folder")
        assert "--allow_dir" in said and "\n" not in said
    assert served.ui.queue.jobs == []  # nothing was started


def test_the_form_default_output_dir_and_uploads_pass_the_gates(tmp_path, monkeypatch):
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    ui = Ui(UiConfig(runs_dir="runs"))
    try:
        mapping = ui.mapping({"method": "sft"})
        assert Path(mapping["output_dir"]).parent == Path("runs")
        (tmp_path / "upload.jsonl").write_text('{"text": "hi"}\n')
        ui.gates.mapping(mapping | {"dataset": ui.upload(str(tmp_path / "upload.jsonl"))})
    finally:
        ui.close()


def test_resume_applies_the_same_gates_to_a_run_record(tmp_path, monkeypatch):
    from unitune.ui.actions import Ui

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "grpo_theirs"
    run.mkdir(parents=True)
    settings = {"method": "grpo", "reward_funcs": ["accuracy", "evil.py:score"], "output_dir": str(run)}
    (run / "unitune_run.json").write_text(json.dumps({"status": "interrupted", "method": "grpo",
                                                      "settings": settings}))
    ui = Ui(UiConfig(runs_dir="runs"))
    try:
        said = ui.resume(["grpo_theirs"])
        assert said.startswith("**Error:** grpo_theirs: reward_funcs 'evil.py:score'") and "--allow_code" in said
        settings["reward_funcs"], settings["chat_template"] = ["accuracy"], str(tmp_path / "t.jinja")
        (run / "unitune_run.json").write_text(json.dumps({"status": "interrupted", "settings": settings}))
        assert "--allow_dir" in ui.resume(["grpo_theirs"])
        assert ui.queue.jobs == []
    finally:
        ui.close()


def test_jobs_do_not_inherit_the_password(tmp_path, monkeypatch):
    fake = tmp_path / "python"  # the job's "python -m unitune ...": prints the environment it was given
    fake.write_text("#!/bin/sh\nexec env\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    monkeypatch.setenv("UNITUNE_UI_AUTH", "me:a-long-secret")
    monkeypatch.setenv("UNITUNE_UI_TOKEN", "t0ken")
    monkeypatch.setenv("SOME_SETTING", "kept")
    queue = JobQueue(tmp_path / "jobs")
    job = queue.submit(["env"], "env")
    end = time.monotonic() + 60
    while job.state in ("queued", "running") and time.monotonic() < end:
        time.sleep(0.05)
    queue.shutdown()
    assert job.state == "finished"
    log = job.log.read_text()
    assert "SOME_SETTING=kept" in log and "PYTHONUNBUFFERED=1" in log
    assert "UNITUNE_UI" not in log and "a-long-secret" not in log


def test_loopback_is_decided_by_the_address(monkeypatch):
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.4", "10.0.0.1"):
        assert not is_loopback(host), host
    resolved = {"127.evil.com": ["203.0.113.7"], "both.example": ["127.0.0.1", "203.0.113.7"],
                "localhost": ["127.0.0.1", "::1"]}

    def getaddrinfo(name, port, *args, **kwargs):
        if name not in resolved:
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
                for a in resolved[name]]
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert is_loopback("localhost")
    assert not is_loopback("127.evil.com") and not is_loopback("both.example") and not is_loopback("unknown.invalid")


@pytest.mark.slow  # a process
def test_the_cli_prints_one_url_that_opens_the_ui_and_stops_cleanly(tmp_path):
    import os
    import signal
    import subprocess

    port = free_port()
    log = tmp_path / "ui.log"
    process = subprocess.Popen([sys.executable, "-m", "unitune", "ui", "--port", str(port), "--runs_dir", "runs"],
                               cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               env=os.environ | {"PYTHONUNBUFFERED": "1", "UNITUNE_UI_AUTH": ""})
    try:
        end = time.monotonic() + 120
        while not re.search(r"open http://", log.read_text()):
            assert process.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.2)
        urls = re.findall(r"http://\S+", log.read_text())
        assert len(urls) == 1 and "?token=" in urls[0]
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 403
        with httpx.Client(follow_redirects=True) as browser:
            assert browser.get(urls[0]).status_code == 200 and browser.get(f"http://127.0.0.1:{port}/config").is_success
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, log.read_text()
