"""`make gpu-check` without a GPU says so and fails; its code path runs end to end on a tiny shape on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast

SCRIPT = Path(__file__).parent.parent / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check runs for real there")
def test_without_a_gpu_it_says_so_and_exits_non_zero():
    out = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr


def test_the_same_code_runs_on_a_tiny_shape_on_the_cpu_and_checks_what_it_measures(tmp_path):
    """load(folder, "nf4") of a random checkpoint: peft's 4-bit LoRA layers, checkpointing on, the rollout
    length asked for. Break it fails on (made once): add_student leaving checkpointing off. The layer class it
    asserts is the one the old build_nf4 (is_loaded_in_4bit unset) did not give: peft's plain lora.Linear."""
    subprocess.run([sys.executable, SCRIPT, "--allow-cpu", "--shapes", "tiny", "--prompts", "2", "--new-tokens", "8",
                    "--steps", "1", "--out", tmp_path], check=True, capture_output=True, text=True)
    result = json.loads(next(tmp_path.glob("gpu_check-*.json")).read_text())
    shape = result["shapes"]["tiny"]
    assert shape["layers"] == {"lora_layers": 14, "layer_class": "peft.tuners.lora.bnb.Linear4bit",
                               "gradient_checkpointing": True}  # 2 layers × 7 projections
    assert shape["settings"] == {"lora_r": 16, "batch_size": 2, "max_new_tokens": 8}
    row = shape["by_prompts"]["2"]
    assert row["sdft"]["rollout_len"] <= 8 and row["sdft"]["s_per_step"] > 0 and row["sft"]["s_per_step"] > 0
    assert row["sdft"]["sample_s"] > 0 and not [k for k in row if k.endswith("_error")], row
    assert all(row[f"{e}_tokens_per_s"] > 0 for e in ("lean", "lean_eager", "hf", "hf_static"))
    assert row["lean_engine"] == "static"  # the step a GPU captures as a CUDA graph, run eagerly here
    assert row["sdft_over_sft"] == pytest.approx(row["sdft"]["s_per_step"] / row["sft"]["s_per_step"])
    assert result["targets"] == []  # the 7B targets: reported for the 7B shape only, never an exit status


def test_a_check_cut_after_the_first_rollout_engine_has_written_that_engines_figure(tmp_path, monkeypatch):
    """The box's time limit stops the check as the second rollout engine starts: the JSON already holds the first
    engine's figure, the graph decode's (the one the 7B target needs). Break it fails on (made once): the rollout
    figures written only after all four engines."""
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    from sdft_lab import sampler

    generate = sampler.generate

    def cut(*args, static=None, **kwargs):
        if static is False:  # only the check's second engine, the eager lean step, asks for it by name
            raise KeyboardInterrupt  # what a timeout's signal does to the process
        return generate(*args, static=static, **kwargs)

    monkeypatch.setattr(sampler, "generate", cut)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--allow-cpu", "--shapes", "tiny", "--prompts", "2", "--new-tokens", "8", "--steps", "1",
                        "--out", str(tmp_path)])
    row = json.loads(next(tmp_path.glob("gpu_check-*.json")).read_text())["shapes"]["tiny"]["by_prompts"]["2"]
    assert row["lean_tokens_per_s"] > 0 and row["lean_engine"] == "static"
    assert "lean_eager_tokens_per_s" not in row and "hf_tokens_per_s" not in row


def test_the_pack_for_an_air_gapped_box_is_small_and_shadows_the_installed_packages(tmp_path):
    """scripts/pack_gpu_box.py: bitsandbytes with one CUDA library, gguf, peft and the tokenizer, under 48 MiB;
    with the folder on PYTHONPATH its copies are the ones imported, and importlib.metadata (accelerate's check
    for bitsandbytes) finds their dist-info. Break it fails on (made once): the pack without the dist-info."""
    pack = tmp_path / "box"
    subprocess.run([sys.executable, Path(__file__).parent.parent / "scripts" / "pack_gpu_box.py", "--out", pack],
                   check=True, capture_output=True, text=True)
    libraries = sorted(p.name for p in (pack / "bitsandbytes").glob("libbitsandbytes_*.so"))
    assert libraries == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]
    assert (pack / "gguf" / "__init__.py").is_file() and (pack / "tokenizer" / "tokenizer.json").is_file()
    assert sum(p.stat().st_size for p in pack.rglob("*") if p.is_file()) < 48 * 2**20
    script = ("import importlib.metadata as md, bitsandbytes, gguf, peft\n"
              "for m in (bitsandbytes, gguf, peft): print(m.__file__, md.distribution(m.__name__).locate_file(''))")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(pack)}, check=True,
                         capture_output=True, text=True)
    assert len(out.stdout.split()) == 6 and all(path.startswith(str(pack)) for path in out.stdout.split())


def test_the_core_runs_without_what_the_box_lacks(tmp_path):
    """An air-gapped box has no plotly, bitsandbytes or gguf installed: sdft_lab imports and trains there
    (report=False: the report page needs plotly). Break it fails on (made once): plotly imported at the top of
    report.py."""
    script = f"""
import importlib.machinery as machinery
import sys
class Absent(machinery.PathFinder):  # these packages are not installed, as on the box
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("plotly", "bitsandbytes", "gguf"):
            return None
        return machinery.PathFinder.find_spec(name, path, target)
sys.meta_path = [Absent if f is machinery.PathFinder else f for f in sys.meta_path]
sys.path.insert(0, {str(Path(__file__).parent)!r})
from transformers import AutoTokenizer
from conftest import tiny_llama
from sdft_lab import SDFT, SDFTConfig, TrainConfig, Trainer, add_student, load_dataset
tok = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r})
trainer = Trainer(add_student(tiny_llama(tok)), tok, SDFT(SDFTConfig(max_new_tokens=4)), load_dataset("demo")[:2],
                  TrainConfig(steps=1, batch_size=2, report=False))
print(trainer.train()[0]["step"])
"""
    from transformers import AutoTokenizer

    from sdft_lab.bundled import bundled_path

    AutoTokenizer.from_pretrained(bundled_path()).save_pretrained(tmp_path / "tok")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0 and out.stdout.strip().endswith("1"), out.stderr[-2000:]
