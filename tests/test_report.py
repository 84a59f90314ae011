"""report.html: written by train and evaluate, self-contained, with every section a user looks for."""

import base64
import io
import json
import re

from PIL import Image

from imgtune.cli import main

SECTIONS = ("Run", "Training", "Per class", "Confusion matrix", "Most confused pairs", "Misclassified images",
            "Calibration")


def _inlined_images(html: str) -> list[Image.Image]:
    sources = re.findall(r'<img[^>]*\bsrc="([^"]*)"', html)
    images = []
    for src in sources:
        assert src.startswith("data:image/"), src[:60]  # nothing fetched from disk or network
        images.append(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
        images[-1].load()
    return images


def test_train_writes_a_self_contained_report(trained_run):
    run, _, _ = trained_run
    html = (run / "report.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    assert not re.search(r'(src|href)="(https?:|file:|//)', html)
    images = _inlined_images(html)
    assert len(images) >= 5 and all(im.width > 100 for im in images[:5])  # curves, bars, 2 matrices, diagram
    for cls in ("circle", "square", "triangle"):
        assert cls in html
    config = json.loads((run / "config.json").read_text())
    assert f"{config['temperature']:.3f}" in html


def test_evaluate_with_tta_writes_its_report_beside_the_metrics(trained_run, tmp_path, capsys):
    run, data, _ = trained_run
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), str(data), "--json", str(out), "--tta", "--quiet"]) == 0
    metrics = json.loads(out.read_text())
    html = (tmp_path / "eval.html").read_text()
    assert "test-time augmentation" in html and "tta" in metrics
    assert f"{metrics['tta']['gain'] * 100:+.2f} pts" in html
    assert "Test-time augmentation: accuracy" in capsys.readouterr().out
    _inlined_images(html)


def test_evaluate_keeps_trainings_record_and_writes_its_own_beside_it(trained_run, tmp_path, capsys):
    """evaluate once overwrote metrics.json and report.html, losing training's baselines, and serve's
    /metadata then showed the last evaluation: training's record is kept byte for byte, the evaluation
    goes to RUN/evaluations/<data>.json + .html, whose page shows training's record beside it."""
    import shutil

    run, data, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {name: (copy / name).read_bytes() for name in ("metrics.json", "report.html")}
    assert main(["evaluate", str(copy), str(data), "--quiet"]) == 0
    assert {name: (copy / name).read_bytes() for name in before} == before
    name = f"{data.parent.name}-{data.name}"
    evaluation = json.loads((copy / "evaluations" / f"{name}.json").read_text())
    assert evaluation["source"] and evaluation["n_images"] > 0
    html = (copy / "evaluations" / f"{name}.html").read_text()
    assert "This evaluation beside training&#x27;s record" in html or "This evaluation beside training's record" in html
    assert f"{json.loads(before['metrics.json'])['accuracy']:.4f}" in html
    assert f"Metrics: {copy / 'evaluations' / (name + '.json')}" in capsys.readouterr().out
