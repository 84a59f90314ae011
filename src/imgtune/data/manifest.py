"""What a scan finds: the classes, each file with its label and split, and what was skipped and why;
and the seeded, stratified split of files that came without one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic

SPLITS = ("train", "val", "test")
# what a split may be called, in a folder name or a CSV column (any case)
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Item:
    path: str
    label: int
    split: str


@dataclass
class Manifest:
    classes: list[str]
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    source: str = ""
    splits_given: bool = False  # True when the data named its splits (folders or a CSV column)

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def counts(self) -> dict[str, int]:
        return {s: sum(it.split == s for it in self.items) for s in SPLITS}

    def without(self, bad: dict[str, str]) -> "Manifest":
        """The manifest less the files that failed to decode, which join the skipped list."""
        if not bad:
            return self
        keep = [it for it in self.items if it.path not in bad]
        return Manifest(self.classes, keep, self.skipped + sorted(bad.items()), self.source, self.splits_given)

    def summary(self) -> str:
        n_skip = len(self.skipped)
        skipped = f" ({n_skip:,} skipped)" if n_skip else ""
        parts = ", ".join(f"{n:,} {s}" for s, n in self.counts().items() if n)
        return (f"Found {len(self.items):,} images in {len(self.classes)} classes{skipped}: {parts}.")

    def write_csv(self, path: Path) -> None:
        """path,label,split with absolute paths, so the file means the same from any working folder."""
        rows = ["path,label,split"] + [
            ",".join(_csv_field(v) for v in (os.path.abspath(it.path), self.classes[it.label], it.split))
            for it in self.items]
        write_text_atomic(path, "\n".join(rows) + "\n")


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def stratified_split(files: list[tuple[str, int]], seed: int, val_fraction: float,
                      test_fraction: float) -> list[Item]:
    """Per class: shuffle with the seed, then take val and test shares (at least one each when the class
    has enough images to keep one for training)."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {}
    for p, y in files:
        by_class.setdefault(y, []).append(p)
    items = []
    for y in sorted(by_class):
        paths = sorted(by_class[y])
        order = rng.permutation(len(paths))
        n = len(paths)
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n >= 2 else 0
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            items.append(Item(paths[i], y, split))
    items.sort(key=lambda it: (SPLITS.index(it.split), it.label, it.path))
    return items
