"""`unitune ui` in a real browser: headless Chromium driven by Selenium through chromedriver (Debian's `chromium`
and `chromium-driver`, which .ci/run installs). Train a 2-step SFT run of the tiny model from the form, watch it
finish with its loss curve drawn, evaluate it, chat with its base model, export it, then Ctrl-C the UI while a
second run trains and find that run stopped with a checkpoint. A screenshot of each tab at 1280x800 is saved in
the test's tmp folder and in test-artifacts/.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from unitune.train.live_log import read_log

pytestmark = pytest.mark.slow  # a browser and training processes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # git-ignored
missing = CHROMIUM is None or CHROMEDRIVER is None
needs_browser = pytest.mark.skipif(missing and not os.environ.get("CI"), reason="chromium or chromedriver missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_ui(cwd: Path, port: int, *extra: str) -> tuple[subprocess.Popen, str]:
    """`unitune ui` in a process, and the one URL it printed (with its token)."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "unitune", "ui", "--port", str(port), "--runs_dir", "runs",
                                *extra], cwd=cwd, stdout=open(cwd / "ui.log", "w"), stderr=subprocess.STDOUT, env=env)

    def printed():
        if process.poll() is not None:
            raise AssertionError(f"unitune ui exited: {(cwd / 'ui.log').read_text()}")
        found = re.search(r"unitune ui: open (http://\S+)", (cwd / "ui.log").read_text())
        return found and found.group(1)

    url = wait_until(printed, 120, "the UI to print its URL")
    cookies = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    assert cookies.open(url, timeout=10).status == 200  # the token's redirect, with its cookie
    return process, url


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the page itself 1280x800, not the window
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    return driver


class Page:
    def __init__(self, driver, shots: Path):
        self.driver, self.shots = driver, shots

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, elem_id: str) -> str:
        return self.find(f"#{elem_id}").text

    def type(self, elem_id: str, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{elem_id} input, #{elem_id} textarea")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)
        box.send_keys(Keys.TAB)  # Gradio takes the value on blur

    def click(self, elem_id: str) -> None:
        self.find(f"#{elem_id}").click()

    def tab(self, name: str) -> None:
        self.driver.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']").click()
        time.sleep(1)

    def choose(self, elem_id: str, label: str) -> None:
        """Pick a Gradio dropdown's option by its label."""
        self.find(f"#{elem_id} input").click()
        option = wait_until(lambda: [o for o in self.driver.find_elements(By.CSS_SELECTOR, "li[role=option]")
                                     if o.get_attribute("aria-label") == label], 10, f"option {label}")[0]
        option.click()
        time.sleep(0.5)

    def drawn(self, elem_id: str) -> bool:
        """A chart image that the browser decoded."""
        return any(self.driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                   for img in self.all(f"#{elem_id} img"))

    def shot(self, name: str) -> Path:
        self.driver.execute_script("window.scrollTo(0, 0)")
        path = self.shots / f"ui-{name}-1280x800.png"
        self.driver.save_screenshot(str(path))
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(path, ARTIFACTS / path.name)
        return path


def record(run: Path) -> dict:
    path = run / "unitune_run.json"
    return json.loads(path.read_text()) if path.exists() else {}


@needs_browser
def test_ui_in_a_browser(tmp_path, tiny_model_dir):
    assert not missing, ".ci/run installs them: apt-get install chromium chromium-driver"
    port = free_port()
    # the model folder lies outside the runs folder: the page may read it only with --allow_dir
    ui, url = start_ui(tmp_path, port, "--allow_dir", str(tiny_model_dir))
    driver = browser()
    page = Page(driver, tmp_path)
    runs = tmp_path / "runs"
    try:
        driver.get(f"http://127.0.0.1:{port}/")  # without the token: refused
        assert "open the URL `unitune ui` printed" in driver.find_element(By.TAG_NAME, "body").text
        driver.get(url)  # the printed URL: a cookie, and the token leaves the address bar
        assert "token=" not in driver.current_url
        wait_until(lambda: page.all("#train-start"), 60, "the Train tab")
        # 1. the Train form, generated from TrainConfig: a 2-step SFT run of the tiny model
        page.type("train-model_name", str(tiny_model_dir))
        page.type("train-max_steps", "2")
        page.type("train-per_device_train_batch_size", "2")
        page.type("train-gradient_accumulation_steps", "1")
        page.type("train-max_train_samples", "8")
        # each field updates the command on its own event: wait for the last one typed
        command = wait_until(lambda: all(f in page.text("train-command") for f in ("--max_steps 2",
                                                                                   "--max_train_samples 8"))
                             and page.text("train-command"), 30, "the command line to follow the form")
        assert str(tiny_model_dir) in command
        assert not page.all("#train-num_generations")  # GRPO's fields are hidden for SFT, shown for GRPO
        page.choose("train-method", "grpo")
        fold = wait_until(lambda: [f for f in page.all("[id^=train-section-]") if "method-specific" in f.text], 10,
                          "the method-specific section")[0]
        fold.find_element(By.TAG_NAME, "button").click()
        wait_until(lambda: page.all("#train-num_generations"), 10, "GRPO's fields")
        page.choose("train-method", "sft")
        wait_until(lambda: not page.all("#train-num_generations"), 10, "GRPO's fields to go")
        page.shot("train")
        page.click("train-start")
        wait_until(lambda: "Queued" in page.text("train-status"), 30, "the run to be queued")
        # 2. the Runs tab shows it finished, with its loss curve
        page.tab("Runs")
        wait_until(lambda: "finished" in page.text("runs-table"), 300, "the run to finish")
        name = next(p.name for p in runs.iterdir() if p.name.startswith("sft_"))
        assert record(runs / name)["status"] == "finished"
        assert record(runs / name)["settings"]["max_steps"] == 2
        checkbox = wait_until(lambda: [b for b in page.all("#runs-select label") if b.text.strip() == name], 30,
                              "the run in the selection")[0]
        checkbox.click()
        wait_until(lambda: page.drawn("runs-overlay"), 30, "the loss curve")
        # a second browser tab sees the same runs
        first = driver.current_window_handle
        driver.switch_to.new_window("tab")
        driver.get(f"http://127.0.0.1:{port}/")
        wait_until(lambda: page.all("#train-start"), 60, "the page in a second tab")
        page.tab("Runs")
        wait_until(lambda: name in page.text("runs-table") and "finished" in page.text("runs-table"), 30,
                   "the run in the second tab")
        driver.close()
        driver.switch_to.window(first)
        # 3. evaluate it
        page.type("runs-max-samples", "4")
        page.click("runs-evaluate")
        wait_until(lambda: name in page.text("eval-table"), 300, "the evaluation table")
        assert "base" in page.text("eval-table")
        results = json.loads((runs / "evaluation_results.json").read_text())
        assert set(results) == {"base", name} and results[name]["test_loss"] is not None
        wait_until(lambda: page.all("#eval-charts img"), 30, "the report's charts")
        page.shot("runs")
        # 4. chat: the embedded model (A) beside the run's base model (B), the tiny random one, which replies
        # with newlines only
        page.tab("Chat")
        page.choose("chat-b", f"base: {tiny_model_dir}")
        page.type("chat-max-new-tokens", "12")
        page.type("chat-input", "Hello, who are you?")
        page.click("chat-send")
        for box in "ab":
            wait_until(lambda: [m for m in page.all(f"#chat-box-{box} [data-testid='bot']") if m.text.strip()], 180,
                       f"a reply in box {box}")
        wait_until(lambda: not page.text("chat-status"), 60, "the replies to end")
        replies = [page.find(f"#chat-box-{box} [data-testid='bot']").text for box in "ab"]
        assert "Hello, who are you?" in page.text("chat-box-a") and "Hello, who are you?" in page.text("chat-box-b")
        assert len(replies[0].split()) >= 3, replies  # SmolLM2 answers in words
        assert "empty reply" in page.text("chat-box-b")
        page.shot("chat")
        # 5. export it
        page.tab("Export")
        page.choose("export-run", name)
        page.click("export-go")
        wait_until(lambda: "Exported" in page.text("export-status") or "Error" in page.text("export-status"), 180,
                   "the export")
        assert "Exported" in page.text("export-status"), page.text("export-status")
        exported = runs / "exported" / f"{name}-f16"  # the default: a new folder in the runs folder
        assert (exported / "model-f16.gguf").is_file() and (exported / "Modelfile").is_file()
        links = [a.get_attribute("href") or "" for a in page.all("#export-files a")]
        assert any(link.endswith("model-f16.gguf") for link in links) and any(link.endswith("Modelfile") for link in links)
        page.shot("export")
        # 6. a long run, then Ctrl-C on the UI: the run stops with a checkpoint
        page.tab("Train")
        page.type("train-max_steps", "100000")
        page.type("train-output_dir", str(runs / "long"))
        page.click("train-start")
        wait_until(lambda: record(runs / "long").get("status") == "running" and (runs / "long" / "unitune_log.jsonl")
                   .exists(), 120, "the long run to train")
        page.tab("Runs")  # its live curve, and its progress in the table
        wait_until(lambda: page.drawn("runs-live"), 60, "the live loss curve")
        assert "Training now: long" in page.text("runs-live-title")
        assert "/100000" in page.text("runs-table")
    finally:
        driver.quit()
    # closing the browser does not stop the run
    steps = len(read_log(runs / "long"))
    wait_until(lambda: len(read_log(runs / "long")) > steps + 2, 60, "the run to go on without a browser")
    ui.send_signal(signal.SIGINT)
    assert ui.wait(120) == 0, (tmp_path / "ui.log").read_text()
    assert record(runs / "long")["status"] == "interrupted"
    assert list((runs / "long").glob("checkpoint-*")), "the stopped run saved no checkpoint"


def test_ui_with_auth_asks_for_the_password(tmp_path):
    port = free_port()
    (tmp_path / "ui-auth").write_text("me:a-secret\n")
    ui, url = start_ui(tmp_path, port, "--host", "0.0.0.0", "--auth", str(tmp_path / "ui-auth"))
    try:
        base = f"http://127.0.0.1:{port}"
        assert url == f"{base}/"  # no token: the password replaces it
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(f"{base}/config", timeout=10)
        jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with pytest.raises(urllib.error.HTTPError, match="400"):
            jar.open(f"{base}/login", data=b"username=me&password=wrong", timeout=10)
        jar.open(f"{base}/login", data=b"username=me&password=a-secret", timeout=10)
        assert jar.open(f"{base}/config", timeout=10).status == 200
    finally:
        ui.send_signal(signal.SIGINT)
        assert ui.wait(60) == 0


def test_ui_refuses_an_open_host_without_the_token_or_a_password_on_argv(tmp_path):
    for flags, said in ((["--host", "0.0.0.0", "--no_token"], "--no_token would open the UI"),
                        (["--auth", "me:a-secret"], "not the password itself")):
        result = subprocess.run([sys.executable, "-m", "unitune", "ui", *flags], capture_output=True, text=True,
                                cwd=tmp_path, env=os.environ | {"UNITUNE_UI_AUTH": ""})
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and said in result.stderr and "a-secret" not in result.stderr
