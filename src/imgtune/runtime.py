"""Device, seeding, threads and numerics: the only place that branches on them."""

from __future__ import annotations

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


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g
