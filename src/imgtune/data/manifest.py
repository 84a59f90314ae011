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
    """One file: its class (single-label data) or its set of labels (multi-label data, where `label` is
    -1 and `labels` holds the label indices, possibly none), and its split."""

    path: str
    label: int
    split: str
    labels: tuple[int, ...] = ()


@dataclass
class Manifest:
    classes: list[str]
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    source: str = ""
    splits_given: bool = False  # True when the data named its splits (folders or a CSV column)
    task: str = "single"  # "single": one class per file; "multi": a set of labels per file (classes = labels)
    split_note: str = ""  # how files without a given split were split, where some had one (a CSV column)

    @property
    def multi(self) -> bool:
        return self.task == "multi"

    def targets(self, items: list[Item]) -> np.ndarray:
        """The training targets of `items`: class indices [N] (single-label), or 0/1 rows [N, K] of float32
        (multi-label)."""
        if not self.multi:
            return np.array([it.label for it in items], dtype=int)
        y = np.zeros((len(items), len(self.classes)), np.float32)
        for i, it in enumerate(items):
            y[i, list(it.labels)] = 1
        return y

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def counts(self) -> dict[str, int]:
        return {s: sum(it.split == s for it in self.items) for s in SPLITS}

    def without(self, bad: dict[str, str]) -> "Manifest":
        """The manifest less the files that failed to decode, which join the skipped list."""
        if not bad:
            return self
        keep = [it for it in self.items if it.path not in bad]
        return Manifest(self.classes, keep, self.skipped + sorted(bad.items()), self.source, self.splits_given,
                        self.task, self.split_note)

    def summary(self) -> str:
        n_skip = len(self.skipped)
        skipped = f" ({n_skip:,} skipped)" if n_skip else ""
        parts = ", ".join(f"{n:,} {s}" for s, n in self.counts().items() if n)
        kind = "labels (multi-label)" if self.multi else "classes"
        note = f" {self.split_note}" if self.split_note else ""
        return f"Found {len(self.items):,} images in {len(self.classes)} {kind}{skipped}: {parts}.{note}"

    def write_csv(self, path: Path) -> None:
        """path,label,split (multi-label: path,labels,split, labels joined by ";") with absolute paths, so
        the file means the same from any working folder."""
        def label(it: Item) -> str:
            return ";".join(self.classes[j] for j in it.labels) if self.multi else self.classes[it.label]

        rows = [f"path,{'labels' if self.multi else 'label'},split"] + [
            ",".join(_csv_field(v) for v in (os.path.abspath(it.path), label(it), it.split)) for it in self.items]
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


def multilabel_split(files: list[tuple[str, tuple[int, ...]]], seed: int, val_fraction: float,
                     test_fraction: float) -> list[Item]:
    """Files with label sets -> Items split by iterative stratification (Sechidis et al. 2011, the
    `iterative-stratification` package): test, then validation out of the rest, each label's share
    as close to the fractions as the sets allow. A label left without a training image gets one back
    (from validation first), so every label can be learned."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    files = sorted(files)
    n = len(files)
    k = 1 + max((j for _, labels in files for j in labels), default=0)
    y = np.zeros((n, k), int)
    for i, (_, labels) in enumerate(files):
        y[i, list(labels)] = 1
    split = np.array(["train"] * n, dtype=object)
    rest = np.arange(n)
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        share = fraction / max(1e-9, 1 - (test_fraction if name == "val" else 0))
        if fraction <= 0 or len(rest) < 3:
            continue
        size = max(1, round(len(rest) * share))
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed)
        _, taken = next(splitter.split(np.zeros(len(rest)), y[rest]))
        split[rest[taken]] = name
        rest = np.flatnonzero(split == "train")
    for j in range(k):  # a label with images but none in train: one comes back (val first, then test)
        if y[:, j].any() and not y[split == "train", j].any():
            for name in ("val", "test"):
                held = np.flatnonzero((split == name) & (y[:, j] == 1))
                if len(held):
                    split[held[0]] = "train"
                    break
    items = [Item(p, -1, str(s), labels) for (p, labels), s in zip(files, split)]
    items.sort(key=lambda it: (SPLITS.index(it.split), it.path))
    return items
