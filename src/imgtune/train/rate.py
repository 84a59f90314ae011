"""The fine-tuning learning rate, found per data set before the stage: each candidate rate trains a
short probe from the head (the same first batches for every candidate, the rate rising over the first
half of the probe as the stage's warm-up does) and is scored by the loss on validation afterwards. The
highest rate is not always the best: on images far from ImageNet (solar-cell electroluminescence, clip
art) 1e-3 pushed the blocks off their solution within the first epoch, validation falling while the
training loss fell, where 1e-4 was stable; on Fashion-MNIST and the digits 1e-3 was the better rate.
The probe measures that shock directly, on validation, rather than on the training loss a range test
(fastai's lr_find) reads, which fell in both cases.

The divergence guard (finetune.py) stays behind it as a safety net."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..devices import Precision, to_device
from .loop import Objective, set_train_mode, validate

# A probe's length in batches: a third of an epoch, at least PROBE_MIN and at most PROBE_MAX batches.
PROBE_MIN, PROBE_MAX = 12, 40
# A higher rate must lower the validation loss by more than this share of the lower rate's to be chosen:
# between near-equal probes the lower rate is the safer one for a whole schedule.
MARGIN = 0.01


@dataclass(frozen=True)
class RateChoice:
    rate: float
    table: list[dict]  # per candidate: its rate and validation loss, accuracy after the probe
    start_val_loss: float
    steps: int

    def to_dict(self) -> dict:
        return {"rate": self.rate, "candidates": self.table, "start_val_loss": self.start_val_loss,
                "probe_batches": self.steps}

    @classmethod
    def from_dict(cls, d: dict) -> "RateChoice":
        return cls(d["rate"], d["candidates"], d["start_val_loss"], d["probe_batches"])

    def describe(self) -> str:
        tried = ", ".join(f"{r['rate']:g}: {r['val_loss']:.4f}" for r in self.table)
        return (f"Fine-tune rate: {self.rate:g}, the lowest validation loss after a {self.steps}-batch probe from "
                f"the head (the head: {self.start_val_loss:.4f}; {tried}).")


def probe_batches(n_batches: int) -> int:
    return max(PROBE_MIN, min(PROBE_MAX, n_batches // 3))


@dataclass
class Probe:
    """What every probe trains: `model` (the images go through it; its trainable weights are those of
    `weights_of`, whose state dict `start` each probe starts from) with the optimizer
    `make_optimizer(rate)` builds, by `objective`'s loss, BatchNorm as `bn_train` says, on `device`."""

    model: torch.nn.Module
    weights_of: torch.nn.Module
    start: dict
    make_optimizer: Callable[[float], torch.optim.Optimizer]
    objective: Objective
    bn_train: bool
    device: torch.device

    def val_loss(self, val_batches: Callable) -> dict:
        """{"val_loss"} (and "val_accuracy", single-label) of the model as it stands."""
        if self.objective.multi_loss is not None:
            return {"val_loss": _multi_val_loss(self.model, val_batches(), self.device)}
        scores = validate(self.model, val_batches(), self.device, self.objective.decider(), None)
        return {"val_loss": scores["val_loss"], "val_accuracy": scores["val_accuracy"]}


def choose_rate(probe: Probe, train_batches, val_batches: Callable, candidates: tuple[float, ...],
                n_batches: int) -> RateChoice:
    """Score each candidate rate by a short probe from the start and choose one; the probe's
    `weights_of` is left holding its start again. `train_batches` yields the batches every probe trains
    on (the stage's first ones), `n_batches` is the stage's number of batches per epoch."""
    steps = probe_batches(n_batches)
    first = []
    for x, y in train_batches:
        first.append((x, y))
        if len(first) >= steps:
            break
    start_val = probe.val_loss(val_batches)["val_loss"]
    table = []
    for rate in sorted(candidates):
        probe.weights_of.load_state_dict(probe.start)
        _probe(probe, first, probe.make_optimizer(rate))
        table.append({"rate": rate, **probe.val_loss(val_batches)})
    probe.weights_of.load_state_dict(probe.start)
    best = table[0]
    for row in table[1:]:  # ascending rates: a higher one must be clearly better
        if row["val_loss"] < best["val_loss"] * (1 - MARGIN):
            best = row
    return RateChoice(best["rate"], table, start_val, len(first))


def _probe(probe: Probe, batches, optimizer) -> None:
    """The probe's training: the rate rising linearly over the first half of the batches, then held."""
    model, device = probe.model, probe.device
    precision, criterion = Precision(device), probe.objective.criterion(device)
    base = [g["lr"] for g in optimizer.param_groups]
    warm = max(1, len(batches) // 2)
    set_train_mode(model, bn_train=probe.bn_train)
    for i, (x, y) in enumerate(batches):
        for g, lr in zip(optimizer.param_groups, base):
            g["lr"] = lr * min(1.0, (i + 1) / warm)
        x, y = to_device(x, device), to_device(y, device)
        with precision.autocast():
            loss = criterion(model(x).float(), y)
        precision.step(loss, optimizer)
    model.eval()


@torch.inference_mode()
def _multi_val_loss(model, batches, device) -> float:
    model.eval()
    total, n = 0.0, 0
    for x, y in batches:
        z = model(to_device(x, device)).float()
        total += F.binary_cross_entropy_with_logits(z, to_device(y, device).float(), reduction="sum").item()
        n += y.numel()
    return total / max(n, 1)
