"""Peak memory and time of one training step: the process's resident set on the CPU, the allocator's peaks
on CUDA, and a clock that waits for the GPU (clock()), so that each phase is charged its own kernels.

The trainer calls reset_peak() when a step starts and peak() when it ends, so every record says what that
step needed, not what the process once needed. On Linux the CPU peak (VmHWM) is reset through
/proc/self/clear_refs; where that is not possible it is the peak since the process started.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import torch

GiB = 2**30
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak(device: torch.device) -> None:
    """device: the model's; CUDA's peaks are per device (another process's GPU is not ours to read)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets the peak RSS to the current RSS (Linux ≥ 4.0)
    except OSError:
        pass


def peak(device: torch.device) -> dict[str, float]:
    """{"rss_peak_gib"}, plus {"cuda_alloc_peak_gib", "cuda_reserved_peak_gib"} for a model on CUDA."""
    out = {"rss_peak_gib": _rss_peak_bytes() / GiB}
    if device.type == "cuda":
        out["cuda_alloc_peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
        out["cuda_reserved_peak_gib"] = torch.cuda.max_memory_reserved(device) / GiB
    return out


def clock(device: torch.device) -> float:
    """time.perf_counter() once the device's queued work is done: CUDA runs asynchronously, and unsynchronised
    timings charge one phase's kernels to the next (the teacher's to the student's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def release(device: torch.device) -> None:
    """Give freed memory back after a failed step: collect cycles, then empty CUDA's cache (on CUDA)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def short(record: dict) -> str:
    """The figure for a progress bar: GPU memory where there is a GPU, else the process's RSS."""
    if "cuda_alloc_peak_gib" in record:
        return f"{record['cuda_alloc_peak_gib']:.1f}G gpu"
    return f"{record['rss_peak_gib']:.1f}G"


def _rss_peak_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource  # macOS and other Unixes; the peak since the process started

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
