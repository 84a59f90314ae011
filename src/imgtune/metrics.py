"""Pure functions from labels and probabilities to the numbers in metrics.json."""

from __future__ import annotations

import math

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are the true class, columns the predicted one."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall (= per-class accuracy), F1 and support from a confusion matrix; 0 where undefined."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_scores(pc: dict[str, np.ndarray]) -> tuple[float, float]:
    """(balanced accuracy, macro-F1): means over the classes present, as scikit-learn does with
    labels=present; 0 when no class is."""
    present = pc["support"] > 0
    if not present.any():
        return 0.0, 0.0
    return float(pc["recall"][present].mean()), float(pc["f1"][present].mean())


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def reliability(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    """Equal-width confidence bins: how many predictions fell in each, their mean confidence and how many
    were right (the reliability diagram's data). Empty bins hold None."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    out: dict[str, list] = {"count": count.tolist(), "confidence": [], "accuracy": []}
    for b in range(n_bins):
        m = bins == b
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    return out


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    r = reliability(y_true, probs, n_bins)
    n = max(1, sum(r["count"]))
    return float(sum(c / n * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"]) if c))


def most_confused(cm: np.ndarray, classes: list[str], n: int = 10) -> list[dict]:
    """The largest off-diagonal cells: which true class is most often taken for which other class."""
    support = cm.sum(axis=1)
    cells = [(int(cm[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes))
             if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": c, "share_of_true": c / int(support[i])}
            for c, i, j in cells[:n]]


def misclassified(y_true: np.ndarray, probs: np.ndarray, paths: list[str], classes: list[str],
                  n: int = 48) -> list[dict]:
    """The wrong predictions, worst first: lowest probability given to the true class."""
    y_true = np.asarray(y_true, int)
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    p_true = probs[np.arange(len(y_true)), y_true]
    wrong = wrong[np.argsort(p_true[wrong], kind="stable")][:n]
    return [{"path": paths[i], "true": classes[y_true[i]], "predicted": classes[pred[i]],
             "probability": float(probs[i, pred[i]]), "probability_true": float(p_true[i])} for i in wrong]


def rejection_table(y_true, probs, thresholds=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95)) -> list[dict]:
    """For each minimum confidence P: the share of images whose top probability is below P (labelled
    "unknown" by predict --min-confidence P) and the accuracy on the images that are kept."""
    y_true = np.asarray(y_true, int)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    rows = []
    for p in thresholds:
        kept = conf >= p
        rows.append({"min_confidence": p, "rejected": float(1 - kept.mean()) if len(kept) else 0.0,
                     "accuracy_kept": float(np.mean(pred[kept] == y_true[kept])) if kept.any() else None})
    return rows


def evaluate(y_true, probs, classes: list[str], ks=(1, 5), *, paths: list[str] | None = None,
             uncalibrated=None, single_view=None) -> dict:
    """The metrics.json document (its fields: README.md). Optional extras: with `paths`, the worst misclassified
    files; with `uncalibrated` (probabilities before temperature scaling), ECE before calibration; with
    `single_view` (probabilities without test-time augmentation), the accuracy TTA gained."""
    y_true = np.asarray(y_true, int)
    probs = np.asarray(probs, float)
    n = len(classes)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n)
    pc = per_class(cm)
    balanced_accuracy, macro_f1 = macro_scores(pc)
    doc = {
        "classes": list(classes),
        "n_images": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        "macro_f1": macro_f1,
        "top_k_accuracy": {str(k): top_k_accuracy(y_true, probs, k) for k in ks if k <= n},
        "per_class": {c: {"accuracy": float(pc["recall"][i]), "precision": float(pc["precision"][i]),
                          "recall": float(pc["recall"][i]), "f1": float(pc["f1"][i]),
                          "support": int(pc["support"][i])} for i, c in enumerate(classes)},
        "balanced_accuracy": balanced_accuracy,
        "confusion_matrix": cm.tolist(),
        "most_confused": most_confused(cm, list(classes)),
        "ece": expected_calibration_error(y_true, probs),
        "reliability": reliability(y_true, probs),
    }
    if uncalibrated is not None:
        doc["ece_uncalibrated"] = expected_calibration_error(y_true, np.asarray(uncalibrated, float))
        doc["reliability_uncalibrated"] = reliability(y_true, np.asarray(uncalibrated, float))
    if single_view is not None:
        without = float(np.mean(np.asarray(single_view).argmax(axis=1) == y_true)) if len(y_true) else 0.0
        doc["tta"] = {"accuracy": doc["accuracy"], "accuracy_without": without,
                      "gain": doc["accuracy"] - without}
    if paths is not None:
        doc["misclassified"] = misclassified(y_true, probs, list(paths), list(classes))
    return doc


def noise_of_gap(score: float, n: int) -> float:
    """Twice the standard error of a score near `score` on `n` images: a gap under this may be luck."""
    return 2 * math.sqrt(max(score * (1 - score), 1 / max(n, 1)) / max(n, 1))


def score(y: np.ndarray, pred: np.ndarray, metric: str, n_classes: int) -> float:
    """The metric a recipe optimises (accuracy, balanced_accuracy or macro_f1) of these decisions."""
    y, pred = np.asarray(y, int), np.asarray(pred, int)
    if not len(y):
        return 0.0
    if metric == "accuracy":
        return float(np.mean(y == pred))
    balanced, macro_f1 = macro_scores(per_class(confusion_matrix(y, pred, n_classes)))
    return balanced if metric == "balanced_accuracy" else macro_f1
