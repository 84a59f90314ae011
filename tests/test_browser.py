"""The pages as a person sees them: rendered by headless Chromium, every image loaded, nothing blank.

Needs Debian's `chromium` (.ci/run installs it); skipped with the reason where it is absent, except
under IMGTUNE_REQUIRE_BROWSER=1 (as .ci/run sets), where its absence fails the run."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from imgtune.cli import main

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)
if CHROMIUM is None and os.environ.get("IMGTUNE_REQUIRE_BROWSER"):  # CI sets it: there a skip would hide a failure
    raise RuntimeError("IMGTUNE_REQUIRE_BROWSER is set but Chromium is not installed (apt-get install chromium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")

# Appended to a copy of the page: once everything has loaded, the title says how many images decoded.
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.title = "images " + ok + "/" + imgs.length;
});</script>"""


def _chromium(*args, timeout=120) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout


def _check_page(page, tmp_path, min_images: int):
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium("--dump-dom", probed.as_uri())
    loaded, total = map(int, re.search(r"<title>images (\d+)/(\d+)</title>", dom).groups())
    assert total >= min_images and loaded == total

    shot = tmp_path / f"{page.stem}.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    ink = (np.abs(pixels - np.median(pixels)) > 40).mean()  # share of the page that differs from background
    assert ink > 0.03 and pixels.std() > 10
    if os.environ.get("IMGTUNE_SCREENSHOTS") == "1":  # to look at, and for the docs
        docs = Path(__file__).resolve().parents[1] / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(shot, docs / f"page-{page.stem}.png")


def test_report_renders_in_a_browser(trained_run, tmp_path):
    run, _, _ = trained_run
    _check_page(run / "report.html", tmp_path, min_images=5)


def test_inspect_page_renders_in_a_browser(trained_run, tmp_path):
    run, data, _ = trained_run
    copy = tmp_path / "photos"
    shutil.copytree(data, copy)
    shutil.copy(copy / "circle" / "circle_000.png", copy / "square" / "copied.png")  # thumbnails to show
    assert main(["inspect", str(copy), "--run", str(run), "--out", str(tmp_path), "--quiet"]) == 0
    _check_page(tmp_path / "inspect.html", tmp_path, min_images=3)


def test_suggest_page_renders_in_a_browser(trained_run, tmp_path):
    run, data, cache = trained_run
    pool = tmp_path / "unlabelled"
    pool.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.blend(make_image("circle", rng), make_image("triangle", rng), 0.5).save(pool / f"blend_{i}.png")
    shutil.copy(next((data / "square").glob("*.png")), pool / "copy.png")  # shown among the left-out copies
    out = tmp_path / "next.csv"
    assert main(["suggest", str(run), str(pool), "-n", "3", "--output", str(out), "--cache-dir", str(cache),
                 "--quiet"]) == 0
    _check_page(out.with_suffix(".html"), tmp_path, min_images=4)
