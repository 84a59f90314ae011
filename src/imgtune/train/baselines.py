"""The simple baselines every run is held against, on the same split and the same cached features:

- the majority class: always answer the largest training class;
- the logistic-regression probe: scikit-learn's `StandardScaler` + `LogisticRegression` on the pooled
  backbone features, its C chosen by stratified k-fold cross-validation on the training features.

The probe is deliberately scikit-learn's and not imgtune's own head code, so that it is an independent
check: a trained model below it has a problem that a logistic regression on the same features does not.
"""

from __future__ import annotations

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


def run_baselines(choice, feats: dict, split: str, rows: list[int], classes: list[str], seed: int) -> dict:
    """The majority class and the logistic-regression probe of a run, on `rows` of `split` (those that
    were evaluated), from its cached features. The probe is the head selection's own logistic regression
    without class weights, its C cross-validated (reused from the selection when it ran)."""
    from ..model.linear import Search, fit_candidate, joined
    from ..model.linear import logits as selection_logits
    from .decide import scores
    from .selection import select_head

    (x, y), (xv, yv) = feats["train"], feats["val"]
    xe, ye = feats[split]
    ye = ye[rows]
    n_classes = len(classes)
    majority = majority_class(y, n_classes)
    out = {"majority": {"class": classes[majority], **scores(ye, np.full(len(ye), majority), n_classes)}}
    probe = choice.probe() if choice is not None else None
    if probe is None:  # no selection ran, or none of its candidates was plain: cross-validate C now (seconds)
        probe = select_head((x, y), (xv, yv), n_classes, Search.plain("accuracy", seed)).probe()
    head = fit_candidate(joined(x, xv), np.concatenate([y, yv]), n_classes, probe)
    out["logistic_probe"] = {"c": probe.c, **scores(ye, selection_logits(xe, head)[rows].argmax(1), n_classes)}
    return out


def run_multilabel_baselines(choice, feats: dict, split: str, rows: list[int], seed: int) -> dict:
    """A multi-label run's baselines on `rows` of `split`: the label priors (every image scored with each
    label's share of the training images, and every label given to every image, the best constant
    decision for F1), and one-vs-rest logistic regression on the same cached features, its C chosen by
    cross-validation, deciding at 0.5."""
    from ..infer import multilabel as ml
    from ..model.linear import logits as selection_logits
    from .multilabel import select_label_head

    (x, y), (xv, yv) = feats["train"], feats["val"]
    xe, ye = feats[split]
    ye = ye[rows]
    prior = np.broadcast_to(y.mean(0), ye.shape)
    out = {"prior": {"map": ml.mean_average_precision(ye, prior), "macro_f1": ml.scores(ye, np.ones(ye.shape, bool))["macro_f1"],
                     "description": "each label's training share as its score; every label on every image"}}
    if choice is None:  # no selection ran: cross-validate C now (seconds)
        choice = select_label_head(x, y, xv, yv, seed=seed)
    p = ml.sigmoid(selection_logits(xe, choice.all_head))
    out["logistic"] = {"c": choice.selection.candidate.c, "map": ml.mean_average_precision(ye, p),
                       "macro_f1": ml.scores(ye, p >= 0.5)["macro_f1"],
                       "description": f"one-vs-rest logistic regression, C={choice.selection.candidate.c:g} by "
                                      "cross-validation, threshold 0.5"}
    return out
