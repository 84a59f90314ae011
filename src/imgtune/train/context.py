"""What every step of one fit shares: the run folder, where the work runs, the seed, the cache, the
recipe and the time limit (FitContext); and what network it trains (ModelSpec)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Recipe
from ..engine import Ranks
from ..progress import Reporter
from ..runs.folder import RunFolder
from .budget import TimeLimit


@dataclass(frozen=True)
class ModelSpec:
    """What network a fit trains, as the caller asked for it; "auto" and None are chosen from the data."""

    backbone: str  # a timm name, or "auto": EfficientNet-Lite0, 1 or 2, measured on the data
    weights: str | None = None  # a safetensors file of the backbone's weights; None: its packaged ones
    image_size: int | None = None  # None: the backbone's, or larger where the images are large and it pays
    task: str | None = None  # "single" or "multi" (a set of labels per image); None: the data's

    def with_backbone(self, name: str) -> "ModelSpec":
        return dataclasses.replace(self, backbone=name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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

    @property
    def clock(self):
        """What the time limit is counted on (a fake clock in tests)."""
        return self.limit.clock if self.limit else time.perf_counter

    @property
    def deadline(self) -> float | None:
        return None if self.limit is None else self.limit.deadline(self.started)

    def say(self, line: str) -> None:
        self.reporter.say(line)
