"""The precision policy: the float type the frozen base computes in, chosen per machine.

The base's weights are what every phase streams: the rollout's decode, the teacher's scoring, the student's
forward and backward, the evaluations. In bf16 they are half the bytes of fp32, and a CPU with native bf16
dot products (AVX512-BF16, AMX) multiplies them faster; a CPU without them (AVX2 only) emulates bf16 and
multiplies it several times slower. So on the CPU "auto" is measured, the way the sampler's engine and
matmul layouts are: on a CPU that has the instructions, a sweep over every weight of the model at a decode's
rows and at a forward pass's rows, in both types, and bf16 only where it takes under MARGIN of fp32's time at
both. The choice is kept per machine and model shape in the cache folder's precision.json, so every later
run on the machine (with its cache folder and thread count) computes alike and repeats bit for bit. Elsewhere
the CPU computes fp32, as it always did. The first load on a CPU with native bf16 loads fp32 and casts it:
that load holds the fp32 weights and a bf16 copy for the sweep at once. Under bf16 the lean sampler decodes
through the adapter's own path (merged weights are an fp32 speed-up), which the sweep does not time.
On a GPU "auto" is bf16 where it is native (Ampere and later) and fp16 where it is not (T4, V100).

What stays fp32 under any policy: the LoRA matrices (peft keeps adapters in fp32 over a half-precision base),
their AdamW moments, and every log-softmax and loss reduction (losses.py upcasts the logits first).
SDFT_LAB_PRECISION=fp32 or =bf16 pins the base's type; the run report and every checkpoint name it, and a
resume under another one is refused (checkpoint.load). A 4-bit base on the CPU computes in fp32 whatever the
policy (models.portable_cpu_4bit).
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn

from .bundled import cpu_info, machine_key, read_cache, write_cache

ENV = "SDFT_LAB_PRECISION"
CHOICES = ("auto", "fp32", "bf16")
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
MARGIN = 0.9  # bf16 must take under 90 % of fp32's time at every measured size: a near-tie keeps fp32
ROWS = (16, 256)  # a decode step's rows (16 rollouts) and a forward pass's (a few sequences of prompt + answer)
REPEATS = 3  # each sweep's best of 3
FILE = "precision.json"  # in the cache folder
clock = time.perf_counter  # the sweeps' timer
CHOSEN: dict[tuple[str, str], str] = {}  # this process's choices, by machine (threads included) and model shape


def pinned() -> str:
    """SDFT_LAB_PRECISION, or "auto" when unset."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r} is not a precision: use one of {', '.join(CHOICES)} (auto: measured "
                         "per machine).")
    return value


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16); False where unknown."""
    return bool(cpu_info(cpuinfo)[1] & {"avx512_bf16", "amx_bf16"})


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


def resolve(model, quantized: bool = False) -> None:
    """After loading: under "auto" on the CPU, cast the fp32 base to bf16 where the sweep measured it faster on
    this machine (a CPU without native bf16 is never measured, and keeps fp32). Records why the base computes
    in its type, for describe()."""
    weight = model.get_input_embeddings().weight
    if pinned() != "auto":
        why = f"pinned by {ENV}"
    elif weight.device.type != "cpu":
        why = "auto: the GPU's"
    elif quantized:
        why = "a 4-bit base on the CPU computes in fp32"
    elif not native_bf16():
        why = "auto: this CPU has no native bf16"
    else:
        bf16 = faster(model) == "bf16"
        if bf16 and weight.dtype == torch.float32:
            cast(model)
        why = f"auto: measured {'faster' if bf16 else 'not faster'} in bf16 on this machine"
    model.get_input_embeddings().sdft_lab_precision = why  # on a module a peft wrapper shares with the base


def cast(model) -> None:
    """The parameters in bf16, as from_pretrained(dtype=bf16) loads them; buffers (the rotary frequencies,
    which transformers computes in fp32 whatever the dtype) as they are."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)


def faster(model) -> str:
    """ "bf16" or "fp32" for this model's shape on this machine: measured once, then read from the cache."""
    cfg = model.config
    key = (f"{cfg.model_type} {getattr(cfg, 'hidden_size', '?')}x{getattr(cfg, 'num_hidden_layers', '?')} "
           f"vocab {getattr(cfg, 'vocab_size', '?')}")
    machine = machine_key()
    if (machine, key) in CHOSEN:
        return CHOSEN[machine, key]
    saved = read_cache(FILE)
    here = saved.setdefault(machine, {})
    if key not in here:
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        if not weights:  # nothing to time (another layer type): keep fp32
            return "fp32"
        print(f"sdft_lab: timing bf16 against fp32 on this CPU for {key}, once (the cache's {FILE})",
              file=sys.stderr)
        times = sweep(weights)
        faster_at_all = all(times["bf16"][r] < MARGIN * times["fp32"][r] for r in times["fp32"])
        here[key] = {"choice": "bf16" if faster_at_all else "fp32", "seconds": times}
        write_cache(FILE, saved)
    CHOSEN[machine, key] = here[key]["choice"]
    return CHOSEN[machine, key]


@torch.no_grad()
def sweep(weights: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """{type: {rows: seconds}} (rows as strings, as JSON keeps them): the best of REPEATS products of a
    constant input with every weight, as a forward pass reads them all from memory. Constant inputs: the
    random stream is untouched."""
    out: dict[str, dict[str, float]] = {}
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
            out[NAMES[dtype]][str(rows)] = best
    return out


def name(model) -> str:
    """The base's compute type ("fp32", "bf16", "fp16"): what the run report and checkpoints record."""
    dtype = model.get_input_embeddings().weight.dtype
    return NAMES.get(dtype, str(dtype).removeprefix("torch."))


def describe(model) -> str:
    """The base's type and why, for the run report: e.g. "bf16 (auto: measured faster in bf16 on this machine)"."""
    why = getattr(model.get_input_embeddings(), "sdft_lab_precision", "as given: not loaded by sdft_lab.load")
    return f"{name(model)} ({why})"


def resume_hint(saved: str) -> str:
    """What makes a model compute as a checkpoint's run did."""
    if saved in CHOICES:
        return f"set {ENV}={saved} (see sdft_lab/precision.py)"
    return f"resume where the base computes in {saved} as that run's did (fp16: a GPU without native bf16)"
