"""The lab as a workshop participant sees it: JupyterLab in a real browser, notebooks run with Run All.

JupyterLab starts on a free local port with a token, over copies of notebooks 02 and 00 in smoke mode;
headless Chromium (Debian's `chromium`, driven by playwright from PyPI: no browser download) opens each,
runs all cells, and the test fails on a JavaScript error, an "Error displaying widget", a cell that
raised, a warning printed in a cell (the red block a participant would see), or a stepper that does not
redraw after a control changes. Screenshots go to $SDFT_LAB_SCREENSHOTS (default: a temporary folder).

    make browser-test     # this file alone; `make test` runs it too when Chromium is installed
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOKS = ("02_token_diffs.ipynb", "00_quickstart.ipynb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(url, token, folder): a JupyterLab server over copies of the notebooks, torn down afterwards."""
    if CHROMIUM is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian) to run the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright drives the browser: pip install playwright")
    folder = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", folder / "notebooks")
    shutil.copytree(ROOT / "configs", folder / "configs")  # notebook 00 reads ../configs/quickstart.yaml
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "SDFT_LAB_SMOKE": "1", "SDFT_LAB_RUNS": str(folder / "runs"), "JUPYTER_CONFIG_DIR":
           str(folder / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(folder / ".runtime")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder / 'notebooks'}", "--allow-root",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    try:
        yield url, token, folder
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def screenshots() -> Path:
    path = Path(os.environ.get("SDFT_LAB_SCREENSHOTS") or tempfile.mkdtemp(prefix="sdft-lab-screens-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_all(browser, lab, name: str):
    """Open notebook `name`, Run All, wait for every cell; returns (page, console errors)."""
    url, token, _ = lab
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_timeout(3000)  # the kernel starts; Run All queues behind it anyway
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator("li.lm-Menu-item[data-command='notebook:run-all-cells']").click()
    code_cells = page.locator(".jp-Notebook .jp-CodeCell").count()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        done = [p for p in prompts if p.strip().startswith("[") and p.strip()[1:-2].strip().isdigit()]
        if len(done) == code_cells:
            break
        time.sleep(1)
    else:
        pytest.fail(f"{name}: not every cell finished within 10 minutes: {prompts}")
    page.wait_for_timeout(1500)  # the last widget views render after their cell finished
    return page, errors


def cell_problems(page) -> list[str]:
    """Tracebacks, warnings and widget errors that a participant would see under the cells."""
    problems = []
    for text in page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts():
        if any(word in text for word in ("Error", "Warning", "Traceback", "warn")):
            problems.append(text[:500])
    problems += page.locator(".jp-OutputArea-output", has_text="Error displaying widget").all_inner_texts()
    return problems


def test_token_diffs_notebook_runs_and_its_stepper_redraws(browser, lab):
    page, errors = run_all(browser, lab, "02_token_diffs.ipynb")
    out = screenshots()
    page.screenshot(path=str(out / "02_token_diffs.png"), full_page=True)
    assert not errors, f"JavaScript console errors: {errors}"
    assert not cell_problems(page), cell_problems(page)

    stepper = page.locator(".widget-vbox", has=page.locator("button", has_text="resample")).first
    stepper.scroll_into_view_if_needed()
    diff = stepper.locator(".sdft-diff").first
    before = diff.inner_html()
    stepper.locator("button", has_text="resample").click()
    page.wait_for_function("(b) => { const d = document.querySelector('.widget-vbox .sdft-diff');"
                           " return d && d.innerHTML !== b; }", arg=before, timeout=120_000)
    page.wait_for_timeout(500)
    assert diff.inner_html() != before
    stepper.screenshot(path=str(out / "stepper.png"))
    # every label and option is shown whole: no element of the stepper is wider than its box
    cut = page.evaluate("""(root) => [...root.querySelectorAll('label, .widget-label, select, button')]
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.trim().slice(0, 60))""",
                        stepper.element_handle())
    assert not cut, f"cut-off labels: {cut}"
    page.close()


def test_quickstart_notebook_runs_clean(browser, lab):
    page, errors = run_all(browser, lab, "00_quickstart.ipynb")
    page.screenshot(path=str(screenshots() / "00_quickstart.png"), full_page=True)
    assert not errors, f"JavaScript console errors: {errors}"
    assert not cell_problems(page), cell_problems(page)
    page.close()
