"""A run's diagnosis, made at the end of `train` from the cached features (RUN/diagnosis.json): the
likely label errors among the training and validation images (out of fold) and the per-class learning
curve. The report turns it into "what to do next" (next_steps.py)."""

from __future__ import annotations

import numpy as np

from ..model.linear import Candidate, capped_sample, joined
from . import learning_curve
from .label_errors import find_label_issues, label_issue_rows, out_of_fold_probabilities


def diagnose(splits: dict[str, tuple[np.ndarray, np.ndarray]], paths: dict[str, list[str]], classes: list[str],
             candidate: Candidate, eval_split: str, seed: int = 0, oof: np.ndarray | None = None) -> dict:
    """`splits`: split -> (cached features, class indices); `paths`: split -> the files of those rows.
    The learning curve scores heads fitted on fractions of train on `eval_split`; a train split larger
    than MAX_CV_IMAGES is sampled (stratified) first, as the head selection does. `oof`: out-of-fold
    probabilities of `candidate` on train then val, when the head selection has them already."""
    k = len(classes)
    (x, y), (xv, yv) = splits["train"], splits["val"]
    # The curve first: its fits gather up to MAX_CV_IMAGES rows each, and they are let go before confident
    # learning loads scikit-learn and cleanlab (which stay loaded), so the two never add up.
    sample = capped_sample(y, seed)
    xe, ye = splits[eval_split]
    curve = learning_curve.measure(x, y, xe, ye, k, candidate=candidate, seed=seed, sample=sample)
    curve.update(split=eval_split, sampled=len(sample) < len(y))
    xa, ya = joined(x, xv), np.concatenate([y, yv]).astype(int)
    names = paths["train"] + paths["val"]
    probs = oof if oof is not None else out_of_fold_probabilities(xa, ya, k, candidate=candidate, seed=seed)[0]
    rows, method = find_label_issues(probs, ya)
    issues = {"method": method, "judged": len(ya), "split": "train+val",
              "rows": label_issue_rows(probs, ya, rows, names, classes,
                                       ["train"] * len(y) + ["val"] * len(yv))}
    return {"label_issues": issues, "learning_curve": curve}
