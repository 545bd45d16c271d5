"""Run-to-run reproducible CPU maths: one MKL code branch, chosen before the first matmul.

PyTorch's x86 CPU builds do their BLAS and some vector maths in Intel's MKL. On Intel CPUs, MKL
picks among code paths at run time, and two runs of the same program can round differently
(MKL's "conditional numerical reproducibility" notes; seen on AVX-512 machines). Adam turns a
one-ulp change in a near-zero gradient into a full-lr step, and a sampled token flips a step
later, so a seeded run would not repeat. Pinning MKL to its AVX2 branch removes that freedom.
MKL offers the branch only on Intel CPUs; elsewhere (AMD) it keeps its generic paths, which
repeat run to run. The pin must come before MKL's first call, so `import sdft_lab` does it.
A user who sets MKL_CBWR (for example MKL_CBWR=AUTO for MKL's fastest branch) keeps their choice.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

_AVX2 = 10  # MKL_CBWR_AVX2 in mkl_service.h
_RESULTS = {0: "AVX2 branch", -3: "default (this CPU is not offered the AVX2 branch)",
            -8: "default (MKL ran before sdft_lab was imported)"}


def pin_mkl_branch() -> str:
    """Pin MKL to its AVX2 branch where it can be; returns what MKL runs, for the bench's machine line."""
    if "MKL_CBWR" in os.environ:
        return f"MKL_CBWR={os.environ['MKL_CBWR']} (from the environment)"
    if not torch.backends.mkl.is_available():
        return "no MKL"
    try:
        set_branch = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).mkl_serv_cbwr_set
    except (OSError, AttributeError):  # another build of torch: MKL's service calls are not exported
        return "default (MKL's branch control is not reachable in this torch build)"
    code = set_branch(_AVX2)
    return _RESULTS.get(code, f"default (MKL answered {code})")


MKL_BRANCH = pin_mkl_branch()
