"""Pure functions for multi-label outputs: sigmoid probabilities, per-label temperatures and thresholds, and
the metrics.json document of task multi.

Shapes: `y` is a 0/1 array [N, K] (float or int), `logits`, `probs` and `scores` are float arrays [N, K]; a
column is one label. Undefined ratios count 0 (scikit-learn's zero_division=0) and macro means run over the
labels with at least one positive, as the single-label code does."""

from __future__ import annotations

import numpy as np

T_MIN, T_MAX = 0.05, 20.0
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_F1_TIE = 1e-12


def sigmoid(z) -> np.ndarray:
    """1 / (1 + exp(-z)) as float64, computed from exp(-|z|) so that no exp overflows."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _mean_bce_with_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean binary cross-entropy of sigmoid(z) against y over axis 0: one value per column."""
    return np.mean(np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z))), axis=0)


def fit_label_temperatures(logits: np.ndarray, y: np.ndarray, *, iterations: int = 80) -> np.ndarray:
    """Per label, the T in [T_MIN, T_MAX] that minimises the mean binary cross-entropy of sigmoid(z / T)
    against y: an array [K]. A golden-section search on log T, all labels at once (the loss is convex in
    1 / T, hence unimodal in log T). A label with no positives or no negatives gets 1.0."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_pos = y.sum(axis=0)
    fit = (n_pos > 0) & (n_pos < len(y))
    out = np.ones(z.shape[1])
    if not fit.any():
        return out
    z, y = z[:, fit], y[:, fit]

    def loss(log_t: np.ndarray) -> np.ndarray:
        return _mean_bce_with_logits(z / np.exp(log_t), y)

    lo = np.full(z.shape[1], np.log(T_MIN))
    hi = np.full(z.shape[1], np.log(T_MAX))
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        left = fa <= fb  # the minimum lies in [lo, b]: b becomes the new hi
        hi = np.where(left, b, hi)
        lo = np.where(left, lo, a)
        a_new = np.where(left, hi - _GOLDEN * (hi - lo), b)
        b_new = np.where(left, a, lo + _GOLDEN * (hi - lo))
        a, b = a_new, b_new
        f_new = loss(np.where(left, a, b))  # the one point of the pair that is new
        fa, fb = np.where(left, f_new, fb), np.where(left, fa, f_new)
    out[fit] = np.clip(np.exp((lo + hi) / 2.0), T_MIN, T_MAX)
    return out


def _sorted_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, last): the row order of each column sorted by descending score (stable) and a bool [N, K]
    that is True at the last row of each run of equal scores in that order."""
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, axis=0)
    last = np.ones_like(s, dtype=bool)
    last[:-1] = s[:-1] != s[1:]
    return order, last


def fit_thresholds(probs: np.ndarray, y: np.ndarray, *, min_positives: int = 1) -> np.ndarray:
    """Per label, the threshold t (decision p >= t) that maximises that label's F1 on these predictions: an
    array [K]. Candidates are the midpoints between consecutive distinct probabilities, the value just below
    the smallest, and 0.5; among those within 1e-12 of the best F1 the one closest to 0.5 wins (the higher
    one on an exact tie). A label with fewer than `min_positives` positives gets 0.5."""
    p = np.asarray(probs, dtype=np.float64)
    yb = np.asarray(y) > 0
    n, k = p.shape
    out = np.full(k, 0.5)
    if n == 0:
        return out
    n_pos = yb.sum(axis=0)
    order, last = _sorted_groups(p)
    s = np.take_along_axis(p, order, axis=0)
    tp = np.cumsum(np.take_along_axis(yb, order, axis=0), axis=0)
    n_pred = np.arange(1, n + 1)[:, None]
    # predicting the top i + 1 rows positive: the threshold sits between row i and the next lower value
    below = np.vstack([s[1:], np.full((1, k), -np.inf)])
    mid = (s + below) / 2.0
    mid = np.where(mid > below, mid, s)  # adjacent floats: the midpoint may round down onto `below`
    mid[-1] = np.nextafter(s[-1], -np.inf)
    cand_t = np.where(last, mid, np.nan)
    cand_f1 = np.where(last, _f1(tp, n_pred, n_pos), -np.inf)
    half = p >= 0.5
    half_f1 = _f1((half & yb).sum(axis=0), half.sum(axis=0), n_pos)
    cand_t = np.vstack([np.full((1, k), 0.5), cand_t])
    cand_f1 = np.vstack([half_f1[None, :], cand_f1])
    best = cand_f1.max(axis=0)
    distance = np.where(cand_f1 >= best - _F1_TIE, np.abs(cand_t - 0.5), np.inf)
    chosen = cand_t[np.argmin(distance, axis=0), np.arange(k)]
    enough = n_pos >= min_positives
    out[enough] = chosen[enough]
    return out


def _f1(tp, n_pred, n_pos) -> np.ndarray:
    """2 TP / (predicted + actual positives) as float, 0 where both are 0."""
    tp = np.asarray(tp, dtype=np.float64)
    denom = np.asarray(n_pred + n_pos, dtype=np.float64) * np.ones_like(tp)
    return np.divide(2.0 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def label_sets(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The decisions: a bool [N, K] that is True where p >= that label's threshold."""
    return np.asarray(probs, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)[None, :]


def _pr_points(y_col, score_col) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall, precision) at each distinct score, highest score first (ties grouped, as scikit-learn's
    precision_recall_curve does); None when the label has no positives."""
    y = (np.asarray(y_col) > 0).reshape(-1, 1)
    s = np.asarray(score_col, dtype=np.float64).reshape(-1, 1)
    if not y.any():
        return None
    order, last = _sorted_groups(s)
    tp = np.cumsum(y[order[:, 0], 0])[last[:, 0]].astype(np.float64)
    n_pred = (np.flatnonzero(last[:, 0]) + 1).astype(np.float64)
    return tp / tp[-1], tp / n_pred


def average_precision(y_col, score_col) -> float | None:
    """scikit-learn's average_precision_score for one label: the sum over distinct scores of
    (recall gained) x precision; None when the label has no positives."""
    pts = _pr_points(y_col, score_col)
    if pts is None:
        return None
    recall, precision = pts
    return float(max(0.0, np.sum(np.diff(recall, prepend=0.0) * precision)))


def pr_curve(y_col, score_col, points: int = 101) -> dict[str, list[float]]:
    """The precision-recall curve as {"recall": [...], "precision": [...]}, from (0, 1) through the distinct
    scores, highest first (scikit-learn's precision_recall_curve, reversed), cut down to at most `points`
    evenly spaced points that keep the first and the last; values rounded to 4 decimals. Empty lists when
    the label has no positives."""
    if points < 2:
        raise ValueError("points must be at least 2 (the first and the last)")
    pts = _pr_points(y_col, score_col)
    if pts is None:
        return {"recall": [], "precision": []}
    recall = np.concatenate([[0.0], pts[0]])
    precision = np.concatenate([[1.0], pts[1]])
    if len(recall) > points:
        keep = np.unique(np.round(np.linspace(0, len(recall) - 1, points)).astype(int))
        recall, precision = recall[keep], precision[keep]
    return {"recall": [round(float(v), 4) for v in recall],
            "precision": [round(float(v), 4) for v in precision]}


def _counts(y: np.ndarray, decisions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, predicted positives, actual positives) per label, each an int array [K]."""
    yb, d = np.asarray(y) > 0, np.asarray(decisions, dtype=bool)
    return (yb & d).sum(axis=0), d.sum(axis=0), yb.sum(axis=0)


def _ratio(num, den) -> np.ndarray:
    """num / den as float, 0 where den is 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def per_label(y: np.ndarray, decisions: np.ndarray) -> dict[str, np.ndarray]:
    """Per label precision, recall and F1 (float arrays [K], 0 where undefined) and support and predicted
    (int arrays [K])."""
    tp, n_pred, n_pos = _counts(y, decisions)
    return {"precision": _ratio(tp, n_pred), "recall": _ratio(tp, n_pos), "f1": _f1(tp, n_pred, n_pos),
            "support": n_pos, "predicted": n_pred}


def scores(y: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
    """micro/macro precision, recall and F1, subset accuracy and Hamming loss, as plain floats. Micro pools
    all labels; macro averages over the labels with at least one positive in y (0 when none has)."""
    yb, d = np.asarray(y) > 0, np.asarray(decisions, dtype=bool)
    pl = per_label(yb, d)
    tp, n_pred, n_pos = int((yb & d).sum()), int(d.sum()), int(yb.sum())
    present = pl["support"] > 0
    macro = {m: float(pl[m][present].mean()) if present.any() else 0.0 for m in ("precision", "recall", "f1")}
    return {
        "micro_precision": float(_ratio(tp, n_pred)),
        "micro_recall": float(_ratio(tp, n_pos)),
        "micro_f1": float(_f1(tp, n_pred, n_pos)),
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "macro_f1": macro["f1"],
        "subset_accuracy": float(np.mean(np.all(yb == d, axis=1))) if len(yb) else 0.0,
        "hamming_loss": float(np.mean(yb != d)) if yb.size else 0.0,
    }


def cooccurrence(y: np.ndarray) -> np.ndarray:
    """An int array [K, K]: in cell (i, j) the number of images where labels i and j are both true; the
    diagonal holds each label's support."""
    yb = (np.asarray(y) > 0).astype(np.int64)
    return yb.T @ yb


def mean_average_precision(y: np.ndarray, scores_: np.ndarray) -> float:
    """The mean AP over the labels with at least one positive; 0.0 when none has."""
    aps = [average_precision(y[:, j], scores_[:, j]) for j in range(np.shape(y)[1])]
    aps = [a for a in aps if a is not None]
    return float(np.mean(aps)) if aps else 0.0


def worst_decisions(y: np.ndarray, probs: np.ndarray, decisions: np.ndarray, paths: list[str],
                    labels: list[str], n: int = 12) -> dict[str, list[dict]]:
    """The `n` most confident false positives (highest probability first) and the `n` most badly missed
    positives (lowest probability first), each {"path", "label", "probability"}; ties in image, then label,
    order."""
    yb, d = np.asarray(y) > 0, np.asarray(decisions, dtype=bool)
    p = np.asarray(probs, dtype=np.float64)
    flat = p.ravel()

    def rows(mask: np.ndarray, key: np.ndarray) -> list[dict]:
        idx = np.flatnonzero(mask.ravel())
        idx = idx[np.argsort(key[idx], kind="stable")][:n]
        i, j = np.divmod(idx, p.shape[1])
        return [{"path": paths[a], "label": labels[b], "probability": float(flat[c])}
                for a, b, c in zip(i.tolist(), j.tolist(), idx.tolist())]

    return {"false_positives": rows(d & ~yb, -flat), "false_negatives": rows(~d & yb, flat)}


def evaluate(y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, labels: list[str], *,
             paths: list[str] | None = None, worst: int = 12) -> dict:
    """The metrics.json document of task multi (plain Python values only; None where a value is undefined):
    mAP, the micro/macro scores, subset accuracy, Hamming loss, label cardinality, per-label AP, precision,
    recall, F1, support, predicted count and threshold, PR curves, the co-occurrence matrix, the thresholds
    and, with `paths`, the `worst` false positives and false negatives."""
    yb = np.asarray(y) > 0
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    labels = list(labels)
    if p.shape != yb.shape or len(labels) != p.shape[1] or t.shape != (p.shape[1],):
        raise ValueError(f"shapes disagree: y {yb.shape}, probs {p.shape}, {len(labels)} labels, "
                         f"thresholds {t.shape}")
    if paths is not None and len(paths) != len(yb):
        raise ValueError(f"{len(paths)} paths for {len(yb)} images")
    d = label_sets(p, t)
    pl = per_label(yb, d)
    aps = [average_precision(yb[:, j], p[:, j]) for j in range(len(labels))]
    known = [a for a in aps if a is not None]
    n = len(yb)
    overall = scores(yb, d)
    if not yb.any():  # no label to find: the averages over labels with positives have nothing to average
        overall.update(macro_precision=None, macro_recall=None, macro_f1=None)
    return {
        "task": "multi",
        "classes": labels,
        "n_images": int(n),
        "map": float(np.mean(known)) if known else None,
        **overall,
        **({} if yb.any() else {"undefined": "no image here carries any label: mAP and the macro averages "
                                              "are undefined"}),
        "label_cardinality": {"true": float(yb.sum() / n) if n else 0.0,
                              "predicted": float(d.sum() / n) if n else 0.0},
        "per_label": {c: {"ap": aps[j], "precision": float(pl["precision"][j]),
                          "recall": float(pl["recall"][j]), "f1": float(pl["f1"][j]),
                          "support": int(pl["support"][j]), "predicted": int(pl["predicted"][j]),
                          "threshold": float(t[j])}
                      for j, c in enumerate(labels)},
        "pr_curves": {c: pr_curve(yb[:, j], p[:, j]) for j, c in enumerate(labels)},
        "cooccurrence": cooccurrence(yb).tolist(),
        "thresholds": [float(v) for v in t],
        "worst": (worst_decisions(yb, p, d, list(paths), labels, worst) if paths is not None
                  else {"false_positives": [], "false_negatives": []}),
    }


def _bootstrap_ap(y_col: np.ndarray, score_col: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP of one label under each row of `weights` [R, N] (how often each image was drawn): an array [R],
    NaN where a resample holds no positive. Equal to average_precision on the resampled images, since
    copies of an image share its score and so its tie group."""
    order, last = _sorted_groups(np.asarray(score_col, dtype=np.float64).reshape(-1, 1))
    order, last = order[:, 0], last[:, 0]
    w = weights[:, order]
    pos = (np.asarray(y_col) > 0)[order]
    tp = np.cumsum(w * pos, axis=1)[:, last]
    n_pred = np.cumsum(w, axis=1)[:, last]
    total = tp[:, -1:]
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall_gain = np.diff(tp, axis=1, prepend=0.0)
    ap = np.sum(recall_gain * precision, axis=1)
    return np.where(total[:, 0] > 0, ap / np.where(total[:, 0] > 0, total[:, 0], 1.0), np.nan)


def paired_map_gain(y: np.ndarray, scores_new: np.ndarray, scores_old: np.ndarray, *, rounds: int = 200,
                    seed: int = 0) -> tuple[float, float]:
    """(gain, standard error): mAP(new) - mAP(old) on these images, and the standard deviation (ddof=1) of
    that difference over `rounds` paired bootstrap resamples of the images (the same resample for both
    models; labels without a positive in a resample are left out of both means). Resample r draws the images
    in row r of np.random.default_rng(seed).integers(0, N, (rounds, N)). The error is 0.0 when fewer than
    two resamples hold any positive."""
    yb = np.asarray(y) > 0
    new, old = np.asarray(scores_new, dtype=np.float64), np.asarray(scores_old, dtype=np.float64)
    if new.shape != yb.shape or old.shape != yb.shape:
        raise ValueError(f"shapes disagree: y {yb.shape}, new {new.shape}, old {old.shape}")
    gain = mean_average_precision(yb, new) - mean_average_precision(yb, old)
    n, k = yb.shape
    if n == 0 or rounds < 1:
        return float(gain), 0.0
    draws = np.random.default_rng(seed).integers(0, n, (rounds, n))
    weights = np.bincount((draws + n * np.arange(rounds)[:, None]).ravel(), minlength=rounds * n)
    weights = weights.reshape(rounds, n).astype(np.float64)
    ap_new = np.stack([_bootstrap_ap(yb[:, j], new[:, j], weights) for j in range(k)], axis=1)
    ap_old = np.stack([_bootstrap_ap(yb[:, j], old[:, j], weights) for j in range(k)], axis=1)
    present = ~np.isnan(ap_new)
    usable = present.any(axis=1)
    if usable.sum() < 2:
        return float(gain), 0.0
    count = present[usable].sum(axis=1)
    diff = (np.nansum(ap_new[usable], axis=1) - np.nansum(ap_old[usable], axis=1)) / count
    return float(gain), float(np.std(diff, ddof=1))
