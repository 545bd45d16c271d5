"""`make gpu-check` without a GPU says so and fails; its code path runs end to end on a tiny shape on the CPU."""

import json
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


def test_the_same_code_runs_on_a_tiny_shape_on_the_cpu_and_writes_its_figures(tmp_path):
    subprocess.run([sys.executable, SCRIPT, "--allow-cpu", "--shapes", "tiny", "--prompts", "2", "--new-tokens", "8",
                    "--steps", "1", "--out", tmp_path], check=True, capture_output=True, text=True)
    result = json.loads(next(tmp_path.glob("gpu_check-*.json")).read_text())
    row = result["shapes"]["tiny"]["by_prompts"]["2"]
    assert row["sdft"]["s_per_step"] > 0 and row["sft"]["s_per_step"] > 0
    assert row["sdft"]["sample_s"] > 0 and row["lean_tokens_per_s"] > 0 and row["hf_tokens_per_s"] > 0
    assert row["sdft_over_sft"] == pytest.approx(row["sdft"]["s_per_step"] / row["sft"]["s_per_step"])
