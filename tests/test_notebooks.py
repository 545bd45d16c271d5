"""Every notebook runs top to bottom in smoke mode (SDFT_LAB_SMOKE=1: few tokens, one or two steps), and no
cell prints a library's warning: the red block under a cell is the first thing a participant reads."""

from pathlib import Path

import pytest

# Jupyter's packages: not on the GPU box (docs/gpu.md), where pytest still collects this module
nbformat = pytest.importorskip("nbformat", reason="nbformat reads the notebooks: pip install jupyterlab")
NotebookClient = pytest.importorskip("nbclient", reason="nbclient runs the notebooks: pip install jupyterlab").NotebookClient

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
NOISE = ("Warning", "Failed to load")  # in a stderr stream: a library's warning or its failed-import notice


def test_there_are_notebooks():
    assert NOTEBOOKS


def noisy_outputs(nb) -> list[str]:
    """'cell N: text' for every stderr stream of an executed notebook that carries a warning."""
    return [f"cell {i}: {out['text'][:300]}" for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("name") == "stderr" and any(w in out["text"] for w in NOISE)]


def test_noisy_outputs_finds_a_warning_on_stderr_only():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr", text="Failed to load CPU gemm_4bit_forward"),
                           nbformat.v4.new_output("stream", name="stdout", text="UserWarning in a printed text"),
                           nbformat.v4.new_output("stream", name="stderr", text="Training: 100%|██| 3/3")]
    assert noisy_outputs(nb) == ["cell 0: Failed to load CPU gemm_4bit_forward"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    """Breaks it fails on (made once): lab.setup() without its KernelsNotice filter (notebook 00's model cell
    printed bitsandbytes' 'Failed to load CPU gemm_4bit_forward from kernels-community' on stderr)."""
    monkeypatch.setenv("SDFT_LAB_SMOKE", "1")
    nb = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        f"{path.name} is committed with outputs; clear them"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    assert not noisy_outputs(nb), f"{path.name} printed warnings: {noisy_outputs(nb)}"
