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
    # Every cell in the page, not only those in view (JupyterLab 4 renders a window of them by default):
    # the test reads every prompt, and a screenshot shows the whole notebook.
    settings = folder / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    news = folder / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no "news?" pop-up
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "SDFT_LAB_SMOKE": "1", "SDFT_LAB_RUNS": str(folder / "runs"), "JUPYTER_CONFIG_DIR":
           str(folder / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(folder / ".runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder / 'notebooks'}", "--allow-root",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
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
def chromium(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def screenshots() -> Path:
    path = Path(os.environ.get("SDFT_LAB_SCREENSHOTS") or tempfile.mkdtemp(prefix="sdft-lab-screens-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_all(chromium, lab, name: str):
    """Open notebook `name`, Run All, wait for every cell; returns (page, console errors)."""
    url, token, _ = lab
    page = chromium.new_page(viewport={"width": 1280, "height": 4200})  # tall: the whole notebook in one shot
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    # a workspace of its own, reset: only this notebook is open (JupyterLab restores earlier tabs otherwise)
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_timeout(3000)  # the kernel starts; Run All queues behind it anyway
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
    prompts_of = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
    code_cells, deadline, quiet_since = prompts_of.count(), time.monotonic() + 600, None
    while time.monotonic() < deadline:
        prompts = [p.strip() for p in prompts_of.all_inner_texts()]
        ran = [p for p in prompts if p[1:-2].strip().isdigit()]
        if len(ran) == code_cells:
            break
        quiet = ran and not any("*" in p for p in prompts)  # nothing running, nothing queued, not all ran
        quiet_since = (quiet_since or time.monotonic()) if quiet else None
        if quiet_since and time.monotonic() - quiet_since > 20:
            pytest.fail(f"{name}: Run All stopped after {len(ran)} of {code_cells} cells: {cell_problems(page)}")
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


def test_token_diffs_notebook_runs_and_its_stepper_redraws(chromium, lab):
    page, errors = run_all(chromium, lab, "02_token_diffs.ipynb")
    out = screenshots()
    page.screenshot(path=str(out / "02_token_diffs.png"), full_page=True)
    assert not errors, f"JavaScript console errors: {errors}"
    assert not cell_problems(page), cell_problems(page)

    stepper = page.locator(".widget-vbox", has=page.locator("button", has_text="resample")).first
    stepper.scroll_into_view_if_needed()
    diff = stepper.locator(".sdft-diff").first

    def redraws(change, what: str) -> None:
        before = diff.inner_html()
        change()
        for _ in range(240):  # the kernel re-scores, then the widget redraws (seconds on the CPU)
            page.wait_for_timeout(500)
            if diff.inner_html() != before:
                return
        pytest.fail(f"the stepper did not redraw after {what}")

    # Both change what is drawn whatever the sampler draws (a resample of 8 tokens may repeat the rollout):
    # without the demonstration the teacher scores differently; another example has another question.
    redraws(lambda: stepper.locator("input[type=checkbox]").first.click(), "the demonstration was switched off")
    redraws(lambda: stepper.locator("select").first.select_option(index=1), "another example was picked")
    assert "What is the capital city of Velmora?" not in diff.inner_text()
    stepper.screenshot(path=str(out / "stepper.png"))
    # every label and option is shown whole: no element of the stepper is wider than its box
    cut = page.evaluate("""(root) => [...root.querySelectorAll('label, .widget-label, select, button')]
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.trim().slice(0, 60))""",
                        stepper.element_handle())
    assert not cut, f"cut-off labels: {cut}"
    page.close()


def test_quickstart_notebook_runs_clean(chromium, lab):
    page, errors = run_all(chromium, lab, "00_quickstart.ipynb")
    page.screenshot(path=str(screenshots() / "00_quickstart.png"), full_page=True)
    assert not errors, f"JavaScript console errors: {errors}"
    assert not cell_problems(page), cell_problems(page)
    page.close()
