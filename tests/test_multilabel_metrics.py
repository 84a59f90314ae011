"""multilabel.py against scikit-learn on seeded random predictions (ties included), and its fitted
thresholds and temperatures on planted data."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from imgtune.infer import multilabel as ml

LABELS = ["cat", "dog", "car", "tree", "absent"]


@pytest.fixture
def outputs():
    """[400, 5] labels and probabilities; label 4 ("absent") has no positive in y but is predicted."""
    rng = np.random.default_rng(0)
    n, k = 400, len(LABELS)
    y = (rng.random((n, k)) < [0.3, 0.5, 0.1, 0.2, 0.0]).astype(int)
    logits = rng.normal(size=(n, k)) + 2.0 * y * rng.random((n, 1))
    probs = ml.sigmoid(logits)
    probs[:, 1] = np.round(probs[:, 1], 1)  # heavy ties in one label
    return y, probs


def _f1_at(y_col, p_col, t):
    return skm.f1_score(y_col, p_col >= t, zero_division=0)


def _best_f1(y_col, p_col):
    """The best F1 of any cut p >= v over the distinct scores v (brute force, all cuts at once)."""
    d = p_col[:, None] >= np.unique(p_col)[None, :]
    tp = (d & (y_col[:, None] == 1)).sum(0)
    return float(np.max(2 * tp / (d.sum(0) + y_col.sum())))


def test_sigmoid_is_stable_and_exact():
    z = np.array([-1e4, -800.0, -30.0, -1.5, 0.0, 2.0, 30.0, 800.0, 1e4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            s = ml.sigmoid(z)
    assert s[0] == 0.0 and s[-1] == 1.0 and s[4] == 0.5
    mid = np.abs(z) < 50
    assert s[mid] == pytest.approx(1 / (1 + np.exp(-z[mid])), rel=1e-12)
    assert ml.sigmoid(-30.0) == pytest.approx(np.exp(-30.0) / (1 + np.exp(-30.0)), rel=1e-12)  # not 0
    assert np.all(np.diff(s) >= 0)


@pytest.mark.parametrize("rounding", [None, 2, 1])
def test_average_precision_matches_scikit_learn(rounding):
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = (rng.random(150) < rng.uniform(0.05, 0.9)).astype(int)
        if not y.any():
            y[0] = 1
        score = rng.random(150) + 0.5 * y
        if rounding is not None:
            score = np.round(score, rounding)
        assert ml.average_precision(y, score) == pytest.approx(skm.average_precision_score(y, score),
                                                               abs=1e-9)
    assert ml.average_precision(np.zeros(10), rng.random(10)) is None
    assert ml.average_precision(np.ones(4), np.zeros(4)) == 1.0  # all tied, all positive
    assert ml.average_precision([0, 1, 0, 1], [0.5] * 4) == pytest.approx(0.5)  # one tie group


def test_pr_curve_is_scikit_learns_reversed_and_downsampled():
    rng = np.random.default_rng(2)
    y = (rng.random(60) < 0.4).astype(int)
    score = np.round(rng.random(60) + 0.3 * y, 1)  # about 14 distinct values
    precision, recall, _ = skm.precision_recall_curve(y, score)
    curve = ml.pr_curve(y, score)
    assert curve["recall"] == pytest.approx(np.round(recall[::-1], 4).tolist(), abs=1e-12)
    assert curve["precision"] == pytest.approx(np.round(precision[::-1], 4).tolist(), abs=1e-12)
    assert all(type(v) is float for v in curve["recall"] + curve["precision"])
    score = rng.random(60)  # 60 distinct scores: 61 points, cut to 11
    precision, recall, _ = skm.precision_recall_curve(y, score)
    short = ml.pr_curve(y, score, points=11)
    assert len(short["recall"]) == len(short["precision"]) == 11
    assert (short["recall"][0], short["precision"][0]) == (0.0, 1.0)
    assert (short["recall"][-1], short["precision"][-1]) == (1.0, round(float(precision[0]), 4))
    assert short["recall"] == sorted(short["recall"])
    assert ml.pr_curve(np.zeros(5), rng.random(5)) == {"recall": [], "precision": []}


def test_scores_match_scikit_learn_with_an_absent_label(outputs):
    y, probs = outputs
    thresholds = np.array([0.5, 0.6, 0.4, 0.97, 0.7])
    d = ml.label_sets(probs, thresholds)
    assert d.dtype == bool and np.array_equal(d, probs >= thresholds)
    assert d[:, 4].any() and not d[:, 3].any()  # the absent label is predicted; label 3 never is
    s = ml.scores(y, d)
    present = np.flatnonzero(y.sum(0) > 0)
    assert present.tolist() == [0, 1, 2, 3]
    for avg in ("precision", "recall", "f1"):
        fn = getattr(skm, f"{avg}_score" if avg != "f1" else "f1_score")
        assert s[f"micro_{avg}"] == pytest.approx(fn(y, d, average="micro", zero_division=0), abs=1e-9)
        assert s[f"macro_{avg}"] == pytest.approx(fn(y, d, average="macro", labels=present, zero_division=0),
                                                  abs=1e-9)
    # the present-labels rule matters here: over all five labels the macro means would be lower
    assert s["macro_recall"] > skm.recall_score(y, d, average="macro", zero_division=0) + 0.05
    assert s["macro_precision"] > skm.precision_score(y, d, average="macro", zero_division=0) + 0.05
    assert s["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, d), abs=1e-9)
    assert s["hamming_loss"] == pytest.approx(skm.hamming_loss(y, d), abs=1e-9)
    assert 0 < s["subset_accuracy"] < 1 and 0 < s["hamming_loss"] < 1
    assert all(type(v) is float for v in s.values())


def test_evaluate_per_label_and_map_match_scikit_learn(outputs):
    y, probs = outputs
    thresholds = np.array([0.5, 0.6, 0.4, 0.97, 0.7])
    doc = ml.evaluate(y, probs, thresholds, LABELS)
    d = probs >= thresholds
    p, r, f, support = skm.precision_recall_fscore_support(y, d, zero_division=0)
    for j, name in enumerate(LABELS):
        pl = doc["per_label"][name]
        assert (pl["precision"], pl["recall"], pl["f1"]) == pytest.approx((p[j], r[j], f[j]), abs=1e-9)
        assert pl["support"] == support[j] and pl["predicted"] == d[:, j].sum()
        assert pl["threshold"] == thresholds[j]
    aps = [skm.average_precision_score(y[:, j], probs[:, j]) for j in range(4)]
    for j in range(4):
        assert doc["per_label"][LABELS[j]]["ap"] == pytest.approx(aps[j], abs=1e-9)
    assert doc["per_label"]["absent"]["ap"] is None
    assert doc["map"] == pytest.approx(np.mean(aps), abs=1e-9)
    assert doc["pr_curves"]["absent"] == {"recall": [], "precision": []}
    assert doc["macro_f1"] == pytest.approx(skm.f1_score(y, d, average="macro", labels=[0, 1, 2, 3],
                                                         zero_division=0), abs=1e-9)
    assert doc["label_cardinality"] == pytest.approx({"true": y.sum(1).mean(), "predicted": d.sum(1).mean()})
    assert doc["task"] == "multi" and doc["classes"] == LABELS and doc["n_images"] == len(y)
    assert doc["thresholds"] == thresholds.tolist()


def test_cooccurrence_counts_images_with_both_labels(outputs):
    y, _ = outputs
    c = ml.cooccurrence(y)
    k = y.shape[1]
    expected = [[int(np.sum((y[:, i] == 1) & (y[:, j] == 1))) for j in range(k)] for i in range(k)]
    assert c.tolist() == expected
    assert np.issubdtype(c.dtype, np.integer)
    assert np.array_equal(np.diag(c), y.sum(0)) and np.array_equal(c, c.T)
    assert c[0, 1] > 0 and c[4].sum() == 0


def test_evaluate_document_is_json_and_worst_lists_are_ordered(outputs):
    y, probs = outputs
    thresholds = np.array([0.5, 0.6, 0.4, 0.97, 0.7])
    paths = [f"img/{i:03d}.jpg" for i in range(len(y))]
    doc = ml.evaluate(y, probs, thresholds, LABELS, paths=paths, worst=5)
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text) == doc  # only plain types: nothing changes on the round trip
    assert doc["cooccurrence"] == ml.cooccurrence(y).tolist()
    col = {name: j for j, name in enumerate(LABELS)}
    row = {p: i for i, p in enumerate(paths)}
    d = probs >= thresholds
    fp, fn = doc["worst"]["false_positives"], doc["worst"]["false_negatives"]
    assert len(fp) == 5 and len(fn) == 5
    for e in fp:
        i, j = row[e["path"]], col[e["label"]]
        assert y[i, j] == 0 and d[i, j] and e["probability"] == probs[i, j]
    for e in fn:
        i, j = row[e["path"]], col[e["label"]]
        assert y[i, j] == 1 and not d[i, j] and e["probability"] == probs[i, j]
    fp_p = [e["probability"] for e in fp]
    fn_p = [e["probability"] for e in fn]
    assert fp_p == sorted(fp_p, reverse=True) and fn_p == sorted(fn_p)
    assert fp_p == sorted(probs[d & (y == 0)].tolist(), reverse=True)[:5]
    assert fn_p == sorted(probs[~d & (y == 1)].tolist())[:5]
    bare = ml.evaluate(y, probs, thresholds, LABELS)
    assert bare["worst"] == {"false_positives": [], "false_negatives": []}


def _planted_far_from_half(rng, n=2000):
    """Label 0: positives score 0.1-0.3, negatives 0-0.2 (best t well below 0.5, nothing reaches 0.5);
    label 1: negatives reach 0.9, positives 0.85-1 (best t well above 0.5)."""
    y = (rng.random((n, 2)) < 0.3).astype(int)
    p = np.empty((n, 2))
    p[:, 0] = np.where(y[:, 0] == 1, rng.uniform(0.1, 0.3, n), rng.uniform(0.0, 0.2, n))
    p[:, 1] = np.where(y[:, 1] == 1, rng.uniform(0.85, 1.0, n), rng.uniform(0.0, 0.9, n))
    return y, p


def test_thresholds_raise_f1_when_the_best_threshold_is_far_from_half():
    y, p = _planted_far_from_half(np.random.default_rng(3))
    t = ml.fit_thresholds(p, y)
    assert t[0] < 0.3 and t[1] > 0.8
    for j in range(2):
        fitted, half = _f1_at(y[:, j], p[:, j], t[j]), _f1_at(y[:, j], p[:, j], 0.5)
        assert fitted > half + 0.2
        # no other cut does better: the best over every distinct score used as a threshold
        assert fitted == pytest.approx(_best_f1(y[:, j], p[:, j]), abs=1e-12)


def test_thresholds_are_never_worse_than_half_and_handle_ties(outputs):
    y, probs = outputs
    t = ml.fit_thresholds(probs, y)
    assert t[4] == 0.5  # no positives
    for j in range(4):
        fitted = _f1_at(y[:, j], probs[:, j], t[j])
        assert fitted >= _f1_at(y[:, j], probs[:, j], 0.5) - 1e-12
        assert fitted == pytest.approx(_best_f1(y[:, j], probs[:, j]), abs=1e-12)
    tied = np.unique(probs[:, 1])  # label 1 is rounded to one decimal: the cut falls between two values
    assert t[1] not in tied and tied.min() < t[1] <= tied.max()


def test_threshold_ties_prefer_half_and_min_positives():
    y = np.array([[0], [0], [0], [1], [1], [1]])
    wide = np.array([[0.1], [0.15], [0.2], [0.6], [0.85], [0.9]])  # every t in (0.2, 0.6] is perfect
    assert ml.fit_thresholds(wide, y)[0] == 0.5
    gap = np.array([[0.1], [0.5], [0.6], [0.9], [0.92], [0.95]])  # only t in (0.6, 0.9] is perfect
    assert ml.fit_thresholds(gap, y)[0] == pytest.approx(0.75)
    low = np.array([[0.01], [0.02], [0.03], [0.2], [0.3], [0.4]])
    assert ml.fit_thresholds(low, y)[0] == pytest.approx(0.115)  # only t in (0.03, 0.2] is perfect
    assert ml.fit_thresholds(low, y, min_positives=4)[0] == 0.5
    assert ml.fit_thresholds(low, y, min_positives=3)[0] == pytest.approx(0.115)
    close = np.array([[0.1], [0.2], [0.3], [0.7], [0.8], [0.9]])  # perfect in (0.3, 0.7]: 0.5 itself
    assert ml.fit_thresholds(close, y)[0] == 0.5
    # two disjoint cuts share the best F1 (2/3) and 0.5 lies in neither: the nearer one wins
    lower = (np.array([[0.9], [0.8], [0.7], [0.6], [0.55], [0.45], [0.1]]),
             np.array([[1], [0], [0], [1], [0], [0], [0]]))
    assert ml.fit_thresholds(*lower)[0] == pytest.approx(0.575)  # not 0.85
    higher = np.array([[0.6], [0.52], [0.4], [0.1], [0.05]]), np.array([[1], [0], [0], [1], [0]])
    assert ml.fit_thresholds(*higher)[0] == pytest.approx(0.56)  # not 0.075
    everything = ml.fit_thresholds(np.array([[0.2], [0.2]]), np.array([[1], [1]]))[0]
    assert everything <= 0.2 and everything == pytest.approx(0.2)  # just below the smallest: all positive


def test_thresholds_of_many_images_lie_where_the_planted_rates_say():
    rng = np.random.default_rng(4)
    p = rng.random((20_000, 10))
    y = (rng.random((20_000, 10)) < p ** 2).astype(int)
    t = ml.fit_thresholds(p, y)
    assert t.shape == (10,) and np.all((t > 0.2) & (t < 0.8))


def test_temperatures_recover_a_planted_temperature():
    rng = np.random.default_rng(5)
    planted = np.array([0.5, 1.0, 3.0, 8.0])
    true_logit = rng.normal(0.0, 2.0, (20_000, 4))
    y = (rng.random(true_logit.shape) < ml.sigmoid(true_logit)).astype(int)
    y = np.hstack([y, np.zeros((20_000, 1), int), np.ones((20_000, 1), int)])  # no positives; no negatives
    logits = np.hstack([planted * true_logit, rng.normal(size=(20_000, 2))])
    t = ml.fit_label_temperatures(logits, y)
    assert t.shape == (6,)
    assert t[:4] == pytest.approx(planted, rel=0.1)
    assert t[4] == 1.0 and t[5] == 1.0
    separable = ml.fit_label_temperatures(np.array([[-5.0], [5.0]]), np.array([[0], [1]]))
    assert separable[0] == pytest.approx(ml.T_MIN)  # sharper is always better: the bound


def test_paired_map_gain_is_zero_for_identical_scores_and_positive_for_a_better_model():
    rng = np.random.default_rng(6)
    n, k = 1000, 10
    y = (rng.random((n, k)) < 0.2).astype(int)
    y[:, 9] = 0
    y[:3, 9] = 1  # a rare label: absent from many resamples
    old = rng.random((n, k)) + 0.3 * y
    new = rng.random((n, k)) + 1.0 * y
    assert ml.paired_map_gain(y, old, old) == (0.0, 0.0)
    gain, se = ml.paired_map_gain(y, new, old, rounds=200, seed=0)
    map_new = np.mean([skm.average_precision_score(y[:, j], new[:, j]) for j in range(k)])
    map_old = np.mean([skm.average_precision_score(y[:, j], old[:, j]) for j in range(k)])
    assert gain == pytest.approx(map_new - map_old, abs=1e-9)
    assert gain > 0.1 and 0 < se < gain / 5
    worse, _ = ml.paired_map_gain(y, old, new)
    assert worse == pytest.approx(-gain, abs=1e-12)


def test_paired_map_gain_standard_error_is_a_paired_bootstrap():
    rng = np.random.default_rng(7)
    n, k, rounds = 120, 3, 25
    y = (rng.random((n, k)) < [0.3, 0.1, 0.03]).astype(int)
    a = np.round(rng.random((n, k)) + 0.5 * y, 1)  # ties: copies of an image share its tie group
    b = rng.random((n, k)) + 0.2 * y
    draws = np.random.default_rng(11).integers(0, n, (rounds, n))  # the resamples the docstring names
    diffs = []
    for idx in draws:
        ys, sa, sb = y[idx], a[idx], b[idx]
        keep = [j for j in range(k) if ys[:, j].any()]
        diffs.append(np.mean([skm.average_precision_score(ys[:, j], sa[:, j]) for j in keep])
                     - np.mean([skm.average_precision_score(ys[:, j], sb[:, j]) for j in keep]))
    assert any(not y[idx, 2].any() for idx in draws)  # the left-out rule is exercised
    _, se = ml.paired_map_gain(y, a, b, rounds=rounds, seed=11)
    assert se == pytest.approx(np.std(diffs, ddof=1), abs=1e-9)
    assert ml.paired_map_gain(y, a, b, rounds=rounds, seed=12)[1] != se  # the seed is used
