"""Faults and resume, bad configuration, safe loading. Each bad input must give a message that says what to do."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdft_lab import SDFT, StudentConfig, SDFTConfig, TrainConfig, Trainer, add_student, load
from sdft_lab import checkpoint
from sdft_lab.models import EMA, STUDENT

WORKER = Path(__file__).parent / "resume_worker.py"
PACKAGE = Path(__file__).parent.parent / "sdft_lab"


def adapter_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def make_trainer(tiny, demo, tmp_path, **kw):
    model, tok = tiny
    cfg = TrainConfig(steps=6, batch_size=2, lr=1e-2, preflight=False, checkpoint_dir=str(tmp_path / "ckpt"),
                      checkpoint_every=1, **kw)
    return Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=6, teacher="ema", ema_rate=0.1)), demo, cfg)


def read_losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, Path(path).read_text().splitlines())}


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_losses(tmp_path):
    steps, env = 8, {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, WORKER, tmp_path / "a", tmp_path / "a.jsonl", str(steps)], check=True, env=env)
    uninterrupted = read_losses(tmp_path / "a.jsonl")

    run = subprocess.Popen([sys.executable, WORKER, tmp_path / "b", tmp_path / "b.jsonl", str(steps), "--pause", "0.5"],
                           env=env)
    deadline, log = time.time() + 120, tmp_path / "b.jsonl"
    # wait for the third logged step (its checkpoint is written before its log line), then kill mid-run
    while not log.exists() or log.read_text().count("\n") < 3:
        assert run.poll() is None and time.time() < deadline, "the worker ended before it could be killed"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    killed_at = len(read_losses(tmp_path / "b.jsonl"))
    assert 3 <= killed_at < steps  # killed mid-training

    subprocess.run([sys.executable, WORKER, tmp_path / "b", tmp_path / "b.jsonl", str(steps), "--resume"],
                   check=True, env=env)
    resumed = read_losses(tmp_path / "b.jsonl")
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-6), step
    assert not list((tmp_path / "b").glob(".tmp-*"))


def test_checkpoint_round_trip_restores_everything(tiny, demo, tmp_path):
    a = make_trainer(tiny, demo, tmp_path)
    a.step(), a.step()
    saved, opt = adapter_state(a.model), a.optimizer.state_dict()
    path = checkpoint.latest(tmp_path / "ckpt")
    assert path.name == "step-000002" and sorted(p.name for p in path.iterdir()) == sorted(checkpoint.FILES)
    for p in a.params:  # scramble, then restore
        p.data.normal_()
    assert a.resume() == 2 and len(a.history) == 2
    now = adapter_state(a.model)
    assert all(torch.equal(now[n], saved[n]) for n in saved)
    assert any(f".{EMA}." in n for n in saved)  # the EMA teacher is in the checkpoint
    assert torch.equal(a.optimizer.state_dict()["state"][0]["exp_avg"], opt["state"][0]["exp_avg"])
    assert a.scheduler.last_epoch == 2


def test_only_the_newest_checkpoints_are_kept(tiny, demo, tmp_path):
    trainer = make_trainer(tiny, demo, tmp_path, keep_checkpoints=2)
    for _ in range(4):
        trainer.step()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000003", "step-000004"]


def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(tiny, demo, tmp_path):
    trainer = make_trainer(tiny, demo, tmp_path)
    trainer.step(), trainer.step()
    before = adapter_state(trainer.model)
    loss = trainer.objective.loss
    trainer.objective.loss = lambda *a, **k: (lambda out: (out[0] * float("nan"), out[1]))(loss(*a, **k))
    with pytest.raises(FloatingPointError, match="loss is nan.*checkpoints are intact"):
        trainer.step()
    after = adapter_state(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before) and trainer.step_count == 2
    assert checkpoint.latest(tmp_path / "ckpt").name == "step-000002"
    trainer.objective.loss = loss
    assert trainer.resume() == 2 and trainer.step()["step"] == 3


def test_a_nan_gradient_stops_training_without_an_update(tiny, demo, tmp_path):
    trainer = make_trainer(tiny, demo, tmp_path)
    before = adapter_state(trainer.model)
    hook = trainer.params[0].register_hook(lambda g: g * float("nan"))
    with pytest.raises(FloatingPointError, match="gradient norm is nan"):
        trainer.step()
    hook.remove()
    after = adapter_state(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert checkpoint.latest(tmp_path / "ckpt") is None and trainer.step()["step"] == 1


def test_keyboard_interrupt_in_the_teacher_leaves_a_usable_trainer(tiny, demo, tmp_path, monkeypatch):
    import sdft_lab.sdft as sdft

    trainer = make_trainer(tiny, demo, tmp_path)
    real, calls = sdft.completion_hidden, []

    def interrupted(model, prompts, completions):
        calls.append(1)
        if len(calls) == 1:  # the first call is the teacher's, inside teacher_view("ema")
            raise KeyboardInterrupt
        return real(model, prompts, completions)

    monkeypatch.setattr(sdft, "completion_hidden", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.step()
    model = trainer.model
    assert model.active_adapter == STUDENT and model.training
    named = dict(model.named_parameters())
    assert all(p.requires_grad == (f".{STUDENT}." in n) for n, p in named.items())
    assert trainer.step()["step"] == 1 and trainer.step_count == 1


def test_out_of_memory_frees_the_step_and_the_next_step_runs(tiny, demo, tmp_path):
    """Breaks it fails on (each made once): re-raising inside the `except` with `from err` (the failed step's
    tensors stay alive in the traceback, and Jupyter keeps the last one), or a step count that moves."""
    import gc
    import weakref

    trainer = make_trainer(tiny, demo, tmp_path)
    loss, held = trainer.objective.loss, {}

    def oom(*a, **k):
        activations = torch.ones(1000)  # what a real step holds when it runs out
        held["ref"] = weakref.ref(activations)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer.objective.loss = oom
    with pytest.raises(torch.OutOfMemoryError, match="smaller batch_size.*max_new_tokens.*nf4") as caught:
        trainer.step()
    assert "Tried to allocate 2.00 GiB" in str(caught.value)  # the original message is kept
    gc.collect()
    assert held["ref"]() is None, "the failed step's tensors are still alive"
    assert trainer.step_count == 0 and not trainer.history
    trainer.objective.loss = loss
    assert trainer.step()["step"] == 1


# ---------------------------------------------------------------------------- bad configuration


def test_lora_target_modules_that_do_not_exist(tokenizer):
    from conftest import tiny_llama

    with pytest.raises(ValueError, match=r"match no layer.*linear layers are named \[.*q_proj.*'all-linear'"):
        add_student(tiny_llama(tokenizer), StudentConfig(target_modules=["qkv_fused"]))


def test_top_k_larger_than_the_vocabulary(tiny, demo):
    model, tok = tiny
    cfg = SDFTConfig()
    cfg.divergence.top_k = 10**6
    with pytest.raises(ValueError, match="top_k=1000000 is larger than the model's vocabulary"):
        Trainer(model, tok, SDFT(cfg), demo)


def test_checkpoint_every_needs_a_directory():
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        TrainConfig(checkpoint_every=1)


def test_resume_from_an_incomplete_checkpoint(tiny, demo, tmp_path):
    trainer = make_trainer(tiny, demo, tmp_path)
    (tmp_path / "broken").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        trainer.resume(tmp_path / "broken")


@pytest.mark.slow
@pytest.mark.parametrize("name, says", [
    ("no-such-org/no-such-model-xyz", "OSError: Could not load 'no-such-org/no-such-model-xyz'"),
    ("qwen2.5-1.5b", "hf download Qwen/Qwen2.5-1.5B-Instruct"),  # a preset: how to fetch it
])
def test_unreachable_model_says_offline_and_suggests_bundled(tmp_path, name, says):
    code = f"from sdft_lab import load; load({name!r})"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert says in out.stderr and "load('bundled')" in out.stderr


# ---------------------------------------------------------------------------- safe loading


def test_no_pickle_loading_anywhere_in_the_package():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "interop" / "trl.py" in sources and PACKAGE / "eval" / "lm_eval.py" in sources
    for source in sources:
        text = source.read_text()
        assert "import pickle" not in text, source
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{source.name}: {line.strip()}"
            assert "trust_remote_code=True" not in line, f"{source.name}: {line.strip()}"


def test_trust_remote_code_is_off_by_default(monkeypatch):
    import transformers

    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise RuntimeError("recorded")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record)
    with pytest.raises(RuntimeError, match="recorded"):
        load("some/local-or-hub-model")
    assert seen == [False]


def test_adapters_and_checkpoints_are_safetensors_and_json_only(tiny, demo, tmp_path):
    trainer = make_trainer(tiny, demo, tmp_path)
    trainer.step()
    trainer.save_adapter(tmp_path / "adapter")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json", ".md") for p in files), files


def test_a_checkpoint_keeps_the_rng_of_the_models_device_only(tiny, demo, tmp_path, monkeypatch):
    """A CPU model's checkpoint holds no GPU RNG state even where GPUs are visible, so a resume on a machine
    with other or fewer GPUs cannot fail on it. Break it fails on (made once): saving every visible GPU's
    state (torch.cuda.get_rng_state_all), as before."""
    from safetensors.torch import load_file

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(8, dtype=torch.uint8)] * 2)
    trainer = make_trainer(tiny, demo, tmp_path)
    trainer.step()
    path = checkpoint.latest(tmp_path / "ckpt")
    assert not [k for k in load_file(path / checkpoint.FILES[1]) if k.startswith("rng.cuda")]
    assert trainer.resume() == 1
