"""Atomic training checkpoints: everything needed to resume a run exactly.

A checkpoint is a folder `step-NNNNNN/` holding
  adapters.safetensors   every LoRA tensor (the student and, if used, the EMA teacher)
  state.safetensors      the optimizer's tensors (AdamW moments) and the RNG states
  state.json             step, the base's precision, optimizer param groups, scheduler, Python RNG, metric
                         history
Only safetensors and JSON: nothing is unpickled on resume. The folder is written
under a temporary name and renamed into place, so a run killed at any moment
leaves either the whole checkpoint or none of it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import precision

FILES = ("adapters.safetensors", "state.safetensors", "state.json")


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if "lora_" in n}


def save(directory: str | Path, step: int, model, optimizer, scheduler, history: list[dict], keep: int = 2) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    try:
        save_file(adapter_tensors(model), tmp / FILES[0])
        opt = optimizer.state_dict()
        tensors = {f"opt.{i}.{k}": v.contiguous() for i, s in opt["state"].items() for k, v in s.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        device = model_device(model)
        if device.type == "cuda":  # the model's GPU only: a resume may see other GPUs, or fewer
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        save_file(tensors, tmp / FILES[1])
        version, ints, gauss = random.getstate()
        state = {"step": step, "precision": precision.name(model), "param_groups": opt["param_groups"],
                 "scheduler": scheduler.state_dict(),
                 "python_rng": [version, list(ints), gauss], "history": history}
        (tmp / FILES[2]).write_text(json.dumps(state))
        if final.exists():  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in directory.glob(".tmp-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    for old in sorted(directory.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in `directory`, or None."""
    done = [p for p in sorted(Path(directory).glob("step-*")) if all((p / f).is_file() for f in FILES)]
    return done[-1] if done else None


def load(path: str | Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Restore adapters, optimizer, scheduler and RNG states in place; return (step, history)."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete checkpoint: {missing} missing.")
    state = json.loads((path / FILES[2]).read_text())
    # A run repeats only under one precision: a resume that computes otherwise would continue another run.
    # Checkpoints from before the policy name none: on the CPU their base computed in fp32.
    now = precision.name(model)
    saved = state.get("precision", "fp32" if model_device(model).type == "cpu" else now)
    if saved != now:
        raise ValueError(f"{path} was written by a run whose base computed in {saved}; this model computes in "
                         f"{now}. Resume under the same precision: {precision.resume_hint(saved)}.")
    adapters = load_file(path / FILES[0])
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    if set(adapters) != set(params):
        raise ValueError(f"{path}: its adapters do not match this model ({len(set(adapters) ^ set(params))} tensor "
                         "names differ). Resume with the same model, LoRA settings and teacher kind.")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(adapters[name])
    tensors = load_file(path / FILES[1])
    opt_state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, index, key = name.split(".", 2)
            opt_state.setdefault(int(index), {})[key] = t
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    device = model_device(model)
    # rng.cuda.N: checkpoints written before only the model's device was kept, one state per visible GPU
    cuda = tensors.get("rng.cuda", tensors.get(f"rng.cuda.{device.index or 0}"))
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    version, ints, gauss = state["python_rng"]
    random.setstate((version, tuple(ints), gauss))
    return state["step"], state["history"]
