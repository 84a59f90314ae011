"""A folder or CSV in, a Manifest out: which files, which labels, which split. No torch here.

Layouts understood:
  DATA/<class>/<image>                                  split here, seeded and stratified
  DATA/{train,val|validation,test}/<class>/<image>      splits as given (val made from train if absent)
  FILE.csv with columns path,label[,split]              paths relative to the CSV's folder
  FILE.csv with columns path,labels[,split]             multi-label: labels joined by ";" (csv_labels.py)
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import TASKS
from ..errors import DataError
from .images import not_regular
from .manifest import SPLIT_NAMES, Item, Manifest, stratified_split
from .csv_labels import label_set, missing_reason, read_csv, row_path, scan_csv, split_of

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan(source: str | os.PathLike, *, seed: int = 0, val_fraction: float = 0.1,
         test_fraction: float = 0.1, task: str | None = None) -> Manifest:
    """Find the images and labels under `source` and assign every file to a split; refuse data that
    cannot train a classifier (fewer than 2 classes, a class without training images). `task` (single
    or multi) forces the task; None: the data's (table.task_of)."""
    m = find_images(source, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, task=task)
    require_usable(m)
    return m


def find_images(source: str | os.PathLike, *, seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.1, task: str | None = None) -> Manifest:
    """As `scan`, without judging whether the data can train anything (the data audit looks at any data)."""
    m = _find(Path(source), seed, val_fraction, test_fraction, task)
    if task == "multi" and not m.multi:  # class folders as label sets of one label each
        m = Manifest(m.classes, [Item(it.path, -1, it.split, (it.label,)) for it in m.items], m.skipped,
                     m.source, m.splits_given, "multi")
    return m


def _find(root: Path, seed: int, val_fraction: float, test_fraction: float, task: str | None) -> Manifest:
    if task is not None and task not in TASKS:
        raise DataError(f"Unknown task {task!r}: expected single or multi.")
    if not root.exists():
        raise DataError(f"Data path {str(root)!r} does not exist: expected a folder of class folders "
                        "or a CSV file with columns path,label.")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"Data path {str(root)!r} is a file, not a folder: expected a folder of class "
                            "folders (DATA/<class>/<image>) or a .csv file with columns path,label.")
        return scan_csv(root, seed, val_fraction, test_fraction, task)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in sorted(root.iterdir())
                  if d.is_dir() and d.name.lower() in SPLIT_NAMES}
    if "train" in split_dirs:
        return _scan_splits(root, split_dirs, seed, val_fraction)
    classes, files, skipped = _scan_class_folders(root)
    items = stratified_split(files, seed, val_fraction, test_fraction)
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
        tables = [f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() == ".csv"]
        if tables:  # a Hugging Face ImageFolder (metadata.csv) or any labels table beside the images
            hint += (f" It holds {', '.join(sorted(tables)[:3])}: give that CSV as DATA "
                     f"({str(root / sorted(tables)[0])!r}).")
        raise DataError(f"Found 0 images in subfolders of {str(root)!r}: expected DATA/<class>/<image> with "
                        f"extensions {' '.join(IMAGE_EXTENSIONS)}.{hint}")
    return classes, files, skipped


def _scan_splits(root: Path, split_dirs: dict[str, Path], seed: int, val_fraction: float) -> Manifest:
    classes, train_files, skipped = _scan_class_folders(split_dirs["train"])
    items: list[Item] = []
    if "val" in split_dirs:
        items += [Item(p, y, "train") for p, y in train_files]
    else:
        items += stratified_split(train_files, seed, val_fraction, 0.0)
    for split in ("val", "test"):
        if split in split_dirs:
            _, files, more = _scan_class_folders(split_dirs[split], classes)
            items += [Item(p, y, split) for p, y in files]
            skipped += more
    return Manifest(classes, items, skipped, str(root), splits_given=True)


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
        fix = ("give each class 2 or more rows, or mark some rows val in a split column" if where.lower().endswith(".csv")
               else "give each class 2 or more images, or add a val/ folder")
        raise DataError(f"Expected validation images in {where!r}, found none: {fix}.")
    if m.multi:
        in_train = m.targets(m.split("train")).sum(axis=0)
        never = [c for c, n in zip(m.classes, in_train) if n == 0]
        if never:
            raise DataError(f"Labels {never} of {where!r} occur in no training image, so they cannot be "
                            "learned: give each label training images, or remove it.")
        return
    train_counts = np.bincount([it.label for it in m.items if it.split == "train"], minlength=len(m.classes))
    empty = [c for c, n in zip(m.classes, train_counts) if n == 0]
    if empty:
        bad = {c: sum(1 for p, _ in m.skipped if _in_class(p, c)) for c in empty}
        detail = ", ".join(f"'{c}' ({bad[c]} files skipped)" if bad[c] else f"'{c}'" for c in empty)
        raise DataError(f"Expected training images in every class of {where!r}; found none usable in "
                        f"{detail}. See the skipped files' reasons, or remove the class.")


def _in_class(path: str, cls: str) -> bool:
    return f"{os.sep}{cls}{os.sep}" in path


def labelled_files(source: str | os.PathLike, classes: list[str], task: str = "single") -> Manifest:
    """Images to evaluate a trained model on: every labelled file under `source` (a class-folder tree or
    CSV), or its test split (else val) when `source` has split folders. Labels must be known classes.
    Multi-label models take a CSV (or class folders, one label each)."""
    root = Path(source)
    if task == "multi":
        return _labelled_sets(root, classes)
    if not root.exists():
        raise DataError(f"Data path {str(root)!r} does not exist: expected a folder of class folders or a CSV.")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"Data path {str(root)!r} is a file: expected a folder of class folders or a .csv.")
        rows = read_csv(root)
        splits = [split_of(r, number, root) for number, r in enumerate(rows, start=2)]
        if any(splits):
            wanted = "test" if "test" in splits else "val"
            rows = [r for r, split in zip(rows, splits) if split == wanted]
        unknown = sorted({r["label"] for r in rows} - set(classes))
        if unknown:
            raise DataError(f"CSV {str(root)!r} has labels the model does not know: {unknown}. Expected {classes}.")
        items, skipped = [], []
        for r in rows:
            p = row_path(r, root.parent)
            if reason := missing_reason(p):
                skipped.append((p, reason))
            else:
                items.append(Item(p, classes.index(r["label"]), "test"))
        m = Manifest(list(classes), items, skipped, str(root))
    else:
        split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in sorted(root.iterdir())
                      if d.is_dir() and d.name.lower() in SPLIT_NAMES}
        folder = split_dirs.get("test") or split_dirs.get("val") or root
        _, files, skipped = _scan_class_folders(folder, list(classes))
        m = Manifest(list(classes), [Item(p, y, "test") for p, y in files], skipped, str(folder))
    if not m.items:
        raise DataError(f"Found 0 usable images in {m.source!r}: expected <class>/<image> for classes {classes}.")
    return m


def _labelled_sets(root: Path, classes: list[str]) -> Manifest:
    """labelled_files for a multi-label model: a CSV's rows (its test split, else val, when it names
    splits) with their label sets, every label one the model knows."""
    if root.is_file() and root.suffix.lower() == ".csv":
        rows = read_csv(root)
        numbered = list(enumerate(rows, start=2))
        splits = [split_of(r, number, root) for number, r in numbered]
        if any(splits):
            wanted = "test" if "test" in splits else "val"
            numbered = [nr for nr, split in zip(numbered, splits) if split == wanted]
        index = {c: i for i, c in enumerate(classes)}
        items, skipped = [], []
        for number, r in numbered:
            names = label_set(r, number, root)
            unknown = [n for n in names if n not in index]
            if unknown:
                raise DataError(f"CSV {str(root)!r} row {number} has labels the model does not know: {unknown}. "
                                f"Expected labels among {classes}.")
            p = row_path(r, root.parent)
            if reason := missing_reason(p):
                skipped.append((p, reason))
            else:
                items.append(Item(p, -1, "test", tuple(sorted(index[n] for n in names))))
        m = Manifest(list(classes), items, skipped, str(root), task="multi")
    else:
        single = labelled_files(root, classes)
        m = Manifest(single.classes, [Item(it.path, -1, "test", (it.label,)) for it in single.items],
                     single.skipped, single.source, task="multi")
    if not m.items:
        raise DataError(f"Found 0 usable images in {m.source!r}: expected a CSV path,labels of existing files.")
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
