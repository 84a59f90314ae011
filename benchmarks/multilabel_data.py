"""The multi-label benchmark's data sets, built from real images and each written once as DATA/images/*.png
plus DATA/labels.csv (`path,labels,split`: paths relative to DATA, labels joined by ";", split train, val
or test), with a fixed, seeded split (a marker file names the sizes and seed; other sizes write it again).

- fmnist-mosaics: 56x56 grey 2x2 mosaics of Fashion-MNIST items (Debian `dataset-fashion-mnist`). A mosaic
  fills 1-4 of its cells (uniformly), each with an item of a different class (so 1-4 labels, uniformly),
  the classes drawn uniformly from the 10, the cell positions at random, empty cells black. Its labels are
  the classes it shows. Train and val mosaics take items from disjoint halves of the official training
  set, test mosaics from the official test set; no item appears twice in the whole set.
- clipart-composites: 160x160 white canvases with 1-3 drawings (uniformly) of different Open Clip Art
  categories (Debian `openclipart-png`; the accuracy suite's 7 object categories without its symbol
  folders, bombs and cross-category duplicates), each scaled to fit 80 px (random 64-88 px) and
  alpha-composited into its own quadrant of the canvas, jittered by up to 12 px (so drawings may touch).
  The drawings are split per category first, numbered and black-and-white variants of one drawing kept
  together (60/15/25 train/val/test), so no test drawing (or a variant of it) is seen in training.

    python benchmarks/multilabel_data.py [BASE] [--quick]     # writes BASE/<set>/ (default benchmarks/data)
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from accuracy_data import CLIPART_CLASSES, FMNIST, _variant_key, clipart_files  # siblings
from fashion_mnist import CLASSES as FMNIST_CLASSES
from fashion_mnist import read_idx
from PIL import Image

SEED = 0
# (train, val, test) mosaics/composites: the full run's and --quick's
SIZES = {"fmnist-mosaics": {"full": (2000, 500, 1000), "quick": (300, 100, 200)},
         "clipart-composites": {"full": (1200, 300, 600), "quick": (200, 80, 120)}}
SPLITS = ("train", "val", "test")
CLIPART_FRACTIONS = (0.60, 0.15, 0.25)  # of each category's drawings (variant groups): train, val, test
CANVAS, CELL, JITTER = 160, 80, 12


def _write_csv(out: Path, rows: list[tuple[str, list[str], str]]) -> None:
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "split"])
        for path, labels, split in rows:
            w.writerow([path, ";".join(sorted(labels)), split])


def fmnist_mosaics(out: Path, n_train: int, n_val: int, n_test: int, seed: int = SEED) -> None:
    """out/images/<split>_<i>.png (56x56 grey 2x2 mosaics of 1-4 items of distinct classes) + out/labels.csv."""
    if not FMNIST.exists():
        sys.exit(f"{FMNIST} not found: apt-get install dataset-fashion-mnist")
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for prefix, splits in (("train", (("train", n_train), ("val", n_val))), ("t10k", (("test", n_test),))):
        images = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
        # per class, a shuffled pool of the official images; train and val take disjoint halves of it
        pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in range(len(FMNIST_CLASSES))}
        for part, (split, n) in enumerate(splits):
            pool = {c: list(idx[part::len(splits)]) for c, idx in pools.items()}
            for i in range(n):
                k = int(rng.integers(1, 5))  # filled cells = distinct classes = labels: 1-4
                classes = rng.choice(len(FMNIST_CLASSES), k, replace=False)
                cells = rng.choice(4, k, replace=False)
                mosaic = np.zeros((56, 56), np.uint8)
                for c, cell in zip(classes, cells):
                    r, col = divmod(int(cell), 2)
                    mosaic[28 * r:28 * r + 28, 28 * col:28 * col + 28] = images[pool[int(c)].pop()]
                name = f"images/{split}_{i:05d}.png"
                Image.fromarray(mosaic, "L").save(out / name)
                rows.append((name, [FMNIST_CLASSES[int(c)] for c in classes], split))
    _write_csv(out, rows)


def clipart_sources(seed: int = SEED) -> dict[str, dict[str, list[Path]]]:
    """{split: {category: [drawing, ...]}}: the accuracy suite's clip-art files (its 7 categories, without
    the symbol folders, the drawings Pillow refuses as bombs and the files found in two categories), split
    per category by variant group (CLIPART_FRACTIONS of the groups, seeded)."""
    per_class: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for p, c in clipart_files():
        per_class[c][_variant_key(p)].append(p)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
    for c in CLIPART_CLASSES:
        groups = sorted(per_class[c])
        groups = [groups[i] for i in rng.permutation(len(groups))]
        total, done = sum(len(per_class[c][g]) for g in groups), 0
        bounds = np.cumsum(CLIPART_FRACTIONS) * total
        for s in SPLITS:
            out[s][c] = []
        for g in groups:  # fill train, then val, then test, a group at a time
            split = SPLITS[min(int(np.searchsorted(bounds, done, side="right")), 2)]
            out[split][c] += per_class[c][g]
            done += len(per_class[c][g])
    return out


def _drawing(path: Path, cache: dict) -> Image.Image:
    """The drawing as RGBA, fitted into 88x88 (cached: the sizes used are 64-88 px)."""
    if path not in cache:
        with Image.open(path) as img:
            img.load()
            rgba = img.convert("RGBA")
        rgba.thumbnail((88, 88), Image.LANCZOS)
        cache[path] = rgba
    return cache[path]


def clipart_composites(out: Path, n_train: int, n_val: int, n_test: int, seed: int = SEED) -> None:
    """out/images/<split>_<i>.png (160x160 RGB: 1-3 drawings of distinct categories on white) + labels.csv."""
    sources = clipart_sources(seed)
    rng = np.random.default_rng(seed + 1)
    (out / "images").mkdir(parents=True, exist_ok=True)
    cache: dict[Path, Image.Image] = {}
    rows = []
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        names = [c for c in CLIPART_CLASSES if sources[split][c]]
        for i in range(n):
            k = int(rng.integers(1, 4))
            classes = [names[j] for j in rng.choice(len(names), k, replace=False)]
            cells = rng.choice(4, k, replace=False)
            canvas = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 255))
            for c, cell in zip(classes, cells):
                files = sources[split][c]
                art = _drawing(files[int(rng.integers(len(files)))], cache)
                side = int(rng.integers(64, 89))
                scale = side / max(art.size)
                art = art.resize((max(1, round(art.width * scale)), max(1, round(art.height * scale))),
                                 Image.LANCZOS)
                r, col = divmod(int(cell), 2)
                x = CELL * col + (CELL - art.width) // 2 + int(rng.integers(-JITTER, JITTER + 1))
                y = CELL * r + (CELL - art.height) // 2 + int(rng.integers(-JITTER, JITTER + 1))
                x, y = min(max(x, 0), CANVAS - art.width), min(max(y, 0), CANVAS - art.height)
                canvas.alpha_composite(art, (x, y))
            name = f"images/{split}_{i:05d}.png"
            canvas.convert("RGB").save(out / name)
            rows.append((name, classes, split))
    _write_csv(out, rows)


SETS = {"fmnist-mosaics": fmnist_mosaics, "clipart-composites": clipart_composites}


def prepare(name: str, base: Path, quick: bool = False, seed: int = SEED) -> Path:
    """BASE/<name>[-quick]/ with images/ and labels.csv, written once for these sizes and seed."""
    mode = "quick" if quick else "full"
    sizes = SIZES[name][mode]
    root = base / (f"{name}-quick" if quick else name)
    marker = root / f"COMPLETE-{'-'.join(map(str, sizes))}-{seed}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    SETS[name](root, *sizes, seed=seed)
    marker.write_text("complete\n")
    return root


def read_labels(root: Path) -> list[tuple[str, list[str], str]]:
    """labels.csv's rows as (absolute path, [labels], split)."""
    with open(root / "labels.csv", newline="") as f:
        return [(str(root / r["path"]), [x for x in r["labels"].split(";") if x], r["split"])
                for r in csv.DictReader(f)]


def summary(root: Path) -> str:
    rows = read_labels(root)
    parts = []
    for s in SPLITS:
        mine = [labels for _, labels, split in rows if split == s]
        card = Counter(len(x) for x in mine)
        per = Counter(x for labels in mine for x in labels)
        parts.append(f"{s} {len(mine)} (labels per image {dict(sorted(card.items()))}; "
                     f"per label {min(per.values())}-{max(per.values())})")
    return "; ".join(parts)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", nargs="?", type=Path, default=Path("benchmarks/data"))
    p.add_argument("--quick", action="store_true", help="the quick sizes (see SIZES)")
    p.add_argument("--sets", default=",".join(SETS))
    a = p.parse_args()
    for name in a.sets.split(","):
        r = prepare(name, a.base, a.quick)
        print(f"{name}: {r}: {summary(r)}")
