"""The head stage as a model selection on cached features.

The pooled features of every image are cached, so fitting a head costs a fraction of a second: instead
of training one head by SGD and trusting a small validation split, a few candidate heads (L2
strengths, class weightings) are each fitted k times by full-batch L-BFGS on k-1 folds of train+val
and scored on the fold they did not see (model/linear.py). The winner is the candidate with the lowest
out-of-fold log-loss (class-balanced for the class-balanced metrics); its out-of-fold logits then fit
the decision offsets and the temperature (`decide.py`), and it is fitted once more on every image for
the model that is kept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..model.linear import (
    WEIGHTINGS,
    Candidate,
    Search,
    Selection,
    capped_sample,
    class_weights,
    cross_validate,
    fit_candidate,
    head_loss,
    joined,
)
from .decide import Decision, LabelDecision

Split = tuple[np.ndarray, np.ndarray]  # the features and labels of one split


@dataclass
class HeadChoice:
    """The head stage's result: the winning candidate fitted on train (where fine-tuning starts, so that
    validation still judges it) and on train+val (the head kept when fine-tuning is not), with what
    the decisions and the report need."""

    selection: Selection
    train_head: tuple[torch.Tensor, torch.Tensor]
    all_head: tuple[torch.Tensor, torch.Tensor]
    oof_labels: np.ndarray  # labels of the rows of selection.oof_logits: train images, then val images
    class_weights: np.ndarray | None  # the winner's loss weights on the train split (fine-tuning's too)
    train_loss: float  # the train head's own loss on the train features
    decision: "Decision | LabelDecision | None" = None  # fitted on the out-of-fold logits

    def to_dict(self) -> dict:
        """For config.json and the report."""
        s = self.selection
        return {"candidate": {"c": s.candidate.c, "weighting": s.candidate.weighting},
                "description": s.candidate.describe(), "folds": s.folds, "metric": s.metric,
                "images": len(self.oof_labels), "table": s.table,
                "class_weights": None if self.class_weights is None else [float(w) for w in self.class_weights]}

    def to_saved(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON for the head checkpoint, from which `from_saved` rebuilds the choice."""
        tensors = {"train.weight": self.train_head[0], "train.bias": self.train_head[1],
                   "all.weight": self.all_head[0], "all.bias": self.all_head[1],
                   "oof.logits": torch.from_numpy(np.ascontiguousarray(self.selection.oof_logits)),
                   "oof.labels": torch.from_numpy(self.oof_labels.astype(np.int64))}
        return tensors, {"choice": self.to_dict(), "train_loss": self.train_loss,
                         "decision": None if self.decision is None else self.decision.to_dict()}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "HeadChoice":
        c = meta["choice"]
        sel = Selection(Candidate(c["candidate"]["c"], c["candidate"]["weighting"]), c["table"],
                        tensors["oof.logits"].numpy(), c["folds"], c["metric"])
        cw = None if c["class_weights"] is None else np.asarray(c["class_weights"])
        d = meta.get("decision")
        if d is None:
            decision = None
        elif "thresholds" in d:  # multi-label
            decision = LabelDecision.from_dict(d)
        else:
            decision = Decision(tuple(d["offsets"]), d["temperature"], tuple(d["offsets_log_prob"]), d["metric"],
                                d["fitted_on"])
        labels = tensors["oof.labels"].numpy()
        return cls(sel, (tensors["train.weight"], tensors["train.bias"]), (tensors["all.weight"], tensors["all.bias"]),
                   labels.astype(np.float32 if labels.ndim == 2 else int), cw, meta["train_loss"], decision)

    def describe(self) -> str:
        s = self.selection
        best = next(r for r in s.table if r["c"] == s.candidate.c and r["weighting"] == s.candidate.weighting)
        name = "mAP" if s.metric == "map" else s.metric.replace("_", " ")
        n_labels = self.oof_labels.shape[1] if self.oof_labels.ndim == 2 else 0  # multi-label: sampled?
        labels = f" and {best['labels']} of its {n_labels:,} labels" if best.get("labels", n_labels) < n_labels else ""
        how = f"chosen from {len(s.table)} candidates by" if len(s.table) > 1 else "as given, scored by"
        return (f"Head: {s.candidate.describe()}, {how} {s.folds}-fold cross-validation on "
                f"{len(self.oof_labels):,} images{labels} (out-of-fold {name} {best[s.metric]:.4f}).")

    def probe(self) -> Candidate | None:
        """The logistic-regression baseline among the candidates: no class weights, best out-of-fold
        accuracy (scikit-learn's LogisticRegression with C chosen by k-fold accuracy); None where no
        candidate was without class weights."""
        return probe_of(self.selection.table)


def probe_of(table: list[dict]) -> Candidate | None:
    """The plain logistic regression among a selection's scored candidates (its `table`): no class
    weights, best out-of-fold accuracy; None where every candidate had class weights."""
    rows = [r for r in table if r["weighting"] == "none"]
    if not rows:
        return None
    best = max(rows, key=lambda r: (round(r["accuracy"], 6), -r["log_loss"], -r["c"]))
    return Candidate(best["c"], "none")


def select_head(train: Split, val: Split, n_classes: int, search: Search, advance=None) -> HeadChoice:
    """Cross-validate the candidates over train+val, then fit the winner on train and on train+val.
    Class weightings other than none are tried only for the class-balanced metrics and where the classes
    differ in size (1.5x or more). For accuracy every image counts the same, which is what the plain
    likelihood fits: on the clip art the sqrt-weighted head won the cross-validated log-loss by 0.001
    and was 0.9 points less accurate on the held-out drawings. `train`, `val`: (features, labels)."""
    (x_train, y_train), (x_val, y_val) = train, val
    x = joined(x_train, x_val)
    y = np.concatenate([y_train, y_val]).astype(int)
    counts = np.bincount(y_train, minlength=n_classes)
    if search.weightings is None and not search.pairs:
        imbalanced = counts.max() >= 1.5 * max(1, counts[counts > 0].min())
        search = dataclasses.replace(search, weightings=WEIGHTINGS if imbalanced and search.metric != "accuracy"
                                     else ("none",))
    sample = capped_sample(y, search.seed)  # the choice needs no more than this
    sel = cross_validate(x, y, n_classes, search, sample=sample, advance=advance)
    train_head = fit_candidate(x_train, y_train, n_classes, sel.candidate)
    all_head = fit_candidate(x, y, n_classes, sel.candidate)
    cw = class_weights(np.asarray(y_train, int), n_classes, sel.candidate.weighting) \
        if sel.candidate.weighting != "none" else None
    return HeadChoice(sel, train_head, all_head, y[sample], cw, head_loss(x_train, y_train, train_head, cw))
