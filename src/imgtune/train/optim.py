"""Optimisers, learning-rate schedules and their state as flat tensors (for safetensors checkpoints)."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def make_optimizer(name: str, groups: list[dict], *, momentum: float, weight_decay: float):
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":  # Keras' RMSprop defaults: rho 0.9, epsilon 1e-7
        return torch.optim.RMSprop(groups, alpha=0.9, eps=1e-7, weight_decay=weight_decay)
    raise ConfigError(f"Unknown optimizer {name!r}: expected adamw, sgd or rmsprop.")


class WarmupCosine:
    """LR factor: linear warm-up over the first `warmup` share of steps, then cosine decay to 2% at `total`.
    An object rather than a closure, so that its length can change (--time-limit re-plans after the first
    epoch) and travels in the scheduler's state_dict."""

    def __init__(self, total_steps: int, warmup: float = 0.1):
        self.warmup = warmup
        self.set_total(total_steps)

    def set_total(self, total_steps: int) -> None:
        self.total = max(1, int(total_steps))
        self.warm = max(1, int(self.total * self.warmup))

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        t = min(step - self.warm, self.total - self.warm) / max(1, self.total - self.warm)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(kind: str, optimizer, total_steps: int, *, warmup: float = 0.1):
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup))
    raise ConfigError(f"Unknown schedule {kind!r}: expected cosine or constant.")


def set_schedule_length(scheduler, total_steps: int) -> None:
    for factor in scheduler.lr_lambdas:
        if isinstance(factor, WarmupCosine):
            factor.set_total(total_steps)


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as flat tensors (for safetensors) plus JSON-able settings."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_tensors(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
