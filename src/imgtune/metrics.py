"""Pure functions from labels and probabilities to the numbers in metrics.json."""

from __future__ import annotations

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


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def evaluate(y_true, probs, classes: list[str], ks=(1, 5)) -> dict:
    """The metrics.json document (see DESIGN.md)."""
    y_true = np.asarray(y_true, int)
    probs = np.asarray(probs, float)
    n = len(classes)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n)
    pc = per_class(cm)
    present = pc["support"] > 0
    return {
        "classes": list(classes),
        "n_images": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        # macro over the classes present in this split, as scikit-learn does with labels=present
        "macro_f1": float(pc["f1"][present].mean()) if present.any() else 0.0,
        "top_k_accuracy": {str(k): top_k_accuracy(y_true, probs, k) for k in ks if k <= n},
        "per_class": {c: {"accuracy": float(pc["recall"][i]), "precision": float(pc["precision"][i]),
                          "recall": float(pc["recall"][i]), "f1": float(pc["f1"][i]),
                          "support": int(pc["support"][i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(y_true, probs),
    }
