"""A CSV of labelled files read into a Manifest: repeats of a file merged or refused, one parser of split
values and of label fields for train and evaluate.

Columns (any case): the file in `path`, or `file_name` (the Hugging Face ImageFolder metadata.csv
convention); its class in `label`, or its labels in `labels` joined by ";" (an empty field: no label),
also written as a JSON list (["cat", "dog"]); an optional `split` (train, val or validation, test). Paths
are relative to the CSV's folder. The task is the data's: multi-label when a row carries zero or several
labels in a `labels` column (or several in a `label` one), single-label otherwise, unless forced."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..config import TASKS
from ..errors import DataError, ParameterError
from .images import not_regular
from .manifest import SPLIT_NAMES, SPLITS, Item, Manifest, multilabel_split, stratified_split

PATH_COLUMNS = ("path", "file_name")
LABEL_COLUMNS = ("label", "labels")


def scan_csv(path: Path, seed: int, val_fraction: float, test_fraction: float, task: str | None = None) -> Manifest:
    rows = read_csv(path)
    base = path.parent
    parsed = [label_set(r, number, path) for number, r in enumerate(rows, start=2)]  # row 1 is the header
    task = task_of(rows, parsed, path, task)
    multi = task == "multi"
    classes = sorted({name for names in parsed for name in names})
    if multi and len(classes) < 2:
        found = f"only the label {classes[0]!r}" if classes else "no label at all"
        raise DataError(f"CSV {str(path)!r} has {found} in its {len(rows):,} rows: a multi-label classifier needs "
                        "at least two distinct labels.")
    index = {c: i for i, c in enumerate(classes)}
    files, given_split, skipped = [], [], []
    first: dict[str, tuple[int, tuple, str]] = {}  # one file, one row: (row number, labels, split) of its first
    for number, (r, names) in enumerate(zip(rows, parsed), start=2):
        p = row_path(r, base)
        split = split_of(r, number, path)
        key = os.path.normpath(os.path.abspath(p))
        if not names and not multi:
            skipped.append((p, "no label in the CSV row"))
        elif key in first:  # the same file twice: in two splits it would leak test images into training
            row0, names0, split0 = first[key]
            if names != names0:
                raise DataError(f"CSV {str(path)!r} lists {r['path']!r} twice with different labels "
                                f"({_shown(names0)} in row {row0}, {_shown(names)} in row {number}); give each "
                                "file one row.")
            skipped.append((p, f"listed again in row {number} (first in row {row0}, same label): "
                               f"merged into row {row0}" + (f", whose split {split0 or 'none'} is kept"
                                                             if split != split0 else "")))
        elif reason := missing_reason(p):
            skipped.append((p, reason))
        else:
            first[key] = (number, names, split)
            files.append((p, tuple(sorted(index[n] for n in names))))
            given_split.append(split)
    if not files:
        raise DataError(f"CSV {str(path)!r} lists {len(rows)} rows but none is an existing, labelled file "
                        f"(paths are relative to {str(base)!r}).")
    split_files = multilabel_split if multi else stratified_split
    if not multi:
        files = [(p, labels[0]) for p, labels in files]
    items, note = given_splits(files, given_split, split_files, seed, val_fraction, test_fraction, multi)
    return Manifest(classes, items, skipped, str(path), any(given_split), task, note)


def given_splits(files: list, given: list[str], split_files, seed: int, val_fraction: float, test_fraction: float,
                 multi: bool) -> tuple[list[Item], str]:
    """Items in the splits the CSV gave them, and the rows without one split by `split_files` -> (items, a
    sentence saying what was split, or ""). A row that names its split always stays in it: the rows left
    without one make up the train split and whichever of val and test no row names. Only where every row
    names its split and none is val does val come out of train, as it does from a train/ folder."""
    named = {s for s in given if s}
    items = [_item(p, y, s, multi) for (p, y), s in zip(files, given) if s]
    rest = [f for f, s in zip(files, given) if not s]
    if not named:
        return split_files(files, seed, val_fraction, test_fraction), ""
    if rest:
        carved = [s for s in ("val", "test") if s not in named]
        items += split_files(rest, seed, val_fraction if "val" in carved else 0.0,
                             test_fraction if "test" in carved else 0.0)
        into = " and ".join(["train", *carved])
        return _in_split_order(items), (f"{len(rest):,} of {len(files):,} CSV rows name no split: split into "
                                        f"{into} (rows that name a split stay in it).")
    if not any(it.split == "val" for it in items):
        train = [(it.path, it.labels if multi else it.label) for it in items if it.split == "train"]
        items = split_files(train, seed, val_fraction, 0.0) + [it for it in items if it.split != "train"]
    return items, ""


def _in_split_order(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda it: (SPLITS.index(it.split), it.label, it.path))


def _item(p: str, y, split: str, multi: bool) -> Item:
    return Item(p, -1, split, y) if multi else Item(p, y, split)


def _shown(names: tuple[str, ...]) -> str:
    return repr(";".join(names)) if names else "no label"


def task_of(rows: list[dict[str, str]], parsed: list[tuple[str, ...]], path: Path, forced: str | None) -> str:
    """"multi" when a row carries zero labels in a `labels` column or several labels; else "single";
    `forced` (the --task flag) wins, except that single-label data cannot hold a row with several labels."""
    if forced is not None and forced not in TASKS:
        raise ParameterError("task", f"{{name}} must be single or multi; received {forced!r}.")
    column = "labels" if rows and "labels" in rows[0] else "label"
    several = next((n for n, names in enumerate(parsed, start=2) if len(names) > 1), None)
    if forced == "single":
        if several is not None:
            raise ParameterError("task", f"{{name}} single: CSV {str(path)!r} row {several} carries "
                                         f"{len(parsed[several - 2])} labels; a single-label classifier "
                                         "takes one per file. Use multi, or give each row one label.")
        return "single"
    if forced == "multi" or several is not None or (column == "labels" and any(not p for p in parsed)):
        return "multi"
    return "single"


def label_set(row: dict[str, str], number: int, path: Path) -> tuple[str, ...]:
    """A row's labels field -> its label names, sorted, each once; a field that cannot be read as labels
    (an empty name between separators, a JSON list of anything but names) is an error naming the row."""
    value = row.get("labels", row.get("label", ""))
    if not value:
        return ()
    if value.startswith("["):
        try:
            names = json.loads(value)
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise DataError(f"CSV {str(path)!r} row {number}: cannot read the labels {value!r}; expected label "
                            'names joined by ";" (a;b) or a JSON list of names (["a", "b"]).')
    else:
        names = value.split(";")
        if not all(n.strip() for n in names):
            raise DataError(f"CSV {str(path)!r} row {number}: cannot read the labels {value!r}: an empty label "
                            'between the ";" separators; expected names joined by ";" (a;b), or an empty '
                            "field for no label.")
    names = {n.strip() for n in names}
    for name in names:
        _check_label(name, number, path)
    return tuple(sorted(names))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def _check_label(name: str, number: int, path: Path) -> None:
    """A label name that cannot be written back unambiguously (";" separates labels in split.csv, the
    predictions and embed's index) or that is the debris of a quote left open (a line break, a file
    path) is an error naming the row."""
    where = f"CSV {str(path)!r} row {number}: the label {name[:60]!r}"
    if ";" in name:
        raise DataError(f"{where} contains ';', which separates labels wherever imgtune writes them; "
                        "rename the label.")
    if "\n" in name or "\r" in name:
        raise DataError(f"{where} holds a line break: a quote opened in this row and closed rows later?")
    if name.lower().endswith(IMAGE_SUFFIXES):
        raise DataError(f"{where} looks like an image file's path: a quote left open, or the columns swapped?")


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
    """The rows, keys lower-cased and stripped; the file's column (`path` or `file_name`) under "path"."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f, strict=True)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            file_column = next((c for c in PATH_COLUMNS if c in columns), None)
            if file_column is None or not any(c in columns for c in LABEL_COLUMNS):
                raise DataError(f"CSV {str(path)!r} needs columns 'path' (or 'file_name') and 'label' "
                                f"(or 'labels', several joined by ';'); found columns {columns}.")
            rows = []
            for row in reader:
                rows.append({k.strip().lower(): (v or "").strip() for k, v in row.items() if k})
    except UnicodeDecodeError as e:
        raise DataError(f"CSV {str(path)!r} cannot be read as UTF-8 CSV ({e}).") from None
    except csv.Error as e:  # read strictly: a quote left open would swallow every row after it
        raise DataError(f"CSV {str(path)!r} row {len(rows) + 2}: cannot be read as CSV ({e}); a quote opened "
                        "there or after it and never closed?") from None
    if file_column != "path":
        for r in rows:
            r["path"] = r.pop(file_column)
    return rows
