"""README pictures, made with headless Chromium (Debian's `chromium`).

    python scripts/screenshots.py                 # executes notebook 02 → docs/token_diff.png, and the run figures
    python scripts/screenshots.py --figures-only  # only the experiments' plotly figures under runs/ → docs/*.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_token_diffs.ipynb"
DOCS = ROOT / "docs"
# experiment figure (written by sdft_lab.experiments) → README picture
FIGURES = {"runs/knowledge/retention.html": "retention.png", "runs/knowledge/qa.html": "knowledge_qa.png",
           "runs/sequential/sequential.html": "sequential.png", "runs/pareto/pareto.html": "pareto.png"}


def first_diff_html(nb) -> str:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            page = out.get("data", {}).get("text/html", "")
            if 'class="sdft-diff"' in page:
                return page
    raise RuntimeError(f"{NOTEBOOK.name} produced no token diff output")


def screenshot(chromium: str, page: Path, png: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--no-first-run", f"--user-data-dir={profile}", f"--window-size={size}",
                        "--virtual-time-budget=5000",  # let plotly.js draw before the picture is taken
                        f"--screenshot={png}", page.as_uri()], check=True, capture_output=True)
    print(f"wrote {png}")


def token_diff(chromium: str) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    build = DOCS / "build"
    build.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter().from_notebook_node(nb)
    (build / "02_token_diffs.html").write_text(body, encoding="utf-8")
    page = build / "token_diff.html"
    page.write_text(f'<!doctype html><meta charset="utf-8"><body style="margin:16px;max-width:1040px">'
                    f"{first_diff_html(nb)}</body>", encoding="utf-8")
    screenshot(chromium, page, DOCS / "token_diff.png", "1080,200")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures-only", action="store_true", help="skip notebook 02's token diff")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Chromium is missing: `apt-get install chromium` (Debian), then run again.")
    if not args.figures_only:
        token_diff(chromium)
    for figure, png in FIGURES.items():
        if (ROOT / figure).exists():
            screenshot(chromium, ROOT / figure, DOCS / png, "900,420")
        else:
            print(f"skipped {png}: {figure} does not exist (run the experiment first)")


if __name__ == "__main__":
    main()
