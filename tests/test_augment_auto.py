"""`--augment auto` (train/augment.py): quarter turns and vertical flips where the classes do not depend
on which way up an image is, and not where they do; the choice and its reason in config.json."""

import json

import numpy as np
from conftest import write_class_folders
from PIL import Image, ImageDraw

from imgtune import ImageClassifier


def _arrows(root, per_class: int, seed: int = 0):
    """root/<up|down|left|right>/*.png: one white wedge on noise, pointing its class's way. Turned a
    quarter, an up arrow is a right one: the classes ARE the orientation."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("up", "right", "down", "left")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = Image.fromarray(rng.integers(0, 60, (40, 40, 3), dtype=np.uint8))
            o = int(rng.integers(3, 8))
            ImageDraw.Draw(img).polygon([(20, o), (o, 40 - o), (40 - o, 40 - o)], fill=(230, 230, 230))
            img.rotate(-90 * k).save(root / name / f"{name}_{i:03d}.png")
    return root


def _chosen(data, tmp_path, name):
    clf = ImageClassifier(image_size=32, epochs=1, cache_dir=str(tmp_path / "cache"), quiet=True, device="cpu")
    clf.fit(data, out=tmp_path / "runs" / name)
    config = json.loads((tmp_path / "runs" / name / "config.json").read_text())
    assert config["recipe"]["finetune"]["augment"] == config["augment"]["chosen"]  # what fine-tuning used
    return config["augment"]


def test_auto_turns_images_whose_classes_have_no_up_and_not_arrows(tmp_path):
    shapes = _chosen(write_class_folders(tmp_path / "shapes", 24, seed=2), tmp_path, "shapes")
    assert shapes["chosen"] == "rotations", shapes["why"]
    assert "do not depend on orientation" in shapes["why"]
    arrows = _chosen(_arrows(tmp_path / "arrows", 24), tmp_path, "arrows")
    assert arrows["chosen"] == "light", arrows["why"]
    assert "depend on orientation" in arrows["why"] and "do not" not in arrows["why"]
