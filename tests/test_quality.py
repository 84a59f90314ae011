"""Image-quality checks of `imgtune inspect`: blurry, very dark, very light, low-information images and odd
aspect ratios, each flagged with its measure and threshold, and ordinary images left alone."""

import os

import numpy as np
import pytest
from conftest import COLOURS, make_image, write_class_folders
from PIL import Image, ImageDraw, ImageFilter

from imgtune.inspect_data import audit
from imgtune.data import quality
from imgtune.report.inspect_page import build_inspect_page, summary_lines


def photo_like(rng: np.random.Generator, w: int = 160, h: int = 160) -> Image.Image:
    """Smooth colour variation at several scales with a few hard-edged blocks: texture and edges, as in
    a photo."""
    acc = np.zeros((h, w, 3))
    for cell in (4, 8, 16, 32):
        small = rng.integers(0, 256, (max(1, h // cell), max(1, w // cell), 3), dtype=np.uint8)
        acc += np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float64)
    img = Image.fromarray(np.clip(acc / 4, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        d.rectangle([x, y, x + int(rng.integers(8, 40)), y + int(rng.integers(8, 40))],
                    fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def planted(rng: np.random.Generator) -> dict[str, Image.Image]:
    """One image per rule, each bad in that one way only."""
    photo = photo_like(rng)
    return {"blurry": photo.filter(ImageFilter.GaussianBlur(6)),
            "dark": Image.eval(photo, lambda v: v * 30 // 255),  # 0..30 of 255
            "light": Image.eval(photo, lambda v: 235 + v * 20 // 255),  # 235..255
            "low_information": Image.new("RGB", (100, 80), (120, 60, 200)),
            "odd_aspect_ratio": photo_like(rng, 300, 50)}  # 6:1


@pytest.mark.parametrize("kind", ["blurry", "dark", "light", "low_information", "odd_aspect_ratio"])
def test_each_planted_image_is_flagged_for_its_problem_only(kind):
    numbers, found = quality.check(planted(np.random.default_rng(0))[kind])
    assert [k for k, _ in found] == [kind]
    rule = next(r for r in quality.RULES if r.kind == kind)
    reason = found[0][1]
    assert reason.startswith(rule.label + ":") and f"{rule.threshold:g}" in reason.replace(",", "")
    assert rule.fires(numbers[rule.measure])


def test_ordinary_images_are_not_flagged():
    rng = np.random.default_rng(1)
    ordinary = [make_image(c, rng) for c in COLOURS for _ in range(5)]  # the shapes the other tests train on
    ordinary += [photo_like(rng), photo_like(rng, 640, 480), photo_like(rng, 200, 50)]  # 4:1 is not odd
    for img in ordinary:
        numbers, found = quality.check(img)
        assert found == [], (img.size, numbers)


def test_blur_is_judged_alike_at_any_resolution():
    rng = np.random.default_rng(2)
    for side in (96, 768):
        photo = photo_like(rng, side, side)
        sharp = quality.measure(photo)["laplacian_variance"]
        blurred = quality.measure(photo.filter(ImageFilter.GaussianBlur(side * 0.04)))["laplacian_variance"]
        assert blurred < quality.BLURRY_BELOW < sharp, (side, sharp, blurred)


def test_dark_ground_and_white_ground_are_not_dark_or_light():
    """Fashion-MNIST's light object on black, clip art's dark line drawing on white: ordinary images."""
    on_black = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(on_black).rectangle([8, 4, 20, 24], fill=200)
    on_white = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(on_white).ellipse([20, 20, 180, 180], outline="black", width=4)
    for img in (on_black.convert("RGB"), on_white):
        kinds = [k for k, _ in quality.check(img)[1]]
        assert not {"dark", "light", "low_information"} & set(kinds), kinds


def test_a_black_image_is_dark_and_not_also_called_blurry():
    kinds = [k for k, _ in quality.check(Image.new("RGB", (64, 64), (3, 3, 3)))[1]]
    assert "dark" in kinds and "blurry" not in kinds


def _folder_with_planted_images(root):
    write_class_folders(root, 4)
    for kind, img in planted(np.random.default_rng(3)).items():
        img.save(root / "circle" / f"{kind}.png")
    return root


def test_audit_lists_planted_images_under_odd_with_their_measures(tmp_path):
    doc = audit(_folder_with_planted_images(tmp_path / "data"))
    odd = {os.path.basename(r["path"]): r for r in doc["odd"]}
    for kind in ("blurry", "dark", "light", "low_information", "odd_aspect_ratio"):
        entry = odd[f"{kind}.png"]
        assert entry["kinds"] == [kind] and len(entry["reasons"]) == 1
        assert set(entry["measures"]) == {r.measure for r in quality.RULES}
        assert all(isinstance(v, float) for v in entry["measures"].values())
    assert odd["odd_aspect_ratio.png"]["measures"]["aspect_ratio"] == 6.0
    assert not any(name.startswith(tuple(COLOURS)) for name in odd)  # the ordinary images
    rules = {r["kind"]: r for r in doc["quality_rules"]}
    assert set(rules) == {"blurry", "dark", "light", "low_information", "odd_aspect_ratio"}
    assert rules["odd_aspect_ratio"]["threshold"] == quality.ASPECT_LIMIT
    assert rules["dark"]["measure"] == "brightness_p99" and rules["dark"]["flags_when"] == "below"


def test_inspect_page_shows_reasons_measures_and_rules(tmp_path):
    doc = audit(_folder_with_planted_images(tmp_path / "data"))
    html = build_inspect_page(doc)
    assert "blurry: Laplacian variance" in html and "very dark: brightest 1% at" in html
    assert "6.0:1 (over 5:1" in html and "low information: 0.00 bits" in html
    for rule in quality.RULES:  # the rules table: measure, threshold, what it means
        assert rule.measure in html and rule.means.split(" (")[0] in html
    assert "<th>threshold</th>" in html and "<th>what it means</th>" in html
    odd_line = next(line for line in summary_lines(doc) if line.startswith("Odd files"))
    assert odd_line == ("Odd files: 5 (blurry 1, very dark 1, very light 1, low information 1, "
                        "odd aspect ratio 1)")
