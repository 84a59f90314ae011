"""A person's corrections to the labels, kept beside the images and never applied to them: a CSV of
`path,action,label,reason,time` rows, one per image decided on (`imgtune review` writes it; a person may
edit it by hand), applied to a scan's manifest when training.

    keep      the image stays as it is (a flag looked at and dismissed)
    relabel   the image is trained and evaluated as `label`
    exclude   the image is left out, listed in skipped.csv with `reason`

Every image keeps the split the scan gave it, so a run trained with corrections is evaluated on the same
test images as the run without (less those excluded). The last row for a path is the decision."""

from __future__ import annotations

import csv
import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_csv_atomic
from ..errors import DataError
from .manifest import Item, Manifest

COLUMNS = ("path", "action", "label", "reason", "time")
ACTIONS = ("keep", "relabel", "exclude")


@dataclass(frozen=True)
class Correction:
    path: str
    action: str
    label: str = ""
    reason: str = ""
    time: str = ""


@dataclass(frozen=True)
class Applied:
    """What applying corrections did: for config.json, the console and the report."""

    file: str
    sha256: str
    rows: int
    relabelled: dict[str, int]  # "given -> new": images
    excluded: int
    kept: int
    new_classes: list[str]

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "rows": self.rows, "relabelled": self.relabelled,
                "excluded": self.excluded, "kept": self.kept, "new_classes": self.new_classes}

    def describe(self) -> str:
        moved = sum(self.relabelled.values())
        pairs = ", ".join(f"{k} ({n})" for k, n in sorted(self.relabelled.items(), key=lambda kv: -kv[1])[:4])
        more = ", ..." if len(self.relabelled) > 4 else ""
        return (f"Corrections from {self.file}: {moved:,} relabelled{f' ({pairs}{more})' if moved else ''}, "
                f"{self.excluded:,} excluded, {self.kept:,} kept as they were; the images are untouched.")


def read_corrections(path: str | os.PathLike) -> list[Correction]:
    """The rows of a corrections CSV, checked: one line naming the row for a malformed one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Corrections file {str(path)!r} does not exist (expected a CSV with columns "
                        f"{','.join(COLUMNS)}).")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        try:
            rows = list(reader)
        except csv.Error as e:
            raise DataError(f"Corrections file {str(path)!r}, row {reader.line_num}: cannot be read as CSV "
                            f"({e}).") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["path", "action"]:
        raise DataError(f"Corrections file {str(path)!r}: the first row must name the columns "
                        f"{','.join(COLUMNS)}.")
    header = [c.strip().lower() for c in rows[0]]
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in row):
            continue
        if len(row) > len(header):
            raise DataError(f"Corrections file {str(path)!r}, row {n}: {len(row)} fields where the header "
                            f"names {len(header)} (a comma in a reason must be quoted).")
        values = dict(zip(header, (v.strip() for v in row)))
        c = Correction(values.get("path", ""), values.get("action", "").lower(), values.get("label", ""),
                       values.get("reason", ""), values.get("time", ""))
        if not c.path:
            raise DataError(f"Corrections file {str(path)!r}, row {n}: no path.")
        if c.action not in ACTIONS:
            raise DataError(f"Corrections file {str(path)!r}, row {n}: action {c.action!r} is not one of "
                            f"{', '.join(ACTIONS)}.")
        if c.action == "relabel" and not c.label:
            raise DataError(f"Corrections file {str(path)!r}, row {n}: relabel needs a label.")
        if "\n" in c.label or ";" in c.label:
            raise DataError(f"Corrections file {str(path)!r}, row {n}: label {c.label!r} holds a line break or "
                            "';'.")
        out.append(c)
    return out


def latest(corrections: list[Correction]) -> dict[str, Correction]:
    """The decision for each path: its last row."""
    return {c.path: c for c in corrections}


def write_corrections(path: str | os.PathLike, decisions: dict[str, Correction]) -> None:
    """One row per path, in the order first decided, written atomically."""
    write_csv_atomic(path, COLUMNS, ([c.path, c.action, c.label, c.reason, c.time] for c in decisions.values()))


def decided(path: str, action: str, label: str = "", reason: str = "") -> Correction:
    """A decision made now."""
    return Correction(path, action, label if action == "relabel" else "", reason,
                      time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def apply_corrections(m: Manifest, path: str | os.PathLike, *, allow_new_classes: bool = False
                      ) -> tuple[Manifest, Applied]:
    """`m` with the corrections in the CSV at `path` applied: relabelled items carry their new class (a
    class not in the data is refused unless `allow_new_classes`), excluded ones join the skipped list.
    A row naming a file the data does not hold is an error naming the row."""
    if m.multi:
        raise DataError("Corrections apply to single-label data (one class per image); this data is "
                        "multi-label.")
    rows = read_corrections(path)
    by_path = {_key(it.path): i for i, it in enumerate(m.items)}
    root = Path(m.source).parent if m.source.lower().endswith(".csv") else Path(m.source)
    classes = list(m.classes)
    decisions: dict[int, tuple[int, Correction]] = {}
    for n, c in enumerate(rows, start=2):
        i = by_path.get(_key(c.path))
        if i is None:
            i = by_path.get(_key(root / c.path))  # relative to the data's folder
        if i is None:
            raise DataError(f"Corrections file {str(path)!r}, row {n}: {c.path!r} is not an image of the data "
                            f"{m.source!r}.")
        if c.action == "relabel" and c.label not in classes:
            if not allow_new_classes:
                raise DataError(f"Corrections file {str(path)!r}, row {n}: class {c.label!r} is not one of the "
                                f"data's classes {m.classes}; pass --allow-new-classes to add it.")
            classes.append(c.label)
        decisions[i] = (n, c)
    items, skipped, pairs, excluded, kept = [], list(m.skipped), Counter(), 0, 0
    for i, it in enumerate(m.items):
        n, c = decisions.get(i, (0, None))
        if c is None or c.action == "keep" or (c.action == "relabel" and classes[it.label] == c.label):
            kept += c is not None
            items.append(it)
        elif c.action == "exclude":
            excluded += 1
            skipped.append((it.path, f"excluded by {Path(path).name} row {n}" + (f": {c.reason}" if c.reason else "")))
        else:
            pairs[f"{classes[it.label]} -> {c.label}"] += 1
            items.append(Item(it.path, classes.index(c.label), it.split))
    out = Manifest(classes, items, skipped, m.source, m.splits_given, m.task, m.split_note)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out, Applied(str(path), digest, len(rows), dict(pairs), excluded, kept, classes[len(m.classes):])


def _key(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.abspath(path))
