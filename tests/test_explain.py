"""Grad-CAM: maps of the right shape and range for any backbone, that peak on the object a class is about,
and where they are shown: predict --explain, serve ?explain=1, the report's misclassified gallery."""

import base64
import dataclasses
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from imgtune.cli import main
from imgtune.config import HeadConfig
from imgtune.errors import ConfigError
from imgtune.infer.explain import grad_cam, overlay, side_by_side, unique_names
from imgtune.model.backbones import architecture
from imgtune.model.heads import Classifier, make_head


def _classifier(name: str, n_classes: int = 3) -> Classifier:
    body = architecture(name)  # random weights: no download, any timm architecture
    return Classifier(body, make_head(HeadConfig(), body.num_features, n_classes)).eval()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_maps_have_the_input_size_and_lie_in_0_1(name):
    torch.manual_seed(0)
    model = _classifier(name)
    x = torch.randn(3, 3, 64, 96)  # not square: rows and columns must not be swapped
    with torch.inference_mode():  # a caller in inference mode still gets its maps
        cams = grad_cam(model, x)
    assert cams.shape == (3, 64, 96) and cams.dtype == np.float32
    assert cams.min() >= 0 and np.all((cams.max(axis=(1, 2)) == 1) | (cams.max(axis=(1, 2)) == 0))
    assert grad_cam(model, x, [0, 1, 2]).shape == (3, 64, 96) and grad_cam(model, x, 2).shape == (3, 64, 96)
    model.train()
    grad_cam(model, x[:1])
    assert model.training  # the model's mode is as it was


def test_a_map_without_positive_evidence_stays_zero():
    model = _classifier("resnet18")
    with torch.no_grad():
        for p in model.head.parameters():
            p.zero_()
    cams = grad_cam(model, torch.randn(2, 3, 64, 64))
    assert np.all(cams == 0)  # not NaN from 0 / 0


def test_overlay_and_side_by_side_are_images_of_the_map_size():
    cam = np.zeros((32, 48), np.float32)
    cam[:, 24:] = 1
    out = overlay(Image.new("RGB", (100, 60), "grey"), cam)
    assert out.size == (48, 32) and out.mode == "RGB"
    left, right = np.asarray(out)[16, 4], np.asarray(out)[16, 40]
    assert left[2] > left[0] and right[0] > right[2]  # blue where nothing, red where most
    pair = side_by_side(Image.new("RGB", (32, 32)), cam[:, :32], cam[:, :32], "cat", "dog", panel=50)
    assert pair.size[0] > 100 and pair.size[1] > 50


def _planted(rng, size: int, side: int, with_object: bool):
    """Noise, with (or without) a bright square of `side` px at a random place -> (image, box or None)."""
    img = Image.fromarray(rng.integers(0, 60, (size, size, 3), dtype=np.uint8))
    if not with_object:
        return img, None
    x, y = (int(v) for v in rng.integers(0, size - side, 2))
    ImageDraw.Draw(img).rectangle([x, y, x + side - 1, y + side - 1], fill=(255, 210, 0))
    return img, (x, y, x + side, y + side)


def test_the_map_peaks_on_the_planted_object():
    """A head trained on the pretrained backbone's pooled features to tell a square on noise from noise:
    its "square" map peaks on the square, or within one feature cell of it, for nearly every new image,
    and far less often on the square of another image (so the tolerance is not what makes it pass)."""
    from imgtune.data.transforms import eval_transform
    from imgtune.model.backbones import create_backbone

    size, side = 160, 24  # a 5 x 5 feature map of 32 px cells
    b = create_backbone(image_size=size)
    tf = eval_transform(b.data_config)
    rng = np.random.default_rng(0)
    train = [_planted(rng, size, side, i % 2 == 0) for i in range(24)]
    x = torch.stack([tf(im) for im, _ in train])
    y = torch.tensor([0 if box else 1 for _, box in train])
    with torch.no_grad():
        features = b.model(x)
    torch.manual_seed(0)
    head = make_head(HeadConfig(), b.num_features, 2)
    opt = torch.optim.Adam(head.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(200):  # the head-only stage, in miniature: a linear head on the pooled features
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(features), y).backward()
        opt.step()
    model = Classifier(b.model, head).eval()
    tests = [_planted(rng, size, side, True) for _ in range(20)]
    xt = torch.stack([tf(im) for im, _ in tests])
    with torch.no_grad():
        assert (model(xt).argmax(1) == 0).all()
        cell = size / b.model.forward_features(xt[:1]).shape[-1]
    cams = grad_cam(model, xt)  # the predicted class: "square"
    boxes = [box for _, box in tests]

    def near(cam, box) -> bool:
        r, c = np.unravel_index(cam.argmax(), cam.shape)
        x0, y0, x1, y1 = box
        return max(x0 - c, 0, c - (x1 - 1), y0 - r, 0, r - (y1 - 1)) <= cell

    on_own = sum(near(c, box) for c, box in zip(cams, boxes))
    on_other = sum(near(c, box) for c, box in zip(cams, boxes[1:] + boxes[:1]))
    assert on_own >= 17 and on_other <= on_own - 8, (on_own, on_other)


def test_unique_names_keep_stems_and_number_repeats():
    assert unique_names(["a/x.jpg", "b/x.png", "c/X.jpg", "d/x-2.jpg", "y.jpeg"]) == \
        ["x.png", "x-2.png", "X-3.png", "x-2-2.png", "y.png"]


def test_predict_explain_writes_one_overlay_per_image(trained_run, tmp_path, capsys):
    run, data, _ = trained_run
    files = sorted((data / "circle").iterdir())[:2]
    for sub, f in zip("ab", files):  # the same stem in two folders
        (tmp_path / sub).mkdir()
        shutil.copy(f, tmp_path / sub / "same.png")
    other = min((data / "square").iterdir())
    out = tmp_path / "maps"
    assert main(["predict", str(run), str(tmp_path / "a"), str(tmp_path / "b"), str(other),
                 "--explain", str(out)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 4  # the CSV is still written: header + 3 rows
    assert "Wrote 3 Grad-CAM overlays" in captured.err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["same.png", "same-2.png", other.stem + ".png"])  # no temporary files left
    size = json.loads((run / "config.json").read_text())["data_config"]["image_size"]
    for name in names:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size == (size, size) and im.mode == "RGB"


def test_explain_with_an_onnx_runtime_is_one_line_before_any_work(trained_run, tmp_path, capsys):
    run, data, _ = trained_run
    out = tmp_path / "maps"
    image = str(min((data / "circle").iterdir()))
    for runtime in ("onnx", "onnx-int8"):  # refused before the (here absent) ONNX file is looked for
        assert main(["predict", str(run), image, "--runtime", runtime, "--explain", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no gradients" in err[0] and "--runtime torch" in err[0]
    assert not out.exists()


def test_explaining_an_onnx_model_from_python_is_a_clear_error(trained_run):
    from imgtune.infer.explain import overlays
    from imgtune.runs.trained import load_run

    onnx_like = dataclasses.replace(load_run(trained_run[0], device="cpu"), runtime="onnx")
    with pytest.raises(ConfigError, match="no gradients"):
        overlays(onnx_like, [Image.new("RGB", (32, 32))])


def _decoded_png(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert im.format == "PNG"
    im.load()
    return im


def test_serve_explain_adds_a_png_overlay_to_each_answer(trained_run):
    from test_serve import _png, _request, _start_server

    run, data, _ = trained_run
    size = json.loads((run / "config.json").read_text())["data_config"]["image_size"]
    files = [(f.name, f.read_bytes()) for f in sorted((data / "triangle").iterdir())[:2]]
    proc, url = _start_server(run)
    try:
        status, body = _request(url + "/predict?explain=1", files)
        assert status == 200 and len(body["predictions"]) == 2
        for p in body["predictions"]:
            assert _decoded_png(p["explain"]).size == (size, size)
        status, body = _request(url + "/predict", files[:1])
        assert status == 200 and "explain" not in body["predictions"][0]
        status, body = _request(url + "/predict?explain=perhaps", files[:1])
        assert status == 422 and "explain=0 or explain=1" in body["error"]
        status, body = _request(url + "/openapi.json")
        params = body["paths"]["/predict"]["post"]["parameters"]
        assert [p["name"] for p in params] == ["explain"] and "Grad-CAM" in params[0]["description"]
        status, _ = _request(url + "/predict?explain=1", [("x.png", _png(Image.new("RGB", (8, 8))))])
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_serve_explain_on_an_onnx_runtime_is_a_400(trained_run):
    """The refusal comes before any upload is read, so the app's own endpoint shows it without ONNX."""
    from fastapi import HTTPException

    from imgtune.deploy.serve import create_app
    from imgtune.runs.trained import load_run

    app = create_app(dataclasses.replace(load_run(trained_run[0], device="cpu"), runtime="onnx"))
    endpoint = next(r.endpoint for r in app.routes if getattr(r, "path", "") == "/predict")
    with pytest.raises(HTTPException) as e:
        endpoint(file=[], explain=True)
    assert e.value.status_code == 400 and "--runtime torch" in e.value.detail["error"]


def test_report_shows_true_and_predicted_maps_of_misclassified_images(trained_run, tmp_path):
    """Evaluated on a copy of its data with two classes' folders swapped, nearly every image is wrong:
    each one the gallery shows carries its two maps, side by side, inlined as PNG."""
    run, data, _ = trained_run
    swapped = tmp_path / "swapped"
    for src, dst in (("circle", "square"), ("square", "circle"), ("triangle", "triangle")):
        shutil.copytree(data / src, swapped / dst)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), str(swapped), "--json", str(out), "--quiet"]) == 0
    wrong = json.loads(out.read_text())["misclassified"]
    assert wrong and not any("explain" in w for w in wrong)  # the pictures go to the page, not the JSON
    html = (tmp_path / "eval.html").read_text()
    maps = re.findall(r'<img[^>]*alt="Grad-CAM maps of ([^"]*)"[^>]*src="data:image/png;base64,([^"]*)"', html)
    assert [p for p, _ in maps] == [w["path"] for w in wrong]
    pair = _decoded_png(maps[0][1])
    assert pair.width > 2 * pair.height - 40  # two panels side by side, a caption strip above them
    assert "true class (left)" in html
