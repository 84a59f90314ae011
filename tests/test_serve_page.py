"""`imgtune serve` as a person and as a client generator see it, against a real server on loopback: its
page at GET / driven by headless Chromium (Selenium, Debian's chromium-driver), GET /report, and the
OpenAPI document held to the server's answers by schemathesis (every check).

The browser test needs selenium and chromedriver: skipped with the reason where either is absent, except
under IMGTUNE_REQUIRE_BROWSER=1 (as .ci/run sets), where their absence fails it. IMGTUNE_SCREENSHOTS=1
also copies the page's screenshot to docs/serve-page.png."""

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, make_image, run_watched
from PIL import Image
from test_serve import _png, _request, _start_server

from imgtune import ImageClassifier

REPO = Path(__file__).resolve().parents[1]
SHAPES = [f"{c}.png" for c in COLOURS]

# A file dropped on the page, as a person would drag one there (a test cannot reach the desktop)
DROP = """const [b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
const files = new DataTransfer();
files.items.add(new File([bytes], name, {type: "image/png"}));
document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true,
                                                                     cancelable: true}));"""

# Loaded by schemathesis (SCHEMATHESIS_HOOKS): real images for the parts the document declares `image/*`.
# OpenAPI cannot say "bytes that decode as an image", and the server rightly refuses other bytes (415), so
# without these every schema-valid upload schemathesis makes up would be a false "valid data rejected".
# A list of them, as `file` is an array of parts.
IMAGE_HOOKS = '''
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def image(draw, fmt):
    size = draw(st.tuples(st.integers(1, 96), st.integers(1, 96)))
    colour = draw(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


for media_type, fmt in (("image/png", "PNG"), ("image/jpeg", "JPEG")):
    schemathesis.openapi.media_type(media_type, st.lists(image(fmt), min_size=1, max_size=3))
'''


@pytest.fixture(scope="module")
def page_server(trained_run):
    """`imgtune serve` with --min-confidence at the widest gap between the model's confidences in three
    shapes and a noise image, so that the page has an "unknown" to show -> (URL, {file name: PNG bytes})."""
    run = trained_run[0]
    rng = np.random.default_rng(7)
    images = {name: make_image(name.removesuffix(".png"), rng) for name in SHAPES}
    images["noise.png"] = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    clf = ImageClassifier.load(run, quiet=True)
    p = sorted(clf.predict(image)[0]["probability"] for image in images.values())
    gap, low = max((b - a, a) for a, b in itertools.pairwise(p))
    assert gap > 1e-6, f"the model is as sure of every image: {p}"
    # torch: explain=1 works, and the shared run folder gets no on-demand ONNX export
    proc, url = _start_server(run, "--runtime", "torch", "--top-k", "3", "--min-confidence", repr(low + gap / 2))
    yield url, {name: _png(image) for name, image in images.items()}
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture
def browser():
    """Headless Chromium under Selenium."""
    chromedriver, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        reason = None if chromedriver and chromium else \
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    except ImportError:
        reason = "selenium is not installed (pip install selenium)"
    if reason and os.environ.get("IMGTUNE_REQUIRE_BROWSER"):  # CI sets it: there a skip would hide a failure
        pytest.fail(f"IMGTUNE_REQUIRE_BROWSER is set but {reason}")
    if reason:
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def test_page_shows_labels_and_probabilities_of_picked_and_dropped_images(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, images = page_server
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.png").write_text("not an image")
    browser.get(url + "/")
    assert {a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")} == \
        {f"{url}/report", f"{url}/docs", f"{url}/metadata"}
    browser.find_element(By.ID, "files").send_keys("\n".join(str(tmp_path / n) for n in [*SHAPES, "notes.png"]))
    browser.execute_script(DROP, base64.b64encode(images["noise.png"]).decode(), "noise.png")
    WebDriverWait(browser, 300).until(  # a guard against a hang, not a speed test
        lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result.done, .result.failed")) == len(images) + 1)

    shown = {}
    for card in browser.find_elements(By.CSS_SELECTOR, ".result"):
        text = {cls: [e.text for e in card.find_elements(By.CLASS_NAME, cls)] for cls in ("label", "note", "error")}
        bars = [(b.get_attribute("data-label"), float(b.get_attribute("data-probability")))
                for b in card.find_elements(By.CLASS_NAME, "bar")]
        widths = [f.size["width"] for f in card.find_elements(By.CLASS_NAME, "fill")]
        shown[card.find_element(By.CLASS_NAME, "name").text] = text, bars, widths
    assert shown.keys() == {*images, "notes.png"}
    for name, data in images.items():  # what the page shows is what the API answers
        code, body = _request(url + "/predict", [(name, data)])
        answer, (text, bars, widths) = body["predictions"][0], shown[name]
        assert code == 200 and text["label"] == [answer["label"]] and not text["error"]
        assert bars == [(t["label"], pytest.approx(t["probability"])) for t in answer["top_k"]]
        assert len(widths) == 3 and widths[0] > 0  # the bars are drawn, the most probable one visibly
        assert bool(text["note"]) == (answer["label"] == "unknown")
    unknown = [name for name in images if shown[name][0]["label"] == ["unknown"]]
    assert 0 < len(unknown) < len(images) and all("minimum confidence" in shown[n][0]["note"][0] for n in unknown)
    assert shown["notes.png"][0]["error"] == ["notes.png: not a recognised image format"]

    # self-contained: everything it loaded came from this server (the answers) or from the browser itself
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith((url + "/", "blob:", "data:")) for u in loaded), loaded
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert all("status of 415" in e for e in errors), errors  # only the refused text file

    shot = tmp_path / "serve-page.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("IMGTUNE_SCREENSHOTS") == "1":  # the picture in the docs
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "serve-page.png")


def test_report_is_served_and_a_run_without_one_is_a_404(page_server, trained_run, tmp_path):
    url, _ = page_server
    run = trained_run[0]
    with urllib.request.urlopen(url + "/report", timeout=60) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/html")
        assert r.read() == (run / "report.html").read_bytes()

    from imgtune.deploy.serve import create_app
    from imgtune.runs.trained import load_run

    bare = tmp_path / "run"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("report.html", "checkpoints"))
    app = create_app(load_run(bare))
    status, body = _asgi_get(app, "/report")
    assert status == 404 and b"has no report.html" in body
    status, page = _asgi_get(app, "/")
    assert status == 200 and b'href="docs"' in page and b'href="report"' not in page


def test_report_is_the_one_of_the_model_being_served_even_when_the_run_is_replaced(trained_run, tmp_path):
    from imgtune.deploy.serve import create_app
    from imgtune.runs.trained import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run, ignore=shutil.ignore_patterns("checkpoints"))
    first = (run / "report.html").read_bytes()
    app = create_app(load_run(run))
    (run / "report.html").write_text("<html>another run's report</html>")  # the run folder replaced
    status, body = _asgi_get(app, "/report")
    assert status == 200 and body == first


def test_openapi_document_holds_for_every_answer(page_server, tmp_path):
    """schemathesis with every check and a few examples per operation: the statuses, the answers' schemas
    and content types, which requests are valid, 405s with Allow."""
    pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install schemathesis)")
    url, _ = page_server
    hooks, har = tmp_path / "image_hooks.py", tmp_path / "schemathesis.har"
    hooks.write_text(IMAGE_HOOKS)
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
           "--max-examples", "25", "--seed", "16", "--workers", "1", "--request-timeout", "120",
           "--generation-database", "none", "--no-color", "--report", "har", "--report-har-path", str(har)]
    done = run_watched(cmd, cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)})
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "No issues found" in out, out[-6000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and cases[1] == cases[2] and int(cases[1]) > 50, out[-3000:]
    # and the images were real: some uploads were answered with predictions
    entries = json.loads(har.read_text())["log"]["entries"]
    assert any(e["request"]["url"].startswith(f"{url}/predict") and e["response"]["status"] == 200 for e in entries)


def _asgi_get(app, path: str) -> tuple[int, bytes]:
    """GET `path` from an ASGI app in this process -> (status, body)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
