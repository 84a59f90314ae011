"""Multi-label training: sigmoid outputs, their losses, the head chosen on cached features, and the
decisions (a temperature and a threshold per label).

Each label is a yes/no question with its own sigmoid. Two losses: binary cross-entropy, and the
asymmetric loss of Ridnik et al. 2021 ("Asymmetric Loss For Multi-Label Classification"), which
down-weights the many easy negatives (focusing exponent 4 on negatives, 0 on positives) and ignores
negatives the model already gives under 5 % (probability margin 0.05). Both are summed over the labels
and averaged over the images, so that with an L2 penalty |W|^2 / (2 C n) the head is exactly
one-vs-rest logistic regression with scikit-learn's C for binary cross-entropy.

The head is chosen as the single-label one is (selection.py, model/linear.py): candidate L2 strengths fitted by
full-batch L-BFGS on k-1 folds of train+val, folds made by iterative stratification, the winner the
lowest out-of-fold binary cross-entropy (a proper score, whichever loss trains). Its out-of-fold logits
then fit each label's temperature and its threshold for the best F1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..infer import multilabel as ml
from ..model.linear import CS, MAX_CV_IMAGES, Candidate, Selection, fit_logistic, joined, logits
from .decide import fit_label_decision
from .selection import HeadChoice

ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP = 4.0, 0.0, 0.05  # the paper's defaults


def image_losses(z: torch.Tensor, y: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Per-image loss [N], summed over the labels: binary cross-entropy or the asymmetric loss."""
    y = y.to(z.dtype)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(1)
    if kind != "asl":
        raise ValueError(f"unknown multi-label loss {kind!r}: expected bce or asl")
    p = torch.sigmoid(z)
    shifted = (p - ASL_CLIP).clamp(min=0)  # negatives the model already rejects cost nothing
    pos = y * (1 - p).pow(ASL_GAMMA_POS) * F.logsigmoid(z)
    neg = (1 - y) * shifted.pow(ASL_GAMMA_NEG) * torch.log((1 - shifted).clamp(min=1e-8))
    return -(pos + neg).sum(1)


def criterion(kind: str):
    """(logits, 0/1 targets) -> the mean per-image loss: what a training stage minimises."""
    return lambda z, y: image_losses(z.float(), y, kind).mean()


def val_scores(z: np.ndarray, y: np.ndarray) -> dict:
    """What a stage's validation records for multi-label outputs: the loss (binary cross-entropy, summed
    over labels), mAP, and micro- and macro-F1 at a threshold of 0.5."""
    if not len(y):
        return {"val_loss": 0.0, "val_map": 0.0, "val_macro_f1": 0.0, "val_micro_f1": 0.0}
    loss = float(image_losses(torch.from_numpy(np.asarray(z, np.float32)), torch.from_numpy(np.asarray(y))).mean())
    p = ml.sigmoid(z)
    s = ml.scores(y, p >= 0.5)
    return {"val_loss": loss, "val_map": ml.mean_average_precision(y, p), "val_macro_f1": s["macro_f1"], "val_micro_f1": s["micro_f1"]}


def fit_ovr(x: np.ndarray, y: np.ndarray, *, c: float, loss: str = "bce", init=None, max_iter: int = 300):
    """One-vs-rest logistic regression (or the asymmetric loss) on the features, all labels at once ->
    (W [K, D], b [K])."""
    return fit_logistic(x, y, y.shape[1], c=c, init=init, max_iter=max_iter,
                        loss=lambda z, t: image_losses(z, t, loss))


def label_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number of every image, by iterative stratification over the label sets."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    fold = np.empty(len(y), dtype=int)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(y)), np.asarray(y, int))):
        fold[held] = f
    return fold


MAX_SELECTION_LABELS = 64  # the L2 strength is chosen on this many labels at most (see cross_validate_labels)


def cross_validate_labels(x: np.ndarray, y: np.ndarray, *, loss: str = "bce", folds: int = 5, seed: int = 0,
                   cs=CS, sample: np.ndarray | None = None, advance=None) -> Selection:
    """Every L2 strength scored by k-fold cross-validation -> the winner (lowest out-of-fold binary
    cross-entropy), every candidate's out-of-fold figures and the winner's out-of-fold logits of every
    label. `sample` (indices into `x` and `y`): those images only, each fold gathering its own rows of
    `x` (see model/linear.py cross_validate_labels). `advance(1)`, if given, is called after each fold's fits.

    One L2 strength serves all labels, so with more than MAX_SELECTION_LABELS labels it is chosen on a
    random sample of them, and the winner alone is then fitted on every label once per fold for the
    out-of-fold logits the decisions need: k * (len(cs) + 1) fits of 64 labels plus k of all, where
    scoring every strength on every label cost k * len(cs) fits of all (at 300 labels, over 15 minutes).
    The choice's cost no longer grows with the label count; the fits of all labels do, as any one-vs-rest
    model's must."""
    sample = np.arange(len(y)) if sample is None else np.asarray(sample)
    y = y[sample]
    # not fewer folds for a rare label: it lies in one or two folds, and its few positives must not cost
    # every other label its cross-validation (one image of a rare label once made C 0.1 for all)
    k = max(2, min(folds, len(y)))
    fold = label_folds(y, k, seed)
    chosen = selection_labels(y.shape[1], seed)
    oof = {c: np.zeros((len(y), len(chosen)), np.float32) for c in cs}
    for f in range(k):
        tr, te = fold != f, fold == f
        xtr, xte = x[sample[tr]], x[sample[te]]
        head = None
        for c in cs:  # warm start along the path
            head = fit_ovr(xtr, y[tr][:, chosen], c=c, loss=loss, init=head)
            oof[c][te] = logits(xte, head)
        del xtr, xte  # before the next fold's are gathered
        if advance is not None:
            advance(1)
    table = []
    for c, z in oof.items():
        s = val_scores(z, y[:, chosen])
        table.append({"c": c, "weighting": "none", "log_loss": s["val_loss"], "map": s["val_map"],
                      "macro_f1": s["val_macro_f1"], "micro_f1": s["val_micro_f1"], "labels": len(chosen)})
    best = min(table, key=lambda r: (round(r["log_loss"], 6), -r["c"]))
    z = oof[best["c"]]
    if len(chosen) < y.shape[1]:  # the winner's out-of-fold logits of every label
        z = np.zeros(y.shape, np.float32)
        for f in range(k):
            tr, te = fold != f, fold == f
            z[te] = logits(x[sample[te]], fit_ovr(x[sample[tr]], y[tr], c=best["c"], loss=loss))
            if advance is not None:
                advance(1)
    return Selection(Candidate(best["c"]), table, z, k, "map")


def selection_labels(n_labels: int, seed: int) -> np.ndarray:
    """The labels the L2 strength is chosen on: all, or a random MAX_SELECTION_LABELS of them."""
    if n_labels <= MAX_SELECTION_LABELS:
        return np.arange(n_labels)
    return np.sort(np.random.default_rng(seed).choice(n_labels, MAX_SELECTION_LABELS, replace=False))


def selection_steps(n_labels: int, folds: int) -> int:
    """How many times cross_validate_labels calls `advance`: once per fold, twice with sampled labels."""
    return folds * (1 if n_labels <= MAX_SELECTION_LABELS else 2)


def select_label_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                      loss: str = "bce", folds: int = 5, seed: int = 0, advance=None) -> HeadChoice:
    """Cross-validate over train+val, fit the winner on train (fine-tuning's start) and on train+val (the
    head kept alone), and fit the decisions on its out-of-fold logits."""
    x = joined(x_train, x_val)
    y = np.concatenate([y_train, y_val]).astype(np.float32)
    sample = np.arange(len(y))
    if len(y) > MAX_CV_IMAGES:  # a stratified sample: the choice needs no more than this
        sample = np.flatnonzero(label_folds(y, -(-len(y) // MAX_CV_IMAGES), seed) == 0)
    sel = cross_validate_labels(x, y, loss=loss, folds=folds, seed=seed, sample=sample, advance=advance)
    train_head = fit_ovr(x_train, y_train, c=sel.candidate.c, loss=loss, max_iter=500)
    all_head = fit_ovr(x, y, c=sel.candidate.c, loss=loss, max_iter=500)
    train_loss = float(image_losses(torch.from_numpy(logits(x_train, train_head)), torch.from_numpy(y_train),
                                    loss).mean())
    choice = HeadChoice(sel, train_head, all_head, y[sample], None, train_loss)
    choice.decision = fit_label_decision(sel.oof_logits, y[sample],
                                   f"out-of-fold predictions of {len(sample):,} train+val images")
    return choice
