"""The browser demo used as a person would: `python -m carbench.demo` on a free port, driven by a real
headless Chromium (Debian's `chromium` + `chromium-driver`, through selenium).

Uploads a multi-object toy scene, types the queries, presses Segment, and checks that the overlay
and the per-step panels appear and that the kept queries shown equal `segment()`'s for the same
input. Prints the time from launch to the first answer and saves a screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from carbench.demo.config import compose_demo
from carbench.demo.inputs import toy_scenes
from carbench.models.factory import build_segmenter

QUERIES = "circle, square, triangle, star, ring, cross, heart, hexagon"
WAIT_S = 600  # guard against a hung server on a loaded CI machine; not a speed assertion
INSTALL_HINT = "install them with: apt-get install -y chromium chromium-driver (.ci/run does this)"


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
    if missing:
        pytest.fail(f"the browser test needs {' and '.join(missing)} on PATH; {INSTALL_HINT}")
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    """The demo in its own process, as `python -m carbench.demo` starts it; yields (url, launch time)."""
    port = free_port()
    env = {**os.environ, "CARBENCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "carbench.demo", "--port", str(port), "threads=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()
    up = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "carbench.demo: ready at" in line:
                up.append(True)
                ready.set()
        ready.set()  # the process ended (or closed its output) before it was ready

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(WAIT_S) or not up:
            pytest.fail("the demo did not start:\n" + "".join(lines[-40:]))
        yield f"http://127.0.0.1:{port}/", t0
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture()
def browser(tmp_path):
    binary, driver_path = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,2000", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def value_of(driver, elem_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")


def test_a_person_segments_a_toy_scene_in_the_browser(server, browser, tmp_path):
    url, t_launch = server
    name, image = list(toy_scenes().items())[2]  # three shapes
    scene = tmp_path / "scene.png"
    Image.fromarray(image).save(scene)

    browser.get(url)
    wait = WebDriverWait(browser, WAIT_S)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
    upload.send_keys(str(scene))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload [aria-label='scene.png']"))  # uploaded
    box = browser.find_element(By.CSS_SELECTOR, "#queries textarea, #queries input")
    box.clear()
    box.send_keys(QUERIES)
    browser.find_element(By.ID, "run").click()
    wait.until(lambda d: value_of(d, "kept") != "" or "problem" in d.find_element(By.ID, "status").text)
    t_answer = time.perf_counter() - t_launch
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("Done"), status

    cfg = compose_demo(["threads=1"])
    queries = QUERIES.split(", ")
    pred = build_segmenter(cfg.model, cfg.postprocess, device="cpu", seed=cfg.seed).segment(image, queries)
    assert value_of(browser, "kept") == ", ".join(queries[k] for k in pred.kept)

    overlay = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#overlay img"))
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) > image.shape[1]
    panels = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#steps img"))
    assert len(panels) >= 1 and all(browser.execute_script("return arguments[0].complete", p) for p in panels)
    page = browser.find_element(By.TAG_NAME, "body").text
    for step in pred.trace:
        kept = ", ".join(queries[k] for k in step["kept"])
        assert f"step {step['step']}: kept {kept}" in page  # every step's panel caption is shown

    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0 and np.asarray(Image.open(shot)).std() > 0
    print(f"\nlaunch to first answer: {t_answer:.1f} s; screenshot: {shot}")
