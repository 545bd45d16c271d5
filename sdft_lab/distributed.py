"""Data-parallel training over several processes, e.g. `accelerate launch --num_processes 2 train.py`.

Each process takes its own share of every batch and samples its own rollouts; after the backward
pass the adapter gradients are averaged over the processes, so every process takes the same optimizer
step and the adapters stay identical. The model is not wrapped in DistributedDataParallel: SDFT turns
adapters on and off and runs its own forward passes (rollout, teacher, student), which a DDP wrapper
would hide, and a LoRA adapter's gradients are small enough to average in one flat all-reduce.

A single process (no WORLD_SIZE > 1 in the environment) never imports accelerate or torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import precision


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where collectives run: NCCL reduces only CUDA tensors

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its mean over the processes."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def average_gradients_(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients over the processes; a missing gradient counts as zero."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.average_([p.grad for p in params])

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor, in place, by the main process's copy."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.broadcast(flat, src=0)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def average_metrics(self, record: dict) -> dict:
        """The numeric metrics averaged over the processes; other values stay this process's own."""
        keys = [k for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if self.world == 1 or not keys:
            return record
        values = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64, device=self.device)
        self.average_(values.split(1))
        return {**record, **dict(zip(keys, values.tolist()))}

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def setup(model) -> Group:
    """The process group this process belongs to: a one-process Group unless launched with several."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():  # set up by the caller (torchrun + init_process_group)
        group = Group(dist.get_rank(), dist.get_world_size())
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        try:
            from accelerate import PartialState
        except ImportError as err:
            raise ImportError(f"WORLD_SIZE={os.environ['WORLD_SIZE']}: training on several processes needs accelerate "
                              "(`pip install accelerate`), or call torch.distributed.init_process_group yourself "
                              "before creating the Trainer.") from err
        state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPUs, nccl on GPUs
        group = Group(state.process_index, state.num_processes)
    else:
        return Group()
    device = next(model.parameters()).device
    local = int(os.environ.get("LOCAL_RANK", group.rank))
    if device.type == "cuda" and device.index != local:
        raise ValueError(f"Process {group.rank} (LOCAL_RANK {local}) holds its model on {device}: every process needs "
                         f"its own GPU. Load it with load(..., device='cuda:{local}') (load's default does this).")
    # One precision on every process: the precision policy is measured per machine, and gradients of a bf16
    # base averaged with an fp32 one's would train neither run.
    kinds = list(precision.NAMES.values())
    mine = precision.name(model)
    code = torch.tensor([float(kinds.index(mine) if mine in kinds else len(kinds))], device=device)
    lo, hi = code.clone(), code.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if lo.item() != hi.item():
        raise ValueError(f"Process {group.rank}'s base computes in {mine}, another process's in "
                         f"another type: every process must compute alike. Set {precision.ENV}=fp32 (or =bf16) "
                         "for all of them.")
    return Group(group.rank, group.world, device)
