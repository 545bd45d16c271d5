"""Data-parallel training for real: two CPU processes (gloo) under `accelerate launch`, against one process."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dist_worker
from sdft_lab import distributed

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast

ACCELERATE = Path(sys.executable).parent / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """Both processes' output is kept (not printed) when check=False: the caller reads why they failed."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = str(ACCELERATE if ACCELERATE.exists() else shutil.which("accelerate"))
    # accelerate's --cpu flag starts one process unless MPI is set up; --multi_gpu with no visible GPU
    # starts two processes that join a gloo group on the CPU.
    return subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                           str(Path(dist_worker.__file__)), str(out), "--batch-size", "2", *extra],
                          check=check, capture_output=not check, text=True, env=env, timeout=300)


needs_accelerate = pytest.mark.skipif(not ACCELERATE.exists() and shutil.which("accelerate") is None,
                                      reason="accelerate is not installed")


@needs_accelerate
def test_sft_on_two_processes_equals_one_process_on_the_combined_batch(tokenizer, tmp_path):
    """No sampling, so the runs are comparable number for number: 2 steps × 2 micro-batches, batch 2 per
    process against 4 on one. Breaks it fails on (each made once): the gradients summed over the processes
    instead of averaged, and the lr scaled by the world size."""
    launch_two(tmp_path / "dp", "--method", "sft")
    ranks = [json.loads((tmp_path / "dp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = dist_worker.run(tmp_path / "one", tokenizer, batch_size=4, lora_seed=100, method="sft")
    for (a, b), whole in zip(zip(ranks[0]["batches"], ranks[1]["batches"]), single["batches"], strict=True):
        assert sorted(a + b) == sorted(whole)
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    dp = load_file(tmp_path / "dp" / "rank0.safetensors")
    one = load_file(tmp_path / "one" / "rank0.safetensors")
    adapters = sorted(k for k in one if "lora_" in k)
    assert adapters and any(one[k].abs().sum() > 0 for k in adapters if "lora_B" in k)  # it did train
    # the first step's gradient, after the average, is the single process's (float rounding apart) …
    grads = sorted(k for k in one if k.startswith("averaged."))
    assert grads
    # rounding is relative to the tensor's scale, not to each element: two processes sum in another order, and
    # on a CPU with AMX an element near 0 differs by ~1e-7 of the largest (2026-12-03, Intel Xeon), far over an
    # elementwise rtol; a summed gradient (the break) is off by the whole tensor
    for k in grads:
        torch.testing.assert_close(dp[k], one[k], rtol=1e-4, atol=1e-5 * one[k].abs().max().item() + 1e-12, msg=k)
    # … and so are the adapters after 2 steps, to Adam's amplification of that rounding (measured ≤ 8e-5 on an
    # AMD EPYC, 7.4e-4 on one element on an Intel Xeon with AMX, 2026-12-03); Adam's first step moves every
    # element by about the lr, 1e-2, so the lr × world size break is off by that much
    for k in adapters:
        torch.testing.assert_close(dp[k], one[k], rtol=0, atol=2e-3, msg=k)


@needs_accelerate
def test_two_processes_train_like_one_process_on_the_combined_batch(tokenizer, tmp_path):
    launch_two(tmp_path / "dp")
    ranks = [json.loads((tmp_path / "dp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = dist_worker.run(tmp_path / "one", tokenizer, batch_size=4, lora_seed=100)
    assert [r["world"] for r in ranks] == [2, 2] and single["world"] == 1

    # each process trained on its own half of every batch, and together on the single process's batches
    for (a, b), whole in zip(zip(ranks[0]["batches"], ranks[1]["batches"]), single["batches"], strict=True):
        assert not set(a) & set(b)
        assert sorted(a + b) == sorted(whole)
    # at temperature 1, with rollout seeds of their own: the processes never share a seed
    assert not set(ranks[0]["seeds"]) & set(ranks[1]["seeds"])
    assert ranks[0]["losses"] == ranks[1]["losses"]  # metrics are averaged over the processes

    # the gradient each process steps with is the mean of the processes' own gradients
    tensors = [load_file(tmp_path / "dp" / f"rank{r}.safetensors") for r in (0, 1)]
    local = sorted(k for k in tensors[0] if k.startswith("local."))
    assert local and any(not torch.equal(tensors[0][k], tensors[1][k]) for k in local)  # they did differ
    for key in local:
        mean = (tensors[0][key] + tensors[1][key]) / 2
        averaged = key.replace("local.", "averaged.")
        assert torch.equal(tensors[0][averaged], tensors[1][averaged]), key
        torch.testing.assert_close(tensors[0][averaged], mean, rtol=1e-6, atol=1e-9, msg=key)

    # identical adapters (student and EMA teacher) on both processes, although each process drew its own
    # LoRA init: the Trainer starts every process from the main process's adapters
    adapters = [{k: v for k, v in t.items() if "lora_" in k} for t in tensors]
    reference = {k: v for k, v in load_file(tmp_path / "one" / "rank0.safetensors").items() if "lora_" in k}
    assert adapters[0].keys() == reference.keys()
    assert all(torch.equal(adapters[0][name], adapters[1][name]) for name in reference)

    # only the main process writes checkpoints and adapters (each process was given folders of its own)
    assert [p.name for p in (tmp_path / "dp" / "checkpoints-rank0").iterdir()] == [f"step-{dist_worker.STEPS:06d}"]
    assert (tmp_path / "dp" / "adapter-rank0" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "dp" / "checkpoints-rank1").exists() and not (tmp_path / "dp" / "adapter-rank1").exists()


def test_one_process_never_needs_accelerate(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if it were not installed
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = distributed.setup(torch.nn.Linear(2, 2))
    assert (group.rank, group.world, group.is_main) == (0, 1, True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ImportError, match="needs accelerate"):
        distributed.setup(torch.nn.Linear(2, 2))


@needs_accelerate
def test_processes_that_compute_in_different_precisions_are_refused(tmp_path):
    """Rank 1's base in bf16, rank 0's in fp32 (two CPUs whose precision policies chose apart): the Trainer
    refuses before a step. Break it fails on (made once): the check removed (both processes train)."""
    done = launch_two(tmp_path / "mixed", "--method", "sft", "--bf16-rank", "1", check=False)
    assert done.returncode != 0 and "every process must compute alike" in done.stderr
    assert not (tmp_path / "mixed" / "rank0.json").exists() and not (tmp_path / "mixed" / "rank1.json").exists()
