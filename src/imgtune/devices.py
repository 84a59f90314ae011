"""Where the work runs: the device, the ranks under torchrun, precision, threads, numerics and random
state; the only place that branches on them. What changes the process (seeding, flush-denormal, the
process group) is scoped here as context managers the entry points enter; library code passes
explicit torch.Generators."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ParameterError
from .rules import DEVICES


def resolve_device(name: str = "auto") -> torch.device:
    """auto (a CUDA GPU where one is visible, else the CPU), cpu, cuda, cuda:N or mps (Apple's GPU) ->
    the device; one that is not there is one clear ParameterError."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ParameterError("device", f"{{name}} {name} was asked for, but no CUDA GPU is visible; use cpu "
                                           "or auto.")
        index = int(name[5:]) if ":" in name else 0
        if index >= n:
            raise ParameterError("device", f"{{name}} {name} was asked for, but only {n} CUDA GPU(s) are visible "
                                           f"(cuda:0 to cuda:{n - 1}).")
        return torch.device("cuda", index)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ParameterError("device", "{name} mps was asked for, but this machine has no Apple GPU that "
                                           "PyTorch can use; use cpu or auto.")
        return torch.device("mps")
    raise ParameterError("device", f"must be {DEVICES}; received {name!r}.")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None):
    """Inside: Python's, NumPy's and torch's global generators seeded from `seed` (torchvision's v2
    transforms and dropout draw from torch's); after: every one as it was, so a caller's random state is
    not the library's business."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            random.seed(seed)
            np.random.seed(seed % (2**32))
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


@contextlib.contextmanager
def cpu_numerics():
    """Denormal floats flushed to zero inside: TF-ported weights produce them, and without flushing one
    optimiser step on CPU was measured several times slower. PyTorch cannot read the setting back, so it
    is turned off again on the way out, as a fresh process has it."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def loader_workers() -> int:
    """Decoding workers beside the main process: one per spare core, none on a single core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores < 2 else min(4, cores - 1)


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, Windows, musl): nothing to do
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system. When threads allocate and free batch-sized
    buffers (decoding in one thread, ONNX Runtime in others), glibc can keep them all: a 7,000-image
    extraction sometimes ended 1.2 GB larger than it needed to be. Called every 8 batches of a run over
    image files (3-4 ms a call, against 2 s of batches at 224 px)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class Precision:
    """How a training step runs on this device: on CUDA, mixed precision (bf16 where the GPU has it, else
    fp16 with a gradient scaler); elsewhere plain fp32. The training loop calls `autocast()` and `step()`
    and never asks which device it is on."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None = None):
        if dtype is None and device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.device_type = device.type
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, loss: torch.Tensor, optimizer, clip_grad: float | None = None) -> None:
        """Backward and an optimiser step; with `clip_grad`, the gradients' global norm is first capped."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip_grad is not None:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        self.scaler.step(optimizer)
        self.scaler.update()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch onto the device: asynchronous from pinned memory, images (and feature maps) channels-last."""
    if x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def prepare(model: torch.nn.Module, device: torch.device, *, compile: bool = False) -> torch.nn.Module:
    """The model on its device with channels-last weights, optionally compiled with torch.compile.
    Channels-last convolutions are faster on CUDA (tensor cores) and on CPU too: a fine-tune step of
    EfficientNet-Lite0 at 128 px took 257 ms instead of 384 ms on 2 cores (benchmarks/step_speed.py)."""
    model = model.to(device, memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


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

    @classmethod
    def current(cls) -> "Ranks":
        """This process's place in the process group it has joined (under torchrun, after
        init_process_group or inside ranks_and_device); one process otherwise."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return cls()

    def total(self, value: float) -> float:
        """The sum of `value` over the ranks."""
        return float(sum(self.gather(value))) if self.active else value


@contextlib.contextmanager
def ranks_and_device(device_name: str = "auto"):
    """-> (ranks, this rank's device) for one fit. Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the
    environment) this joins the process group, gloo on CPU and NCCL on CUDA with one GPU per local rank,
    and leaves it on the way out when it was the one that joined; in one process it does nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        yield Ranks(), device
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(rank, world, local), device
    finally:
        if joined:
            dist.destroy_process_group()


def data_parallel(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The model DistributedDataParallel trains with (its trainable parameters' gradients averaged over
    the ranks), or the model itself in one process."""
    if not ranks.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
