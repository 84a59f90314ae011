"""Many processes under `torchrun` (PyTorch's own launcher and DistributedDataParallel); with one process
every helper here does nothing. Ranks come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK):
gloo on CPU, NCCL on CUDA, one GPU per local rank."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .engine import resolve_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder, prints and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def total(self, value: float) -> float:
        """The sum of `value` over the ranks."""
        return float(sum(self.gather(value))) if self.active else value


def start(device_name: str = "auto") -> tuple[Ranks, torch.device]:
    """Join the process group torchrun set up (once per process) -> (ranks, this rank's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return Ranks(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank, world, local), device


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The model DistributedDataParallel trains with (its trainable parameters' gradients averaged over
    the ranks), or the model itself in one process."""
    if not ranks.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
