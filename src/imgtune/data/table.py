"""A CSV of labelled files, `path,label[,split]` (paths relative to the CSV's folder), read into a
Manifest: repeats of a file merged or refused, one parser of split values for train and evaluate."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import DataError
from .images import not_regular
from .manifest import SPLIT_NAMES, Item, Manifest, stratified_split


def scan_csv(path: Path, seed: int, val_fraction: float, test_fraction: float) -> Manifest:
    rows = read_csv(path)
    base = path.parent
    classes = sorted({r["label"] for r in rows if r["label"]})
    index = {c: i for i, c in enumerate(classes)}
    files, given_split, skipped = [], [], []
    first: dict[str, tuple[int, str, str]] = {}  # one file, one row: (row number, label, split) of its first
    for number, r in enumerate(rows, start=2):  # row 1 is the header
        p = row_path(r, base)
        split = split_of(r, number, path)
        key = os.path.normpath(os.path.abspath(p))
        if not r["label"]:
            skipped.append((p, "no label in the CSV row"))
        elif key in first:  # the same file twice: in two splits it would leak test images into training
            row0, label0, split0 = first[key]
            if r["label"] != label0:
                raise DataError(f"CSV {str(path)!r} lists {r['path']!r} twice with different labels "
                                f"({label0!r} in row {row0}, {r['label']!r} in row {number}); give each file "
                                "one label.")
            skipped.append((p, f"listed again in row {number} (first in row {row0}, same label): "
                               f"merged into row {row0}" + (f", whose split {split0 or 'none'} is kept"
                                                             if split != split0 else "")))
        elif reason := missing_reason(p):
            skipped.append((p, reason))
        else:
            first[key] = (number, r["label"], split)
            files.append((p, index[r["label"]]))
            given_split.append(split)
    if not files:
        raise DataError(f"CSV {str(path)!r} lists {len(rows)} rows but none is an existing, labelled file "
                        f"(paths are relative to {str(base)!r}).")
    splits_given = all(given_split)
    if splits_given:
        items = [Item(p, y, s) for (p, y), s in zip(files, given_split)]
        if not any(it.split == "val" for it in items):
            train = [(it.path, it.label) for it in items if it.split == "train"]
            items = stratified_split(train, seed, val_fraction, 0.0) + [it for it in items if it.split != "train"]
    else:
        items = stratified_split(files, seed, val_fraction, test_fraction)
    return Manifest(classes, items, skipped, str(path), splits_given)


def split_of(row: dict[str, str], number: int, path: Path) -> str:
    """A CSV row's split value -> "train", "val", "test", or "" when the row gives none; the same parser
    for train and evaluate (any case; "validation" for "val"). Anything else is an error naming the row."""
    value = row.get("split", "")
    if not value:
        return ""
    split = SPLIT_NAMES.get(value.lower())
    if split is None:
        raise DataError(f"CSV {str(path)!r} row {number}: unknown split {value!r}; expected train, val "
                        "(or validation), test, or an empty field.")
    return split


def row_path(row: dict[str, str], base: Path) -> str:
    return row["path"] if os.path.isabs(row["path"]) else str(base / row["path"])


def missing_reason(p: str) -> str | None:
    """Why a listed path cannot be read as an image file, without opening it; None when it can."""
    return not_regular(p) if os.path.exists(p) else "file not found"


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            if "path" not in columns or "label" not in columns:
                raise DataError(f"CSV {str(path)!r} needs columns 'path' and 'label'; found columns {columns}.")
            return [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"CSV {str(path)!r} cannot be read as UTF-8 CSV ({e}).") from None
