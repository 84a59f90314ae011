"""A folder or CSV in, a Manifest out: which files, which labels, which split. No torch here.

Layouts understood:
  DATA/<class>/<image>                                  split here, seeded and stratified
  DATA/{train,val|validation,test}/<class>/<image>      splits as given (val made from train if absent)
  FILE.csv with columns path,label[,split]              paths relative to the CSV's folder
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from ..errors import DataError
from .images import not_regular

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLITS = ("train", "val", "test")
_SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


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


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan(source: str | os.PathLike, *, seed: int = 0, val_fraction: float = 0.1,
         test_fraction: float = 0.1) -> Manifest:
    """Find the images and labels under `source` and assign every file to a split; refuse data that
    cannot train a classifier (fewer than 2 classes, a class without training images)."""
    m = find_images(source, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    require_usable(m)
    return m


def find_images(source: str | os.PathLike, *, seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.1) -> Manifest:
    """As `scan`, without judging whether the data can train anything (the data audit looks at any data)."""
    root = Path(source)
    if not root.exists():
        raise DataError(f"Data path {str(root)!r} does not exist: expected a folder of class folders "
                        "or a CSV file with columns path,label.")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"Data path {str(root)!r} is a file, not a folder: expected a folder of class "
                            "folders (DATA/<class>/<image>) or a .csv file with columns path,label.")
        return _scan_csv(root, seed, val_fraction, test_fraction)
    split_dirs = {_SPLIT_DIRS[d.name.lower()]: d for d in sorted(root.iterdir())
                  if d.is_dir() and d.name.lower() in _SPLIT_DIRS}
    if "train" in split_dirs:
        return _scan_splits(root, split_dirs, seed, val_fraction)
    classes, files, skipped = _scan_class_folders(root)
    items = _stratified_split(files, seed, val_fraction, test_fraction)
    return Manifest(classes, items, skipped, str(root))


def _scan_class_folders(root: Path, classes: list[str] | None = None):
    """DATA/<class>/** -> classes, [(path, label)], skipped. Files may sit in nested folders."""
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{str(root)!r} has classes that the training data does not: {unknown}. "
                            f"Expected a subset of {classes}.")
    files, skipped = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                if fn.startswith("."):
                    continue
                if not is_image_name(fn):
                    skipped.append((p, f"not an image file extension (expected one of {' '.join(IMAGE_EXTENSIONS)})"))
                elif reason := not_regular(p):
                    skipped.append((p, reason))
                else:
                    files.append((p, label))
    if not files and not skipped:
        loose = [f.name for f in root.iterdir() if f.is_file() and is_image_name(f.name)]
        hint = (f" It holds {len(loose)} images directly: put each class's images in a folder named "
                "after the class." if loose else "")
        raise DataError(f"Found 0 images in subfolders of {str(root)!r}: expected DATA/<class>/<image> with "
                        f"extensions {' '.join(IMAGE_EXTENSIONS)}.{hint}")
    return classes, files, skipped


def _scan_splits(root: Path, split_dirs: dict[str, Path], seed: int, val_fraction: float) -> Manifest:
    classes, train_files, skipped = _scan_class_folders(split_dirs["train"])
    items: list[Item] = []
    if "val" in split_dirs:
        items += [Item(p, y, "train") for p, y in train_files]
    else:
        items += _stratified_split(train_files, seed, val_fraction, 0.0)
    for split in ("val", "test"):
        if split in split_dirs:
            _, files, more = _scan_class_folders(split_dirs[split], classes)
            items += [Item(p, y, split) for p, y in files]
            skipped += more
    return Manifest(classes, items, skipped, str(root), splits_given=True)


def _scan_csv(path: Path, seed: int, val_fraction: float, test_fraction: float) -> Manifest:
    rows = _read_csv(path)
    base = path.parent
    classes = sorted({r["label"] for r in rows if r["label"]})
    index = {c: i for i, c in enumerate(classes)}
    files, given_split, skipped = [], [], []
    first: dict[str, tuple[int, str, str]] = {}  # one file, one row: (row number, label, split) of its first
    for number, r in enumerate(rows, start=2):  # row 1 is the header
        p = _row_path(r, base)
        split = _split_of(r, number, path)
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
        elif reason := _missing_reason(p):
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
            items = _stratified_split(train, seed, val_fraction, 0.0) + [it for it in items if it.split != "train"]
    else:
        items = _stratified_split(files, seed, val_fraction, test_fraction)
    return Manifest(classes, items, skipped, str(path), splits_given)


def _split_of(row: dict[str, str], number: int, path: Path) -> str:
    """A CSV row's split value -> "train", "val", "test", or "" when the row gives none; the same parser
    for train and evaluate (any case; "validation" for "val"). Anything else is an error naming the row."""
    value = row.get("split", "")
    if not value:
        return ""
    split = _SPLIT_DIRS.get(value.lower())
    if split is None:
        raise DataError(f"CSV {str(path)!r} row {number}: unknown split {value!r}; expected train, val "
                        "(or validation), test, or an empty field.")
    return split


def _row_path(row: dict[str, str], base: Path) -> str:
    return row["path"] if os.path.isabs(row["path"]) else str(base / row["path"])


def _missing_reason(p: str) -> str | None:
    """Why a listed path cannot be read as an image file, without opening it; None when it can."""
    return not_regular(p) if os.path.exists(p) else "file not found"


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            if "path" not in columns or "label" not in columns:
                raise DataError(f"CSV {str(path)!r} needs columns 'path' and 'label'; found columns {columns}.")
            return [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"CSV {str(path)!r} cannot be read as UTF-8 CSV ({e}).") from None


def _stratified_split(files: list[tuple[str, int]], seed: int, val_fraction: float,
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


def require_usable(m: Manifest) -> None:
    """Two or more classes, each with training images; said in one line when not."""
    where = m.source
    if len(m.classes) < 2:
        found = f"1 ('{m.classes[0]}')" if m.classes else "0"
        raise DataError(f"Expected at least 2 classes in {where!r}, found {found}: a classifier needs one "
                        "folder (or CSV label) per class.")
    if not m.items and m.skipped:  # every file was left out: say why, rather than what is missing
        reasons = Counter(r for _, r in m.skipped).most_common()
        if len(reasons) == 1:
            raise DataError(f"All {len(m.skipped):,} files in {where!r} were left out: {reasons[0][0]}.")
        top = "; ".join(f"{n:,} {r}" for r, n in reasons[:3])
        raise DataError(f"None of the {len(m.skipped):,} files in {where!r} is usable: {top}"
                        f"{'; ...' if len(reasons) > 3 else ''} (see skipped.csv).")
    if not any(it.split == "val" for it in m.items):
        raise DataError(f"Expected validation images in {where!r}, found none: give each class 2 or more "
                        "images, or add a val/ folder.")
    train_counts = np.bincount([it.label for it in m.items if it.split == "train"], minlength=len(m.classes))
    empty = [c for c, n in zip(m.classes, train_counts) if n == 0]
    if empty:
        bad = {c: sum(1 for p, _ in m.skipped if _in_class(p, c)) for c in empty}
        detail = ", ".join(f"'{c}' ({bad[c]} files skipped)" if bad[c] else f"'{c}'" for c in empty)
        raise DataError(f"Expected training images in every class of {where!r}; found none usable in "
                        f"{detail}. See the skipped files' reasons, or remove the class.")


def _in_class(path: str, cls: str) -> bool:
    return f"{os.sep}{cls}{os.sep}" in path


def labelled_files(source: str | os.PathLike, classes: list[str]) -> Manifest:
    """Images to evaluate a trained model on: every labelled file under `source` (a class-folder tree or
    CSV), or its test split (else val) when `source` has split folders. Labels must be known classes."""
    root = Path(source)
    if not root.exists():
        raise DataError(f"Data path {str(root)!r} does not exist: expected a folder of class folders or a CSV.")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"Data path {str(root)!r} is a file: expected a folder of class folders or a .csv.")
        rows = _read_csv(root)
        splits = [_split_of(r, number, root) for number, r in enumerate(rows, start=2)]
        if any(splits):
            wanted = "test" if "test" in splits else "val"
            rows = [r for r, split in zip(rows, splits) if split == wanted]
        unknown = sorted({r["label"] for r in rows} - set(classes))
        if unknown:
            raise DataError(f"CSV {str(root)!r} has labels the model does not know: {unknown}. Expected {classes}.")
        items, skipped = [], []
        for r in rows:
            p = _row_path(r, root.parent)
            if reason := _missing_reason(p):
                skipped.append((p, reason))
            else:
                items.append(Item(p, classes.index(r["label"]), "test"))
        m = Manifest(list(classes), items, skipped, str(root))
    else:
        split_dirs = {_SPLIT_DIRS[d.name.lower()]: d for d in sorted(root.iterdir())
                      if d.is_dir() and d.name.lower() in _SPLIT_DIRS}
        folder = split_dirs.get("test") or split_dirs.get("val") or root
        _, files, skipped = _scan_class_folders(folder, list(classes))
        m = Manifest(list(classes), [Item(p, y, "test") for p, y in files], skipped, str(folder))
    if not m.items:
        raise DataError(f"Found 0 usable images in {m.source!r}: expected <class>/<image> for classes {classes}.")
    return m


def image_files(paths: list[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files and folders (searched recursively) -> image files in a stable order, and skipped entries."""
    files, skipped = [], []
    for p in map(Path, paths):
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                files += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f)]
        elif p.exists():
            if reason := not_regular(p):
                skipped.append((str(p), reason))
            else:
                files.append(str(p))
        else:
            skipped.append((str(p), "no such file or folder"))
    return files, skipped
