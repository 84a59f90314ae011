"""The simple baselines every run is held against, on the same split and the same cached features:

- the majority class: always answer the largest training class;
- the logistic-regression probe: scikit-learn's `StandardScaler` + `LogisticRegression` on the pooled
  backbone features, its C chosen by stratified k-fold cross-validation on the training features.

The probe is deliberately scikit-learn's and not imgtune's own head code, so that it is an independent
check: a trained model below it has a problem that a logistic regression on the same features does not.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

PROBE_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # inverse L2 strength on standardised features


def majority_class(y_train: np.ndarray, n_classes: int) -> int:
    return int(np.bincount(np.asarray(y_train, int), minlength=n_classes).argmax())


def logistic_probe(x_train: np.ndarray, y_train: np.ndarray, *, folds: int = 5, seed: int = 0,
                   cs=PROBE_CS):
    """A fitted scikit-learn pipeline (StandardScaler + LogisticRegression, C by k-fold accuracy), or
    None when the training set is too small to cross-validate (a class with fewer than 2 images)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train = np.asarray(y_train, int)
    smallest = np.bincount(y_train)[np.unique(y_train)].min() if len(y_train) else 0
    if smallest < 2 or len(np.unique(y_train)) < 2:
        return None
    k = int(min(folds, smallest))
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    search = GridSearchCV(pipe, {"logisticregression__C": list(cs)},
                          cv=StratifiedKFold(k, shuffle=True, random_state=seed), n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(np.asarray(x_train, np.float64), y_train)
    return search.best_estimator_


def baseline_lines(metrics: dict) -> list[str]:
    """The console's lines on the baselines of a metrics document: the scores, then a warning in plain
    words for each baseline the model is below (by more than one image's worth)."""
    b = metrics.get("baselines")
    if not b:
        return []
    n = max(1, metrics.get("n_images", 1))
    maj, probe = b["majority"], b["logistic_probe"]
    lines = [f"Baselines on the same split: always {maj['class']!r} {maj['accuracy']:.4f} accuracy, "
             f"{maj['macro_f1']:.4f} macro-F1; logistic regression on the same features (C={probe['c']:g}) "
             f"{probe['accuracy']:.4f} accuracy, {probe['macro_f1']:.4f} macro-F1."]
    for name, base in (("always answering the largest class", maj), ("a logistic regression on the same features",
                                                                     probe)):
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            gap = base[key] - metrics[key]
            if gap > 1 / n:
                # the standard error of a score near this one on n images: a gap under twice it may be luck
                se = math.sqrt(max(base[key] * (1 - base[key]), 1 / n) / n)
                noise = (f" (within the noise of {n:,} images, +-{2 * se * 100:.1f} points)" if gap < 2 * se
                         else "")
                lines.append(f"warning: the model is below {name} in {label}: {metrics[key]:.2f} against "
                             f"{base[key]:.2f}{noise}.")
    return lines
