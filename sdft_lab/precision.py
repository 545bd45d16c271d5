"""The precision policy: the float type the frozen base computes in, chosen per machine.

The base's weights are what every phase streams: the rollout's decode, the teacher's scoring, the student's
forward and backward, the evaluations. In bf16 they are half the bytes of fp32, and a CPU with native bf16
dot products (AVX512-BF16, AMX) multiplies them faster; a CPU without them (AVX2 only) emulates bf16 and
multiplies it several times slower. So on the CPU "auto" is measured, the way the sampler's engine and
matmul layouts are: on a CPU that has the instructions, a sweep over every weight of the model at a decode's
rows and at a forward pass's rows, in both types, and bf16 only where it takes under MARGIN of fp32's time at
both. The choice is kept per machine and model shape in the cache folder's precision.json, so every later
run on the machine computes alike and repeats bit for bit. Elsewhere the CPU computes fp32, as it always did.
On a GPU "auto" is bf16 where it is native (Ampere and later) and fp16 where it is not (T4, V100).

What stays fp32 under any policy: the LoRA matrices (peft keeps adapters in fp32 over a half-precision base),
their AdamW moments, and every log-softmax and loss reduction (losses.py upcasts the logits first).
SDFT_LAB_PRECISION=fp32 or =bf16 pins the base's type; the run report and every checkpoint name it, and a
resume under another one is refused (checkpoint.load). A 4-bit base on the CPU computes in fp32 whatever the
policy (models.portable_cpu_4bit).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch
from torch import nn

from .bundled import machine_key, read_cache, write_cache

ENV = "SDFT_LAB_PRECISION"
CHOICES = ("auto", "fp32", "bf16")
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
MARGIN = 0.9  # bf16 must take under 90 % of fp32's time at every measured size: a near-tie keeps fp32
ROWS = (16, 256)  # a decode step's rows (16 rollouts) and a forward pass's (a few sequences of prompt + answer)
REPEATS = 3  # each sweep's best of 3
FILE = "precision.json"  # in the cache folder
clock = time.perf_counter  # the sweeps' timer
CHOSEN: dict[str, str] = {}  # this process's choices, by model shape


def pinned() -> str:
    """SDFT_LAB_PRECISION, or "auto" when unset."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r} is not a precision: use one of {', '.join(CHOICES)} (auto: measured "
                         "per machine).")
    return value


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16); False where unknown."""
    try:
        info = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
        flags = set(re.search(r"^flags\s*:\s*(.+)$", info, re.M).group(1).split())
    except (OSError, AttributeError):
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def load_dtype(device: str, quantized: bool) -> torch.dtype:
    """The type the base is loaded in. On the CPU under "auto" that is fp32, and resolve() may then cast it."""
    pin = pinned()
    if device.startswith("cuda"):
        if pin != "auto":
            return torch.float32 if pin == "fp32" else torch.bfloat16
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if quantized and pin == "bf16":
        raise ValueError(f"{ENV}=bf16 applies to float bases on the CPU: a 4-bit base there computes in fp32 "
                         "(models.portable_cpu_4bit). Load with quantization='none', or unset it.")
    return torch.bfloat16 if pin == "bf16" else torch.float32


def resolve(model) -> None:
    """Under "auto" on the CPU: cast the loaded fp32 base to bf16 where the sweep measured it faster on this
    machine (a CPU without native bf16 is never measured, and keeps fp32)."""
    if pinned() != "auto" or not native_bf16():
        return
    weight = model.get_input_embeddings().weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return
    if faster(model) == "bf16":
        model.to(torch.bfloat16)


def faster(model) -> str:
    """ "bf16" or "fp32" for this model's shape on this machine: measured once, then read from the cache."""
    cfg = model.config
    key = f"{cfg.model_type} {cfg.hidden_size}x{cfg.num_hidden_layers} vocab {cfg.vocab_size}"
    if key in CHOSEN:
        return CHOSEN[key]
    saved = read_cache(FILE)
    here = saved.setdefault(machine_key(), {})
    if key not in here:
        times = sweep([m.weight for m in model.modules() if isinstance(m, nn.Linear)])
        here[key] = {"choice": "bf16" if all(times["bf16"][r] < MARGIN * times["fp32"][r] for r in ROWS) else "fp32",
                     "seconds": times}
        write_cache(FILE, saved)
    CHOSEN[key] = here[key]["choice"]
    return CHOSEN[key]


@torch.no_grad()
def sweep(weights: list[torch.Tensor]) -> dict[str, dict[int, float]]:
    """{type: {rows: seconds}}: the best of REPEATS products of a constant input with every weight, as a forward
    pass reads them all from memory. Constant inputs: the random stream is untouched."""
    out: dict[str, dict[int, float]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        ws = [w.to(dtype) for w in weights]
        out[NAMES[dtype]] = {}
        for rows in ROWS:
            x = {n: torch.ones(rows, n, dtype=dtype) for n in {w.shape[1] for w in ws}}
            best = float("inf")
            for _ in range(REPEATS):
                t = clock()
                for w in ws:
                    x[w.shape[1]] @ w.T
                best = min(best, clock() - t)
            out[NAMES[dtype]][rows] = best
    return out


def name(model) -> str:
    """The base's compute type ("fp32", "bf16", "fp16"): what the run report and checkpoints record."""
    dtype = model.get_input_embeddings().weight.dtype
    return NAMES.get(dtype, str(dtype).removeprefix("torch."))


def describe(model) -> str:
    """The base's type and how it was chosen, for the run report: e.g. "bf16 (auto: measured faster here)"."""
    pin, kind = pinned(), name(model)
    if pin != "auto":
        return f"{kind} (pinned by {ENV})"
    if model.get_input_embeddings().weight.device.type != "cpu":
        return f"{kind} (auto: the GPU's)"
    if not native_bf16():
        return f"{kind} (auto: this CPU has no native bf16)"
    return f"{kind} (auto: measured {'faster' if kind == 'bf16' else 'not faster'} in bf16 on this machine)"
