"""Execute notebook 02, export it to HTML, and screenshot its first token diff with headless Chromium.

    python scripts/screenshots.py        # writes docs/token_diff.png (needs Debian's `chromium`)
"""

from __future__ import annotations

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


def first_diff_html(nb) -> str:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            page = out.get("data", {}).get("text/html", "")
            if 'class="sdft-diff"' in page:
                return page
    raise RuntimeError(f"{NOTEBOOK.name} produced no token diff output")


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Chromium is missing: `apt-get install chromium` (Debian), then run again.")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    build = DOCS / "build"
    build.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter().from_notebook_node(nb)
    (build / "02_token_diffs.html").write_text(body, encoding="utf-8")
    page = build / "token_diff.html"
    page.write_text(f'<!doctype html><meta charset="utf-8"><body style="margin:16px;max-width:1040px">'
                    f"{first_diff_html(nb)}</body>", encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--no-first-run", f"--user-data-dir={profile}", "--window-size=1080,200",
                        f"--screenshot={DOCS / 'token_diff.png'}", page.as_uri()], check=True, capture_output=True)
    print(f"wrote {DOCS / 'token_diff.png'} and {build / '02_token_diffs.html'}")


if __name__ == "__main__":
    main()
