"""metrics.py against scikit-learn on random predictions."""

import numpy as np
import pytest
from sklearn import metrics as skm

from imgtune import metrics


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) + 2.0 * np.eye(5)[y] * rng.random((300, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_matches_scikit_learn(predictions):
    y, probs = predictions
    pred = probs.argmax(1)
    m = metrics.evaluate(y, probs, list("abcde"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, pred)
    for i, c in enumerate("abcde"):
        pc = m["per_class"][c]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
        assert pc["accuracy"] == pc["recall"]
    assert set(m["top_k_accuracy"]) == {"1", "5"}  # k=5 of 5 classes is listed (it is 1 by definition)
    three = metrics.evaluate(y, probs, list("abcde"), ks=(3,))["top_k_accuracy"]["3"]
    assert three == pytest.approx(skm.top_k_accuracy_score(y, probs, k=3)) and three < 1
    assert metrics.top_k_accuracy(y, probs, 2) == pytest.approx(skm.top_k_accuracy_score(y, probs, k=2))


def test_class_never_predicted_has_zero_precision_not_nan():
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1]]
    m = metrics.evaluate(y, probs, ["a", "b", "c"])
    assert m["per_class"]["c"] == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, probs.argmax(1), average="macro", zero_division=0))


def test_ece_of_a_calibrated_and_an_overconfident_model():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    right = np.tile([0.75, 0.25], (8, 1))  # 75% confident, right 75% of the time
    right_y = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    assert metrics.expected_calibration_error(right_y, right) == pytest.approx(0.0)
    sure = np.tile([0.99, 0.01], (8, 1))  # 99% confident, right half the time
    assert metrics.expected_calibration_error(y, sure) == pytest.approx(0.49)
