"""What every step of one fit shares: the run folder, where the work runs, the seed, the cache, the
recipe and the time limit (FitContext). What network it trains is config.ModelSpec."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Recipe
from ..devices import Ranks
from ..progress import Reporter
from ..runs.folder import RunFolder
from .budget import TimeLimit


@dataclass
class FitContext:
    run: RunFolder
    reporter: Reporter
    device: torch.device
    ranks: Ranks
    seed: int
    cache_root: Path
    recipe: Recipe
    limit: TimeLimit | None = None
    started: float = 0.0  # a reading of `clock` when the fit began
    started_wall: float = field(default_factory=time.perf_counter)
    checkpoint_every: float | None = 60.0  # seconds between checkpoints inside a fine-tune epoch
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per step, for config.json
    choices: dict[str, dict] = field(default_factory=dict)  # what the run chose from the data and why
    images: int | None = None  # in the data, once scanned: whether the frozen network's ONNX copy pays

    @property
    def clock(self):
        """What the time limit is counted on (a fake clock in tests)."""
        return self.limit.clock if self.limit else time.perf_counter

    @property
    def deadline(self) -> float | None:
        return None if self.limit is None else self.limit.deadline(self.started)

    def say(self, line: str) -> None:
        self.reporter.say(line)
