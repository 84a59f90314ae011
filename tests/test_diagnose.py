"""What to fix next: label errors found out of fold, per-class learning curves, which images to label
next, and the report's "what to do next"."""

import builtins
import csv
import json
import shutil

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from imgtune.cli import main
from imgtune.diagnose import label_errors, learning_curve, next_steps
from imgtune.diagnose.next_images import rank_for_labelling, uncertainty
from imgtune.model.linear import Candidate


def _blobs(n_per_class: int, k: int, d: int = 16, spread: float = 0.4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    y = np.repeat(np.arange(k), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), d)) * spread).astype(np.float32), y


def test_out_of_fold_probabilities_never_come_from_a_head_that_saw_the_image():
    # each image has a feature of its own: a head that saw it can learn its label from that feature alone,
    # a head that did not has nothing to go on but the other images
    n, k = 60, 3
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, n)
    x = np.eye(n, dtype=np.float32) * 5
    seen = label_errors.fit_candidate(x, y, k, Candidate(100.0))
    in_sample = label_errors.softmax(label_errors.logits(x, seen))[np.arange(n), y]
    oof, fold = label_errors.out_of_fold_probabilities(x, y, k, candidate=Candidate(100.0))
    assert in_sample.min() > 0.9  # it memorised every label
    assert oof[np.arange(n), y].max() < 0.6  # out of fold, no image's own feature told its label
    assert len(np.unique(fold)) == label_errors.FOLDS
    for c in range(k):  # folds are stratified
        assert np.ptp(np.bincount(fold[y == c], minlength=label_errors.FOLDS)) <= 1


def test_confident_learning_finds_planted_flips():
    x, y = _blobs(60, 4)
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(y), 12, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1 + rng.integers(0, 3, 12)) % 4
    probs, _ = label_errors.out_of_fold_probabilities(x, noisy, 4, candidate=Candidate(1.0))
    rows, method = label_errors.find_label_issues(probs, noisy)
    assert method == "confident learning"
    found = set(rows) & set(flipped.tolist())
    assert len(found) >= 8 and len(found) >= 0.9 * len(rows)  # most flips, few false alarms
    issues = label_errors.label_issue_rows(probs, noisy, rows, [f"f{i}" for i in range(len(y))], list("abcd"))
    assert [r["score"] for r in issues] == sorted(r["score"] for r in issues)  # least likely label first
    by = {r["path"]: r for r in issues}
    assert all(by[f"f{i}"]["suggested"] == "abcd"[y[i]] for i in found)  # the true class is suggested


def test_without_cleanlab_the_rule_stands_in_and_says_so(monkeypatch):
    real_import = builtins.__import__

    def no_cleanlab(name, *args, **kw):
        if name.startswith("cleanlab"):
            raise ImportError(name)
        return real_import(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_cleanlab)
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.05, 0.95], [0.15, 0.85]])
    rows, method = label_errors.find_label_issues(probs, np.array([0, 1, 0, 0]))
    assert method == "rule" and rows == [2, 3]  # given < 0.2 while the other > 0.6, least likely first


def test_power_law_is_recovered_from_planted_points():
    n = np.array([25.0, 50, 75, 100])
    a, b = learning_curve.fit_power_law(n, 2.0 * n ** -0.5, floor=1e-3)
    assert a == pytest.approx(2.0, rel=1e-6) and b == pytest.approx(0.5, rel=1e-6)
    a, b = learning_curve.fit_power_law(n, np.array([0.1, 0.11, 0.1, 0.105]), floor=1e-3)
    assert b == 0.0 and a == pytest.approx(0.10375)  # a rising error is flat, at its mean level


def test_forecast_names_the_class_that_gains_and_the_flat_one():
    curve = {"train_per_class": [[25, 25], [50, 50], [75, 75], [100, 100]],
             "accuracy": [[1 - 0.8 * 25 ** -0.5, 0.97], [1 - 0.8 * 50 ** -0.5, 0.97], [1 - 0.8 * 75 ** -0.5, 0.97],
                          [1 - 0.8 * 100 ** -0.5, 0.97]],
             "overall": [1 - 0.2 * n ** -0.1 for n in (25, 50, 75, 100)],  # the overall error: exponent 0.1
             "eval_per_class": [100, 100]}
    rows = learning_curve.forecast(curve, ["Shirt", "Bag"], now={"Shirt": 0.62, "Bag": 0.97})
    assert [r["class"] for r in rows] == ["Shirt", "Bag"]
    shirt, bag = rows
    # each class's exponent (0.5, 0) is taken half-way to the overall one (0.1)
    assert shirt["class_exponent"] == pytest.approx(0.5) and shirt["exponent"] == pytest.approx(0.3)
    assert shirt["forecast"] == pytest.approx(1 - 0.38 * 2 ** -0.3) and not shirt["flat"]
    assert bag["exponent"] == pytest.approx(0.05) and bag["flat"]
    assert learning_curve.forecast_line(shirt) == "Shirt: 0.62 now, about 0.69 with twice the images"
    assert learning_curve.forecast_line(bag) == "Bag: flat (0.97 now)"


def test_measured_curve_shows_the_overlapping_classes_gain_most():
    # classes 0 and 1 overlap (more data helps them), class 2 is far away (always right)
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [8.0, 8.0]])
    y = np.repeat(np.arange(3), 200)
    x = np.hstack([centres[y] + rng.normal(size=(600, 2)) * 0.7, rng.normal(size=(600, 30))]).astype(np.float32)
    ye = np.repeat(np.arange(3), 300)
    xe = np.hstack([centres[ye] + rng.normal(size=(900, 2)) * 0.7, rng.normal(size=(900, 30))]).astype(np.float32)
    curve = learning_curve.measure(x, y, xe, ye, 3, candidate=Candidate(1.0))
    assert curve["train_per_class"][0] == [50.0, 50.0, 50.0] and curve["train_per_class"][-1] == [200.0] * 3
    rows = {r["class"]: r for r in learning_curve.forecast(curve, ["a", "b", "far"])}
    assert rows["far"]["flat"] and rows["far"]["now"] == 1.0


def test_learning_curve_of_a_sample_given_by_rows_is_that_of_a_copy_of_it():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 90)
    x = (rng.normal(size=(270, 8)) + y[:, None]).astype(np.float32)
    xe, ye = x[::3] + 0.1, y[::3]
    rows = np.flatnonzero(np.arange(270) % 5 != 0)
    by_rows = learning_curve.measure(x, y, xe, ye, 3, candidate=Candidate(1.0), sample=rows)
    assert by_rows == learning_curve.measure(x[rows], y[rows], xe, ye, 3, candidate=Candidate(1.0))
    assert by_rows["train_per_class"][-1] == [72.0] * 3


def test_ranking_puts_the_uncertain_first_spreads_them_and_leaves_out_copies():
    rng = np.random.default_rng(0)
    d = 8
    sure = np.tile([0.98, 0.02], (20, 1))
    unsure = np.tile([0.5, 0.5], (6, 1))
    probs = np.vstack([sure, unsure])
    # the six uncertain images: three near one point, three near another
    a, b = rng.normal(size=d), rng.normal(size=d)
    feats = np.vstack([rng.normal(size=(20, d)), a + 0.01 * rng.normal(size=(3, d)), b + 0.01 * rng.normal(size=(3, d))])
    labelled = rng.normal(size=(5, d))
    r = rank_for_labelling(probs, feats, labelled, 2, pool_factor=5)
    assert set(r.chosen) <= set(range(20, 26))
    assert {r.chosen[0] < 23, r.chosen[1] < 23} == {True, False}  # the second pick comes from the other cluster
    assert rank_for_labelling(probs, feats, labelled, 4, pool_factor=5).chosen[:2] == r.chosen
    ordered = rank_for_labelling(probs, feats, labelled, 6).chosen  # the default: the 6 most uncertain,
    assert set(ordered) == set(range(20, 26)) and {ordered[0] < 23, ordered[1] < 23} == {True, False}  # spread

    hashes = rng.integers(0, 2**63, 26, dtype=np.uint64)
    labelled_hashes = rng.integers(0, 2**63, 5, dtype=np.uint64)
    hashes[20] = labelled_hashes[2] ^ np.uint64(1)  # one bit from a labelled image's hash: a copy of it
    hashes[24] = hashes[21] ^ np.uint64(3)  # two uncertain images that are copies of each other
    r = rank_for_labelling(probs, feats, labelled, 6, hashes=hashes, labelled_hashes=labelled_hashes)
    assert r.duplicates[20] == ("labelled", 2) and 20 not in r.chosen
    assert not {21, 24} <= set(r.chosen)  # never both of a pair of copies
    assert uncertainty(probs)[20] == 1.0 and uncertainty(np.array([[0.25] * 4]), "entropy")[0] == pytest.approx(1.0)


def _blend(a: Image.Image, b: Image.Image) -> Image.Image:
    return Image.blend(a, b, 0.5)


def test_suggest_ranks_planted_uncertain_images_first_and_leaves_out_copies(trained_run, tmp_path, capsys):
    run, data, cache = trained_run
    pool = tmp_path / "unlabelled"
    pool.mkdir()
    rng = np.random.default_rng(7)
    for i in range(6):  # plain new images of each class: the model is sure of these
        for cls in ("circle", "square", "triangle"):
            make_image(cls, rng).save(pool / f"{cls}_new_{i}.png")
    for i in range(4):  # half circle, half square: the model cannot be sure
        _blend(make_image("circle", rng), make_image("square", rng)).save(pool / f"blend_{i}.png")
    copies = sorted((data / "circle").glob("*.png"))[:3]
    for p in copies:  # re-encoded copies of labelled images
        Image.open(p).convert("RGB").save(pool / f"copy_of_{p.stem}.jpg", quality=95)
    out = tmp_path / "next.csv"
    assert main(["suggest", str(run), str(pool), "-n", "4", "--output", str(out), "--cache-dir", str(cache),
                 "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert sum(r["path"].split("/")[-1].startswith("blend_") for r in rows) >= 3
    assert not any("copy_of_" in r["path"] for r in rows)
    page = out.with_suffix(".html").read_text()
    assert "Left out: near-duplicates" in page and page.count("copy_of_") >= 3
    assert "near-duplicates left out" in capsys.readouterr().out


def test_suggest_of_an_empty_folder_is_one_line(trained_run, tmp_path, capsys):
    run, _, cache = trained_run
    (tmp_path / "empty").mkdir()
    assert main(["suggest", str(run), str(tmp_path / "empty"), "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no unlabelled images" in err


def test_a_trained_run_holds_its_diagnosis_and_the_report_says_what_to_do_next(trained_run):
    run, _, _ = trained_run
    doc = json.loads((run / "diagnosis.json").read_text())
    issues, curve = doc["label_issues"], doc["learning_curve"]
    assert issues["method"] == "confident learning" and issues["judged"] > 0
    assert curve["fractions"] == list(learning_curve.FRACTIONS) and len(curve["accuracy"][0]) == 3
    with (run / "label_issues.csv").open() as f:
        assert next(csv.reader(f)) == list(label_errors.CSV_COLUMNS)
    page = (run / "report.html").read_text()
    assert "What to do next" in page and "What more images would buy" in page


def test_next_steps_worst_first_with_evidence():
    classes = ["Shirt", "Bag", "Coat"]
    metrics = {"classes": classes, "n_images": 300, "accuracy": 0.8, "balanced_accuracy": 0.8, "ece": 0.02,
               "per_class": {"Shirt": {"accuracy": 0.6, "support": 100}, "Bag": {"accuracy": 0.95, "support": 100},
                             "Coat": {"accuracy": 0.85, "support": 100}},
               "confusion_matrix": [[60, 0, 40], [2, 95, 3], [15, 0, 85]],
               "baselines": {"logistic_probe": {"accuracy": 0.79}}}
    diagnosis = {"label_issues": {"method": "confident learning", "judged": 1000, "rows": [
        {"label": "Shirt", "suggested": "Coat"}] * 30},
        "learning_curve": {"train_per_class": [[25] * 3, [50] * 3, [75] * 3, [100] * 3],
                           "accuracy": [[1 - 0.8 * n ** -0.5, 0.95, 0.85] for n in (25, 50, 75, 100)],
                           "overall": [0.8, 0.82, 0.83, 0.835],
                           "eval_per_class": [100] * 3}}
    steps = next_steps.next_steps(metrics, {"class_counts": {c: 100 for c in classes}}, diagnosis)
    assert [s["impact"] for s in steps] == sorted((s["impact"] for s in steps), reverse=True)
    assert steps[0]["text"].startswith("'Shirt' is weak: more 'Shirt' images should help")
    assert "40% of its images are called 'Coat'" in steps[0]["evidence"]
    assert any("30 training and validation images look mislabelled" in s["text"] and "imgtune review RUN" in s["text"]
               for s in steps)  # where to act on them
    assert all(s["evidence"] for s in steps)


def test_inspect_with_a_run_writes_label_issues_csv(trained_run, tmp_path):
    run, data, cache = trained_run
    copy = tmp_path / "photos"
    shutil.copytree(data, copy)
    out = tmp_path / "out"
    assert main(["inspect", str(copy), "--run", str(run), "--out", str(out), "--cache-dir", str(cache),
                 "--quiet"]) == 0
    doc = json.loads((out / "inspect.json").read_text())
    with (out / "label_issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [r["path"] for r in doc["label_issues"]]
    assert doc["label_issues_method"] == "confident learning" and doc["label_issues_judged"] == 42


def test_what_every_image_shares_is_said_last_as_a_property_of_the_data():
    """8x8 digits are all tiny: "1,797 of 1,797 images flagged" once came first in What to do next."""
    classes = ["a", "b"]
    metrics = {"classes": classes, "n_images": 100, "accuracy": 0.9, "balanced_accuracy": 0.9, "ece": 0.08,
               "per_class": {"a": {"accuracy": 0.9, "support": 50}, "b": {"accuracy": 0.9, "support": 50}},
               "confusion_matrix": [[45, 5], [5, 45]], "baselines": {"logistic_probe": {"accuracy": 0.85}}}
    audit = {"n_usable": 400, "odd": [{"path": f"{i}.png"} for i in range(400)], "leakage": {}}
    steps = next_steps.next_steps(metrics, {"class_counts": {"a": 200, "b": 200}}, None, audit)
    assert "a property of this data set" in steps[-1]["text"] and "400 of 400" in steps[-1]["evidence"]
    few = next_steps.next_steps(metrics, {"class_counts": {"a": 200, "b": 200}}, None,
                                {**audit, "odd": audit["odd"][:20]})
    assert any(s["text"].startswith("Some images are odd") for s in few)
