"""Small generated images: each class is a shape of its own colour on a noisy background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = {"circle": (220, 40, 40), "square": (40, 180, 60), "triangle": (50, 80, 220)}


def make_image(cls: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    bg = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    c = COLOURS[cls]
    o = int(rng.integers(2, 8))
    if cls == "circle":
        d.ellipse([o, o, size - o, size - o], fill=c)
    elif cls == "square":
        d.rectangle([o, o, size - o, size - o], fill=c)
    else:
        d.polygon([(size // 2, o), (o, size - o), (size - o, size - o)], fill=c)
    return img


def write_class_folders(root: Path, per_class: int, seed: int = 0, classes=tuple(COLOURS)) -> Path:
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = "JPEG" if i % 2 else "PNG"
            make_image(cls, rng).save(root / cls / f"{cls}_{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}", fmt)
    return root


@pytest.fixture
def photos(tmp_path) -> Path:
    """photos/<class>/*: 3 classes x 14 images, one corrupt file and one text file among them."""
    root = write_class_folders(tmp_path / "photos", 14)
    (root / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "square" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session", autouse=True)
def shared_feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the whole session, in every process the tests start, and never the user's
    ~/.cache. Sharing is safe: an entry is keyed by the image's content, the transform and the backbone,
    so a test reads exactly what it would have computed. Tests about the cache itself pass their own."""
    cache = tmp_path_factory.mktemp("feature-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGTUNE_CACHE", str(cache))
        yield cache


@pytest.fixture
def cache_dir(shared_feature_cache) -> Path:
    return shared_feature_cache


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """One trained run shared by the read-only tests: (run folder, data folder, cache)."""
    from imgtune.cli import main

    base = tmp_path_factory.mktemp("trained")
    data = write_class_folders(base / "photos", 14, seed=1)
    run, cache = base / "run", base / "cache"  # its own cache: tests read what it holds
    assert main(["train", str(data), "--out", str(run), "--image-size", "32", "--epochs", "1",
                 "--cache-dir", str(cache), "--quiet"]) == 0
    return run, data, cache
