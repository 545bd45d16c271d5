"""The house rules a newcomer relies on: the core imports no tool, docs links resolve, the README stays short."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "sdft_lab"
TOOLS = ("inspect", "eval", "experiments", "interop", "cli", "demo", "lab")
CORE = sorted(p for p in PACKAGE.glob("*.py") if p.stem not in TOOLS + ("__init__",))


def imported_modules(path: Path) -> set[str]:
    """Every sdft_lab module a file imports (relative imports resolved), at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                names.add((node.module or "").split(".")[0] or node.names[0].name)
            elif (node.module or "").startswith("sdft_lab."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sdft_lab.")}
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_imports_no_tool(path):
    assert not imported_modules(path) & set(TOOLS), f"{path.name} imports {imported_modules(path) & set(TOOLS)}"


def test_the_check_can_fail():
    assert "inspect" in imported_modules(PACKAGE / "demo.py")  # a tool that does import a tool is seen


@pytest.mark.parametrize("doc", [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    missing = [link for link in links if "://" not in link and not (doc.parent / link).exists()]
    assert not missing, f"{doc.name}: {missing}"


def test_the_readme_stays_short_and_names_no_design_notes():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "DESIGN.md" not in text


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_switches_model_with_its_one_model_line(path):
    """A GPU user edits one line: the first code cell after the install cell (tests/test_hosted.py) sets MODEL;
    no other cell names a model. A notebook that loads no model (04 reads published results) names none."""
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"][1:]
    rest = "\n".join(cells)
    if path.stem == "04_retention":  # it reads the published results
        assert not re.search(r"\bload\(|MODEL|model\s*=\s*[\"']", rest), "04 loads no model and names none"
        return
    assert re.search(r'^MODEL = "bundled"  # .*preset', cells[0], re.M), "the first code cell sets MODEL"
    assert re.search(r"\bload\(MODEL\b|model=MODEL\b", rest), "MODEL is what the notebook loads"
    assert not re.search(r"""\bload\(\s*["']|model\s*=\s*["']""", rest), "a model named outside the MODEL line"


def module_graph() -> dict[str, set[str]]:
    """sdft_lab's modules and the sdft_lab modules each imports, at any depth of the file (function-level
    imports too: a cycle hidden inside a function is still a cycle)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if not base.startswith("sdft_lab"):
                    continue
                for alias in node.names:  # `from . import frontier` names a module; `from .x import f` does not
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_sdft_lab_has_no_import_cycle():
    """Break it fails on (made once): `from .workshop import workshop` inside a function of
    experiments/runs.py, while workshop.py imports runs."""
    graph = module_graph()
    assert "sdft_lab.experiments.workshop" in graph["sdft_lab.experiments.__main__"]  # the graph sees imports
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # and the search finds one
    assert cycles(graph) == []


def test_the_suite_hides_the_gpu_from_every_test_but_the_gpu_ones():
    """conftest pins CUDA_VISIBLE_DEVICES="" before torch looks for a GPU, so the CLI runs, workers and
    notebook kernels that the tests start inherit the CPU, and its bit-for-bit promises hold on a machine with
    a GPU too. Break it fails on (made once): the pin removed from conftest.py."""
    import os

    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    with pytest.raises(pytest.UsageError, match="SDFT_LAB_GPU_TESTS=1"):
        conftest_configure("gpu")


def conftest_configure(markexpr: str):
    from conftest import pytest_configure

    pytest_configure(type("Config", (), {"getoption": staticmethod(lambda name: markexpr)})())
