"""The optional behaviour a stage runs with (train.loop.Hook): the time limit's stop, a function after
every epoch, checkpoints inside an epoch."""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..progress import Reporter
from .loop import Hook, Stage, StageState


class StopAt(Hook):
    """--time-limit: end the stage before an epoch that would not finish by `stop_at` (a reading of the
    stage's clock), judging by the last epoch's duration."""

    def __init__(self, stop_at: float, reporter: Reporter):
        self.stop_at, self.reporter = stop_at, reporter

    def before_epoch(self, stage: Stage, state: StageState, last_seconds: float) -> bool:
        if stage.clock() + last_seconds <= self.stop_at:
            return True
        self.reporter.say(f"{stage.name}: stopping after epoch {state.epoch} of {stage.epochs}: another would "
                          "pass the time limit.")
        return False


class EveryEpoch(Hook):
    """`fn(state)` after every epoch."""

    def __init__(self, fn: Callable[[StageState], None]):
        self.fn = fn

    def after_epoch(self, state: StageState) -> None:
        self.fn(state)


class BatchCheckpoints(Hook):
    """`save(state)` after a batch once `every` seconds have passed since the last save, with
    `state.batch` and `state.rng` saying where the epoch stands."""

    def __init__(self, save: Callable[[StageState], None], every: float):
        self.save, self.every = save, every
        self.last = time.perf_counter()

    def before_epoch(self, stage: Stage, state: StageState, last_seconds: float) -> bool:
        self.last = time.perf_counter()
        return True

    def after_batch(self, state: StageState, done: int, loss_sum: float, seen: int) -> None:
        if time.perf_counter() - self.last >= self.every:
            state.batch, state.loss_total, state.seen = done, loss_sum, seen
            state.rng = torch.get_rng_state()
            self.save(state)
            self.last = time.perf_counter()
