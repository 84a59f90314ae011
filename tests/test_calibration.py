"""Calibration and test-time augmentation: the probabilities a user reads mean what they say."""

import json

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image

from imgtune import ImageClassifier, RunFolderError
from imgtune.infer.calibration import fit_temperature, softmax
from imgtune.metrics import expected_calibration_error


def _logits(n: int, scale: float, seed: int):
    """A 5-class model that is right about 70% of the time, its logits multiplied by `scale`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    z = rng.normal(size=(n, 5))
    z[np.arange(n), y] += 1.5
    return z * scale, y


@pytest.mark.parametrize("scale", [8.0, 0.25])  # over-confident, under-confident
def test_temperature_lowers_the_ece_of_a_miscalibrated_model(scale):
    val_z, val_y = _logits(3000, scale, seed=0)
    test_z, test_y = _logits(3000, scale, seed=1)
    t = fit_temperature(val_z, val_y)
    assert (t > 1) if scale > 1 else (t < 1)
    before = expected_calibration_error(test_y, softmax(test_z))
    after = expected_calibration_error(test_y, softmax(test_z, t))
    assert before > 0.1 and after < before / 3
    assert np.array_equal(softmax(test_z, t).argmax(1), test_z.argmax(1))  # predictions are unchanged


def _by_hand(image, cfg, size: int, flip: bool = False):
    """The eval view written out with torchvision's functional ops (not imgtune's transform): shorter side
    to `size` (bicubic, antialiased), centre crop to the image size, optional flip, scale and normalise."""
    import torchvision.transforms.v2.functional as TF

    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    x = TF.center_crop(TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True),
                       [cfg.image_size, cfg.image_size])
    if flip:
        x = x.flip(-1)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    return (x.float() / 255 - mean) / std


def _calibrated(z: np.ndarray, t: float) -> np.ndarray:
    e = np.exp((z - z.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


def test_trained_run_is_calibrated_and_predict_uses_the_temperature(trained_run):
    run, _, _ = trained_run
    config = json.loads((run / "config.json").read_text())
    t = config["temperature"]
    assert t > 0 and config["calibration"]["temperature"] == t
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"ece", "ece_uncalibrated", "reliability", "misclassified"} <= set(metrics)

    clf = ImageClassifier.load(run, quiet=True, device="cpu")
    image = make_image("square", np.random.default_rng(3))
    with torch.inference_mode():
        z = clf.model_(_by_hand(image, clf.data_config_, clf.data_config_.image_size)[None]).numpy()
    expected = _calibrated(z, t)[0]
    got = clf.predict(image, top_k=3)[0]
    assert got["probability"] == pytest.approx(expected.max(), abs=1e-4)
    assert got["label"] == clf.classes_[int(expected.argmax())]
    assert [p for _, p in got["top_k"]] == pytest.approx(sorted(expected, reverse=True), abs=1e-4)


def test_tta_averages_the_four_views_and_reports_its_gain(trained_run):
    """TTA's probability is the mean of the calibrated probabilities of the four views (centre, flipped,
    zoomed 1.15x, zoomed and flipped), each built here by hand."""
    run, data, _ = trained_run
    clf = ImageClassifier.load(run, quiet=True, device="cpu")
    plain = clf.evaluate(data)
    tta = clf.evaluate(data, tta=True)
    assert "tta" not in plain
    assert tta["tta"]["accuracy_without"] == pytest.approx(plain["accuracy"])
    assert tta["tta"]["gain"] == pytest.approx(tta["accuracy"] - plain["accuracy"])
    cfg, s = clf.data_config_, clf.data_config_.image_size
    rng = np.random.default_rng(4)  # half circle, half square: a prediction that is not certain
    image = Image.blend(make_image("circle", rng), make_image("square", rng), 0.5)
    views = torch.stack([_by_hand(image, cfg, size, flip) for size in (s, round(s * 1.15)) for flip in (False, True)])
    with torch.inference_mode():
        p = _calibrated(clf.model_(views).numpy(), clf.temperature_).mean(0)
    one = clf.predict(image, tta=True, top_k=3)[0]
    assert one["label"] == clf.classes_[int(p.argmax())] and one["probability"] == pytest.approx(p.max(), abs=1e-4)
    single = clf.predict(image, top_k=3)[0]
    assert abs(single["probability"] - one["probability"]) > 1e-6  # the views were not all the plain one


@pytest.mark.parametrize("value", [-1, 0, "hot", None])
def test_a_tampered_temperature_is_refused(trained_run, tmp_path, value):
    run, _, _ = trained_run
    dst = tmp_path / "run"
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    config = json.loads((run / "config.json").read_text())
    config["temperature"] = value
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match="temperature"):
        ImageClassifier.load(dst, quiet=True)


def test_held_out_figures_of_a_kept_head_come_from_out_of_fold_predictions(tmp_path):
    """A head kept alone is refitted on train+val, so its validation predictions are in-sample (the
    rejection table once read "accuracy of the rest 1.0000" at every threshold, test accuracy 0.927):
    the rejection table and the ECE come from its out-of-fold predictions, and the report says so and
    says what the temperature was fitted on, as the run recorded it."""
    import shutil

    from conftest import write_class_folders

    data = write_class_folders(tmp_path / "photos", 16, seed=3)
    for i, (src, dst) in enumerate([("circle", "square"), ("square", "triangle"), ("triangle", "circle")] * 2):
        f = sorted((data / src).glob(f"{src}_00{i}.*"))[0]
        shutil.move(f, data / dst / f"moved_{f.name}")  # mislabelled: out of fold, these are errors
    run = tmp_path / "run"
    ImageClassifier(image_size=32, epochs=0, quiet=True, device="cpu").fit(data, out=run)
    config = json.loads((run / "config.json").read_text())
    cal = config["calibration"]
    n = config["head_selection"]["images"]
    assert cal["held_out"] == f"out-of-fold predictions of {n:,} train+val images"
    assert cal["val_rejection"][0]["accuracy_kept"] < 1.0  # the mislabelled images, confidently "wrong"
    report = (run / "report.html").read_text()
    assert f"On out-of-fold predictions of {n:,} train+val images:" in report
    assert f"fitted on {cal['fitted_on']}" in report and "fitted on the validation split" not in report
