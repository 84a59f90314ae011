"""`--time-limit`: fit a run into a wall-clock budget by planning its epochs from measured throughput.

Feature extraction must finish whatever the budget, so the plan is made after it, when what is left is
known: the fine-tune epochs are what remains after the augmented views and the final evaluation,
divided by the cost of one epoch, each measured on this machine for this model. While training, a stage
also stops before an epoch it would not finish in time (the best checkpoint so far is kept), which
absorbs any error in the estimate.

Everything here takes its clock and its throughput as inputs (`TimeLimit`): the command line gives the
process's real clock and lets the rates be measured; tests give a fake clock and fixed rates, so that
what a run plans never depends on how busy the machine is.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_json_atomic
from ..errors import ParameterError
from .loop import Hook, set_train_mode
from .optim import set_schedule_length

_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}
FIXED_SECONDS = 8.0  # calibration, metrics, report and writing the run: 6-8 s measured (Fashion-MNIST)
MARGIN = 0.95  # plan to finish a little early rather than late
MAX_EPOCHS = 200


def process_age() -> float:
    """Seconds since this process started (its imports count against a time limit too); 0 if unknown."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def parse_duration(text: str) -> float:
    """'600', '90s', '10m', '1.5h' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ParameterError("time_limit", f"must be a positive duration such as 600, 90s, 10m or 1.5h; "
                                           f"received {text!r}.")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


@dataclass(frozen=True)
class Rates:
    """Throughput on this machine, images per second: through the frozen network (computing trunk views,
    evaluating) and through a training step of the part that fine-tuning trains."""

    forward: float
    step: float


class TickingClock:
    """A fake clock for tests: every reading is `tick` seconds after the last one, whatever the machine."""

    def __init__(self, tick: float = 0.01, start: float = 0.0):
        self.tick, self.now = tick, start

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@dataclass(frozen=True)
class TimeLimit:
    """A wall-clock budget: `seconds` as the user gave them, counted from `started` (a reading of `clock`;
    None: when the run starts). `rates`, when given, replace measuring the machine's throughput."""

    seconds: float
    clock: Callable[[], float] = time.perf_counter
    started: float | None = None
    rates: Rates | None = None

    def __post_init__(self):
        if not (isinstance(self.seconds, (int, float)) and 0 < self.seconds < float("inf")):
            raise ParameterError("time_limit", f"must be a positive number of seconds; received {self.seconds!r}.")

    @classmethod
    def of(cls, value: "float | str | TimeLimit | None") -> "TimeLimit | None":
        """A TimeLimit from seconds, a duration such as '10m', or a TimeLimit; None stays None."""
        if value is None or isinstance(value, TimeLimit):
            return value
        if isinstance(value, str):
            return cls(parse_duration(value))
        return cls(float(value))

    def deadline(self, now: float) -> float:
        return (self.started if self.started is not None else now) + self.seconds


@dataclass(frozen=True)
class Plan:
    epochs: int
    epoch_seconds: float
    views_seconds: float
    evaluate_seconds: float
    left_seconds: float

    def describe(self) -> str:
        return (f"Time limit: {self.left_seconds:.0f} s left after extraction; views ~{self.views_seconds:.0f} s, "
                f"evaluation ~{self.evaluate_seconds:.0f} s, {self.epochs} fine-tune epoch(s) of "
                f"~{self.epoch_seconds:.1f} s.")


def plan_epochs(left: float, *, n_train: int, n_val: int, n_eval: int, views_to_compute: int,
                forward_rate: float, step_rate: float) -> Plan:
    """Epochs that fit in `left` seconds: `forward_rate` images/s through the frozen network (views and
    evaluation), `step_rate` images/s through a training step."""
    views = views_to_compute / forward_rate
    evaluate = n_eval / forward_rate + FIXED_SECONDS
    epoch = n_train / step_rate + n_val / (3 * step_rate)  # validation: a forward pass, ~1/3 of a step
    epochs = epochs_that_fit(left * MARGIN - views - evaluate, epoch)
    return Plan(epochs, epoch, views, evaluate, left)


def epochs_that_fit(seconds: float, epoch_seconds: float) -> int:
    return max(0, min(MAX_EPOCHS, math.floor(seconds / max(epoch_seconds, 1e-6))))


def step_rate(module: nn.Module, example: torch.Tensor, *, bn_train: bool = False, steps: int = 3) -> float:
    """Images/s of training steps (forward, backward, AdamW) of a copy of `module`, in the train mode the
    stage uses, on `example`-shaped input; the module itself is untouched."""
    probe = copy.deepcopy(module)
    set_train_mode(probe, bn_train=bn_train)
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    y = torch.zeros(len(example), dtype=torch.long, device=example.device)  # class 0: any head has one

    def step():
        loss = F.cross_entropy(probe(example), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # first-call costs out of the timing
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(example) / (time.perf_counter() - started)


@torch.inference_mode()
def forward_rate(module: nn.Module, example: torch.Tensor, *, rounds: int = 2) -> float:
    module(example)
    started = time.perf_counter()
    for _ in range(rounds):
        module(example)
    return rounds * len(example) / (time.perf_counter() - started)


class Replan(Hook):
    """After the first epoch, the epochs that fit by its measured duration: the schedule is stretched or
    shortened to match, and the plan in `plan_file` updated for --resume."""

    def __init__(self, plan_file: Path, stop_at: float, n_batches: int, scheduler, reporter, clock):
        self.plan_file, self.stop_at, self.n_batches = plan_file, stop_at, n_batches
        self.scheduler, self.reporter, self.clock = scheduler, reporter, clock

    def after_epoch(self, state) -> int | None:
        if state.epoch != 1:
            return None
        seconds = state.history[-1]["seconds"]
        epochs = 1 + epochs_that_fit(self.stop_at - self.clock(), seconds)
        set_schedule_length(self.scheduler, epochs * self.n_batches)
        write_json_atomic(self.plan_file, {**json.loads(self.plan_file.read_text()), "epochs": epochs,
                                           "epoch_seconds": seconds})
        self.reporter.say(f"Time limit: the first epoch took {seconds:.1f} s; {epochs} epoch(s) in all.")
        return epochs
