"""07 in a real browser: JupyterLab, headless Chromium, Run All; Compare, Images, the report assistant.

Needs the system Chromium (Debian's ``chromium`` package) and the ``playwright`` Python package, which
drives that browser as it is (no browser download). ``make browser-test`` installs both and runs this
test alone; it saves a screenshot of the app to ``outputs/screenshots/07_demo.png``.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "outputs" / "screenshots" / "07_demo.png"
QUESTION = "What should I do about sudden chest pain and sweating?"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium: `make browser-test` installs it"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(cpu_course, tmp_path):
    """JupyterLab serving a copy of 07 (so the repo's notebook is never saved with outputs)."""
    root = tmp_path / "course"
    root.mkdir()
    for name in ("helpers", "data"):
        (root / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / "07_demo.ipynb", root)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news pop-up
    port, token = _free_port(), "course-browser-test"
    env = {**os.environ, "COURSE_OUTPUTS": str(cpu_course.run.parent), "PYTHONPATH": str(root),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start: " + (tmp_path / "jupyterlab.log").read_text()[-2000:])
        yield f"{url}/lab/tree/07_demo.ipynb?token={token}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_07_runs_in_jupyterlab_and_every_model_answers(jupyterlab):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(jupyterlab)
        expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
        idle = page.get_by_role("button", name=re.compile(r"\| Idle$"))  # the status bar: the kernel is up
        expect(idle).to_be_visible(timeout=60_000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

        question = page.get_by_placeholder("Ask a medical question…")
        expect(question).to_be_visible(timeout=300_000)  # every cell above the app has run
        question.fill(QUESTION)
        page.get_by_role("button", name="Compare").click()

        columns = page.locator(".course-text-app .widget-html-content h4")
        done = page.locator(".course-text-app .widget-html-content:has-text('tokens/s')")
        expect(columns).to_have_count(3)  # base, SFT and GRPO: the course run trained both adapters
        expect(done).to_have_count(3, timeout=300_000)
        assert "Could not generate" not in page.locator(".course-text-app").inner_text()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.locator(".widget-tab").screenshot(path=str(SCREENSHOT))

        page.get_by_role("tab", name="Images").click()  # a sample image, every VL model
        page.locator(".course-vl-app select").select_option(index=1)
        page.get_by_role("button", name="Describe").click()
        # base, SFT and GRPO: the course run trained both VL adapters
        expect(page.locator(".course-vl-app .course-report")).to_have_count(3, timeout=120_000)
        assert "Could not generate" not in page.locator(".course-vl-app").inner_text()
        page.locator(".widget-tab").screenshot(path=str(SCREENSHOT.with_name("07_demo_images.png")))

        page.get_by_role("tab", name="Report assistant").click()  # image → findings → advice
        page.locator(".course-report-app select").first.select_option(index=1)
        page.get_by_role("button", name="Write report").click()
        report = page.locator(".course-report-app")
        expect(report.locator(".course-report")).to_have_count(1, timeout=120_000)  # the findings
        expect(report.locator(".widget-html-content:has-text('tokens/s')")).to_have_count(1, timeout=120_000)
        assert "Could not generate" not in report.inner_text() and "medical advice" in report.inner_text()
        page.locator(".widget-tab").screenshot(path=str(SCREENSHOT.with_name("07_demo_report.png")))
        browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
