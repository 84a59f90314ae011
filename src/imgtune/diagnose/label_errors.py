"""Likely label errors, found out of sample.

A model judging the images it was trained on has learnt their labels, wrong ones included, so it finds
only the grossest errors. Here every image is judged by a head that never saw it: the cached features
are split into k stratified folds and the run's own head (its L2 strength and class weighting) is
fitted k times, each time without one fold, which it then scores (seconds, on features). The
out-of-fold probabilities go to confident learning (Northcutt et al. 2021, `cleanlab.filter.
find_label_issues`), which estimates how often each class is mislabelled as each other and flags that
many of the least likely labels. Without cleanlab (`pip install 'imgtune[cleanlab]'`) a simple rule on
the same out-of-fold probabilities stands in, and the result says which method found it.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..atomic import write_csv_atomic
from ..infer.calibration import softmax
from ..model.linear import Candidate, fit_candidate, logits, stratified_folds

FOLDS = 5
# the rule that stands in for confident learning: the given label under GIVEN_BELOW while one other
# class is over OTHER_ABOVE (the rule `inspect --run` used before, on in-sample probabilities)
GIVEN_BELOW, OTHER_ABOVE = 0.2, 0.6


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, n_classes: int, *, candidate: Candidate,
                              folds: int = FOLDS, seed: int = 0, advance=None) -> tuple[np.ndarray, np.ndarray]:
    """-> (probabilities [N, K], the fold of every image): row i comes from the head fitted on the
    folds other than image i's. A class with fewer images than folds lands in fewer folds (a class
    with one image is predicted by heads that never saw the class). `advance(1)` after each fold."""
    y = np.asarray(y, int)
    present = np.bincount(y, minlength=n_classes)
    k = int(max(2, min(folds, present[present > 0].max())))
    fold = stratified_folds(y, k, seed)
    probs = np.zeros((len(y), n_classes))
    for f in range(k):
        held_out, seen = fold == f, fold != f
        if not held_out.any():
            continue
        head = fit_candidate(x, y, n_classes, candidate, rows=seen)  # the held-out rows weigh nothing
        probs[held_out] = softmax(logits(x, head)[held_out])
        if advance is not None:
            advance(1)
    return probs, fold


def find_label_issues(probs: np.ndarray, y: np.ndarray) -> tuple[list[int], str]:
    """Rows whose given label `y` looks wrong under the out-of-fold probabilities `probs`, least likely
    label first -> (row indices, the method: "confident learning" or "rule")."""
    y = np.asarray(y, int)
    try:
        from cleanlab.filter import find_label_issues as confident_learning
    except ImportError:
        return _rule(probs, y), "rule"
    if len(np.unique(y)) < 2:
        return [], "confident learning"
    # classes with no image are dropped (cleanlab wants every column to be a class seen in the labels)
    seen = np.unique(y)
    p = probs[:, seen]
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    with warnings.catch_warnings():  # "may not flag all label issues in class ...": small classes, said once
        warnings.simplefilter("ignore", UserWarning)
        ranked = confident_learning(np.searchsorted(seen, y), p, return_indices_ranked_by="self_confidence",
                                    n_jobs=1)
    return [int(i) for i in ranked], "confident learning"


def _rule(probs: np.ndarray, y: np.ndarray) -> list[int]:
    given = probs[np.arange(len(y)), y]
    other = probs.copy()
    other[np.arange(len(y)), y] = -1
    flagged = np.flatnonzero((given < GIVEN_BELOW) & (other.max(axis=1) > OTHER_ABOVE))
    return [int(i) for i in flagged[np.argsort(given[flagged], kind="stable")]]


def label_issue_rows(probs: np.ndarray, y: np.ndarray, rows: list[int], paths: list[str], classes: list[str],
                     splits: list[str] | None = None) -> list[dict]:
    """The issues as label_issues.csv and inspect.json list them: path, split, the given label, the
    suggested one (the most likely other class), and score: the out-of-fold probability of the given label
    (lower is more likely wrong)."""
    out = []
    for i in rows:
        p = probs[i]
        others = p.copy()
        others[y[i]] = -1
        best = int(others.argmax())
        out.append({"path": paths[i], "split": splits[i] if splits else "", "label": classes[y[i]],
                    "suggested": classes[best], "score": float(p[y[i]]), "probability_suggested": float(p[best])})
    return out


CSV_COLUMNS = ("path", "split", "label", "suggested", "score", "probability_suggested")


def write_label_issues(rows: list[dict], output) -> None:
    """label_issues.csv: path, split, the given label, the suggested one, score (the out-of-fold
    probability of the given label; lower is more likely wrong) and the suggested label's probability."""
    write_csv_atomic(output, CSV_COLUMNS, ([r["path"], r.get("split", ""), r["label"], r["suggested"],
                                            f"{r['score']:.6f}", f"{r['probability_suggested']:.6f}"] for r in rows))
