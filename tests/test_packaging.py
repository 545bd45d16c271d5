"""The wheel, installed into a fresh virtual environment, outside the checkout: `sdft-lab --help` runs and the
bundled data load from inside the installed package (an editable install could hide a wheel without them)."""

import email
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources, so that the build leaves nothing in the checkout."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for name in ("sdft_lab", "data", "configs", "docs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(src)], check=True, timeout=120)
    wheel, = dist.glob("sdft_lab-*.whl")
    return wheel


def test_the_wheel_holds_the_data_the_code_loads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"sdft_lab/data/{p.relative_to(ROOT / 'data')}" for p in (ROOT / "data").rglob("*.jsonl")}
    assert expected and expected <= names
    assert {"sdft_lab/eval/tasks/sdft_lab_probes.yaml", "sdft_lab/cli.py", "sdft_lab/configs/quickstart.yaml",
            "sdft_lab/results/frontier.json", "sdft_lab/results/frontier_qa.json", "sdft_lab/results/continual.json",
            "sdft_lab/results/recipe_search.json"} <= names
    assert not [n for n in names if n.startswith("sdft_lab/results/") and not n.endswith(".json")]  # no docs pages


def test_the_extras_accept_the_pinned_versions(wheel):
    archive = zipfile.ZipFile(wheel)
    meta = email.message_from_bytes(archive.read(next(n for n in archive.namelist() if n.endswith("/METADATA"))))
    extras = ("dev", "trl", "lmeval", "lab")
    assert set(extras) <= set(meta.get_all("Provides-Extra"))
    for req in map(Requirement, meta.get_all("Requires-Dist")):
        if req.marker and any(req.marker.evaluate({"extra": e}) for e in extras):
            assert req.specifier.contains(version(req.name)), (str(req), version(req.name))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(python, its site-packages, environment): a fresh virtual environment with the wheel installed; torch
    & co. come from this environment, appended after the new one's own site-packages."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=120)
    return python, site, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_installed_wheel_runs_outside_the_checkout(installed, tmp_path):
    python, site, env = installed
    env_dir = python.parent.parent
    help_text = subprocess.run([env_dir / "bin" / "sdft-lab", "--help"], cwd=tmp_path, env=env, check=True,
                               capture_output=True, text=True, timeout=120).stdout
    assert "usage: sdft-lab" in help_text and "export-trl" in help_text
    # a real command through the console script: exit status 0, bundled data and tokenizer found
    subprocess.run([env_dir / "bin" / "sdft-lab", "export-trl", "--data", "demo", "--out", "trl"], cwd=tmp_path,
                   env=env, check=True, capture_output=True, timeout=120)
    assert (tmp_path / "trl" / "train.jsonl").read_text().count("\n") == 16

    probe = ("import sdft_lab, sdft_lab.data as d, sdft_lab.eval as e; "
             "print(sdft_lab.__file__); print(d.DATA_DIR); "
             "print(len(d.load_dataset('demo')), len(e.load_probes()), len(e.load_knowledge().eval))")
    out = subprocess.run([python, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
                         timeout=120).stdout.split("\n")
    assert out[0].startswith(str(site)) and out[1] == str(site / "sdft_lab" / "data")
    assert all(int(n) > 0 for n in out[2].split())


def test_environment_yml_installs_the_pinned_requirements_with_cpu_torch():
    yaml = pytest.importorskip("yaml", reason="PyYAML reads environment.yml")
    tomllib = pytest.importorskip("tomllib", reason="Python ≥ 3.11 reads pyproject.toml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(python.removeprefix("python="))
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip_lines
    requirement_files = [line.split()[1] for line in pip_lines if line.startswith("-r ")]
    assert requirement_files == ["requirements.txt"] and (ROOT / "requirements.txt").is_file()


@pytest.mark.parametrize("name", ["00_quickstart", "03_knowledge_injection", "04_retention"])
def test_a_notebook_copied_elsewhere_runs_on_the_installed_wheel(installed, name, tmp_path, monkeypatch):
    """A hosted notebook (Colab, a JupyterHub seat): the wheel installed, the notebook alone in a folder of its
    own, no checkout anywhere on the path. Breaks it fails on (each made once): notebook 00 reading
    ../configs/quickstart.yaml, the repository's path, and the published frontier left out of the wheel;
    04: docs/continual.json left out of the wheel."""
    import nbformat
    from nbclient import NotebookClient

    python, site, _ = installed
    spec = tmp_path / "jupyter" / "kernels" / "wheel"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [str(python), "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"], "display_name": "wheel",
                                                  "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("SDFT_LAB_SMOKE", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sdft_lab\nprint(sdft_lab.__file__)"))
    NotebookClient(nb, timeout=600, kernel_name="wheel", resources={"metadata": {"path": str(folder)}}).execute()
    assert nb.cells[-1].outputs[0]["text"].strip().startswith(str(site))  # the wheel's copy, not the checkout
