"""Device, seeding, threads and numerics: the only place that branches on them."""

from __future__ import annotations

import ctypes
import functools
import os
import random

import numpy as np
import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu or auto.")
        return torch.device("cuda")
    raise ConfigError(f"--device must be auto, cpu or cuda; received {name!r}.")


def setup(seed: int) -> None:
    """Seed every generator and set CPU numerics once per process."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    # TF-ported weights produce denormal floats; without flushing them one optimiser step on CPU was
    # measured several times slower.
    torch.set_flush_denormal(True)


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
