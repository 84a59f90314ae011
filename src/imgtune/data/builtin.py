"""Data sets that ship inside installed packages, written out once as an image folder so the main job
can run with no download: `builtin:digits` is scikit-learn's 1,797 handwritten digits (8x8, 10 classes)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import DataError

PREFIX = "builtin:"


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)  # 0..16 ink levels -> 0..255
    return images, d.target, [str(c) for c in d.target_names]


BUILTIN = {"digits": _digits}


def resolve(source: str, cache_dir: Path) -> str:
    """`builtin:NAME` -> a folder of class folders under the cache; anything else is returned as is."""
    if not str(source).startswith(PREFIX):
        return str(source)
    name = str(source)[len(PREFIX):]
    if name not in BUILTIN:
        raise DataError(f"Unknown built-in data set {name!r}: expected one of "
                        f"{', '.join(PREFIX + n for n in BUILTIN)}.")
    root = Path(cache_dir) / "datasets" / name
    if not (root / "COMPLETE").exists():
        images, targets, classes = BUILTIN[name]()
        for i, (img, y) in enumerate(zip(images, targets)):
            buf = io.BytesIO()
            Image.fromarray(img, "L").save(buf, "PNG")
            write_bytes_atomic(root / classes[y] / f"{name}_{i:05d}.png", buf.getvalue())
        write_text_atomic(root / "COMPLETE", f"{len(images)} images\n")
    return str(root)
