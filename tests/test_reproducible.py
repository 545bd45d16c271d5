"""Same seed, same run, as a user sees it: `sdft-lab train` on the bundled model, temperature 1, real rollouts.

Each run is its own process, so nothing (an RNG stream, a cached kernel choice) carries over between them.
Step 1 cannot tell runs apart (LoRA B starts at zero, so every student equals the base), hence several steps.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdft_lab import checkpoint

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast

STEPS = 6
ARGS = ["train", "--data", "demo", "--steps", str(STEPS), "--batch-size", "2", "--max-new-tokens", "16",
        "--lr", "1e-3", "--no-preflight", "--checkpoint-every", "1"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sdft_lab.cli", *ARGS, "--out", str(out), *extra]


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def adapter_bytes(out: Path) -> bytes:
    return (out / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    subprocess.run(command(out), check=True, env=ENV)
    return out


def test_two_runs_with_the_same_seed_are_identical(first_run, tmp_path):
    subprocess.run(command(tmp_path), check=True, env=ENV)
    a, b = history(first_run), history(tmp_path)
    assert [r["step"] for r in a] == list(range(1, STEPS + 1))
    assert [r["sample"] for r in a] == [r["sample"] for r in b]  # the same rollouts …
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # … the same losses, bit for bit
    assert adapter_bytes(first_run) == adapter_bytes(tmp_path)
    assert len({r["sample"] for r in a}) > 1  # real sampling: the steps did not all draw the same text


def test_another_seed_gives_another_run(first_run, tmp_path):
    """The check above must be able to fail: a different seed changes the adapter init and the rollouts."""
    subprocess.run(command(tmp_path, "--seed", "1"), check=True, env=ENV)
    assert [r["loss"] for r in history(first_run)] != [r["loss"] for r in history(tmp_path)]


def test_sigkill_then_resume_gives_the_uninterrupted_run(first_run, tmp_path):
    run = subprocess.Popen(command(tmp_path), env=ENV)
    deadline = time.time() + 300
    ckpts = tmp_path / "checkpoints"
    while (latest := checkpoint.latest(ckpts)) is None or latest.name < "step-000003":
        assert run.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    killed_at = int(checkpoint.latest(ckpts).name.split("-")[1])
    assert 3 <= killed_at < STEPS and not (tmp_path / "metrics.jsonl").exists()  # killed mid-training

    subprocess.run(command(tmp_path, "--resume"), check=True, env=ENV)
    resumed, uninterrupted = history(tmp_path), history(first_run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in uninterrupted]
    assert [r["sample"] for r in resumed] == [r["sample"] for r in uninterrupted]
    assert adapter_bytes(tmp_path) == adapter_bytes(first_run)
