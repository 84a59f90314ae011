"""The accuracy suite's data sets, each written once as DATA/{train,test}/<class>/*.png with a fixed,
seeded split (a marker file says a set is complete; delete the folder to write it again).

- fashion-mnist: Debian `dataset-fashion-mnist`; 500 training images per class from the official training
  set, 200 test images per class from the official test set (the subset BENCHMARKS.md has always used).
- fashion-mnist-lt: the same images, training classes thinned exponentially from 500 down to 10 per
  class (imbalance 50, class 0 the largest), the test split kept balanced (the usual long-tail protocol).
- clipart: Debian `openclipart-png`, 7 object categories (animals, buildings, food, people, plants,
  tools, transportation) without the symbol folders (people/smilies, transportation/roadsigns,
  transportation/aiga-symbols) and the 11 drawings over 89 megapixels; transparency laid on white; exact duplicates dropped (a file found in two
  categories is dropped from both); numbered and black-and-white variants of one drawing kept on one
  side of a 75/25 split stratified by category.
- digits: scikit-learn's 1,797 handwritten digits (8x8 px), a stratified 75/25 split.
- elpv: the ELPV data set (PyPI `elpv-dataset`, CC BY-NC-SA 4.0: installed, never copied into this
  repository): 2,624 electroluminescence images of solar cells, 300x300 px grayscale, graded by experts
  as defective with probability 0, 1/3, 2/3 or 1 (functional, defect_p33, defect_p67, defective:
  1,508 / 295 / 106 / 715), a stratified 75/25 split (1,968 / 656). Far from ImageNet (no objects,
  grayscale texture, the deciding crack often a few pixels wide) and imbalanced 14:1.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from fashion_mnist import CLASSES as FMNIST_CLASSES  # a sibling script
from fashion_mnist import read_idx
from PIL import Image

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLIPART = Path("/usr/share/openclipart/png")
CLIPART_CLASSES = ["animals", "buildings", "food", "people", "plants", "tools", "transportation"]
CLIPART_SYMBOLS = ("people/smilies", "transportation/roadsigns", "transportation/aiga-symbols")
SEED = 0
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb limit, which imgtune keeps


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _fmnist_choice(per_class: dict[str, int]) -> dict[str, dict[str, list[int]]]:
    """Indices of the official images each split takes, per class: 500 train and 200 test per class
    drawn once with the suite's seed, then the first n of each class's 500 for a thinned train split."""
    rng = np.random.default_rng(SEED)
    out: dict[str, dict[str, list[int]]] = {"train": {}, "test": {}}
    for split, prefix, n in (("train", "train", 500), ("test", "t10k", 200)):
        labels = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
        for c, name in enumerate(FMNIST_CLASSES):
            idx = rng.choice(np.flatnonzero(labels == c), n, replace=False)
            out[split][name] = idx[:per_class[name]].tolist() if split == "train" else idx.tolist()
    return out


def fashion_mnist(root: Path, long_tail: bool = False) -> None:
    if not FMNIST.exists():
        sys.exit(f"{FMNIST} not found: apt-get install dataset-fashion-mnist")
    k = len(FMNIST_CLASSES)
    # long tail: n_c = 500 * (10 / 500) ** (c / (k - 1)): 500, 324, 209, ..., 15, 10
    per_class = {name: round(500 * (10 / 500) ** (c / (k - 1))) if long_tail else 500
                 for c, name in enumerate(FMNIST_CLASSES)}
    chosen = _fmnist_choice(per_class)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")
        for name, idx in chosen[split].items():
            for i in idx:
                _save(Image.fromarray(images[i], "L"), root / split / name / f"{prefix}_{i:05d}.png")


def _variant_key(path: Path) -> str:
    """Numbered and black-and-white variants of one drawing share a key: `fall_leaf_01`, `fall_leaf_02`
    and `crawfish1_bw_ganson`, `crawfish1_ganson` each become one."""
    stem = path.stem.lower()
    stem = re.sub(r"(_bw)(?=_|$)", "", stem)
    stem = re.sub(r"[_-]?\d+$", "", stem)
    return re.sub(r"_+$", "", stem)


def _on_white(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def clipart_files() -> list[tuple[Path, str]]:
    """(drawing, category) of the suite's clip art: its categories without the symbol folders, the
    drawings imgtune (and Pillow) refuse as bombs, and files found in two categories; sorted."""
    if not CLIPART.exists():
        sys.exit(f"{CLIPART} not found: apt-get install openclipart-png")
    by_digest: dict[str, set[str]] = defaultdict(set)
    first: dict[str, Path] = {}
    for c in CLIPART_CLASSES:
        for p in sorted((CLIPART / c).rglob("*.png")):
            if p.relative_to(CLIPART).as_posix().startswith(CLIPART_SYMBOLS):
                continue
            with warnings.catch_warnings():  # the header only: a bomb is left out, not decoded
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(p) as img:
                    if img.width * img.height > MAX_PIXELS:
                        continue
            d = hashlib.sha256(p.read_bytes()).hexdigest()
            by_digest[d].add(c)
            first.setdefault(d, p)
    return sorted((first[d], next(iter(cs))) for d, cs in by_digest.items() if len(cs) == 1)


def clipart(root: Path) -> None:
    from sklearn.model_selection import StratifiedGroupKFold

    files = clipart_files()
    labels = np.array([CLIPART_CLASSES.index(c) for _, c in files])
    groups = np.array([f"{c}/{_variant_key(p)}" for p, c in files])
    folds = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=SEED)
    _, test = next(folds.split(np.zeros(len(files)), labels, groups))
    test = set(test.tolist())
    for i, (p, c) in enumerate(files):
        split = "test" if i in test else "train"
        _save(_on_white(p), root / split / c / p.name)


def digits(root: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    idx = np.arange(len(images))
    train, test = train_test_split(idx, test_size=0.25, stratify=d.target, random_state=SEED)
    for split, ids in (("train", train), ("test", test)):
        for i in ids:
            _save(Image.fromarray(images[i], "L"), root / split / str(d.target[i]) / f"digit_{i:04d}.png")


ELPV_CLASSES = {"0.0": "functional", "0.3333333333333333": "defect_p33", "0.6666666666666666": "defect_p67",
                "1.0": "defective"}


def elpv(root: Path) -> None:
    from sklearn.model_selection import train_test_split

    try:
        import elpv_dataset
    except ImportError:
        sys.exit("the elpv set needs its package: pip install elpv-dataset==1.0.0.post1")
    data = Path(elpv_dataset.__file__).parent / "data"
    rows = [line.split() for line in (data / "labels.csv").read_text().splitlines() if line.strip()]
    labels = [ELPV_CLASSES[r[1]] for r in rows]
    train, test = train_test_split(np.arange(len(rows)), test_size=0.25, stratify=labels, random_state=SEED)
    for split, ids in (("train", train), ("test", test)):
        for i in ids:
            src = data / rows[i][0]
            dst = root / split / labels[i] / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


def fashion_mnist_300px(root: Path) -> None:
    """The wall-time check's data, not part of the accuracy suite: 2,000 images of 300x300 px (JPEG,
    quality 90), Fashion-MNIST scaled up, 160 training and 40 test images per class."""
    chosen = _fmnist_choice({name: 160 for name in FMNIST_CLASSES})
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")
        for name, idx in chosen[split].items():
            for i in idx[:160 if split == "train" else 40]:
                path = root / split / name / f"{prefix}_{i:05d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], "L").resize((300, 300), Image.BICUBIC).convert("RGB").save(path, quality=90)


SETS = {"fashion-mnist": fashion_mnist, "fashion-mnist-lt": lambda r: fashion_mnist(r, long_tail=True),
        "clipart": clipart, "digits": digits, "elpv": elpv}
TIMING_SETS = {"fashion-mnist-300px": fashion_mnist_300px}


def prepare(name: str, base: Path) -> Path:
    """DATA/{train,test}/<class>/ for the set `name`, written once under `base`."""
    root = base / name
    marker = root / "COMPLETE"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    {**SETS, **TIMING_SETS}[name](root)
    marker.write_text("complete\n")
    return root


def counts(root: Path) -> dict[str, dict[str, int]]:
    return {split: {c.name: sum(1 for _ in c.iterdir()) for c in sorted((root / split).iterdir())}
            for split in ("train", "test")}


if __name__ == "__main__":
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/data")
    for name in SETS:
        r = prepare(name, base)
        c = counts(r)
        tr = c["train"]
        print(f"{name}: train {sum(tr.values())} ({max(tr.values())}:{min(tr.values())}), "
              f"test {sum(c['test'].values())}; {tr}")
