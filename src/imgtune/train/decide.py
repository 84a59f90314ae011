"""Decisions from logits, fitted for the metric the user asked for (the pipeline's "decide" step).

A model trained on imbalanced data ranks its classes well but sets its thresholds for the training
priors: argmax favours the large classes, which is right for accuracy and wrong for balanced accuracy
or macro-F1. Rather than distort training with heavy class weights, the run fits one offset per class
(logit adjustment) on held-out predictions, to maximise the chosen metric, and a temperature so that the
adjusted probabilities say how often they are right:

    probabilities = softmax((logits + offsets) / temperature)

Offsets are fitted in calibrated units (log-probabilities, logits / T0) so that they carry over from
the head, whose out-of-fold predictions fit them, to a fine-tuned model with another logit scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import METRICS
from ..infer import multilabel as ml
from ..infer.calibration import fit_temperature
from ..metrics import score

OFFSET_RANGE = 6.0  # log-probability units either way: an imbalance of e^6 ~ 400 at most
OFFSET_STEP = 0.1
MIN_POSITIVES = 10  # a label's threshold is fitted on validation only with this many positives there


def fit_offsets(log_probs: np.ndarray, y: np.ndarray, metric: str, *, sweeps: int = 3) -> np.ndarray:
    """Per-class offsets b that maximise metric(argmax(log_probs + b)) on these (held-out) predictions:
    coordinate ascent over a grid, each class in turn, a few sweeps. A move must gain more than one
    image's worth of the metric, and among equal scores the offset nearest 0 wins, so that noise in
    small data sets leaves the offsets at 0. The offsets are returned centred on 0."""
    z = np.asarray(log_probs, np.float64)
    y = np.asarray(y, int)
    n, k = z.shape
    b = np.zeros(k)
    if n == 0 or k < 2:
        return b
    grid = np.arange(-OFFSET_RANGE, OFFSET_RANGE + 1e-9, OFFSET_STEP)
    tol = 1.0 / n  # one image's worth

    def value(offsets):
        return score(y, (z + offsets).argmax(1), metric, k)

    best = value(b)
    for _ in range(sweeps):
        moved = False
        for c in range(k):
            trial = b.copy()
            scores = []
            for g in grid:
                trial[c] = g
                scores.append(value(trial))
            scores = np.asarray(scores)
            top = scores.max()
            if top <= best + tol:
                continue
            near = np.flatnonzero(scores >= top - 1e-12)
            b[c] = grid[near[np.argmin(np.abs(grid[near]))]]
            best = top
            moved = True
        if not moved:
            break
    return b - b.mean()


def offsets_that_generalise(log_probs: np.ndarray, y: np.ndarray, metric: str, *, seed: int = 0) -> np.ndarray:
    """`fit_offsets`, kept only if offsets fitted on one half of these predictions also raise the metric
    on the other half (2-fold cross-fitting, both ways) by more than the bootstrap noise of that gain: on
    balanced classes, and mostly for accuracy, the fitted offsets are noise, and then they are all 0."""
    z, y = np.asarray(log_probs, np.float64), np.asarray(y, int)
    k = z.shape[1]
    rng = np.random.default_rng(seed)
    half = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        half[idx[: len(idx) // 2]] = True
    pred = z.argmax(1)
    crossed = pred.copy()
    for part in (half, ~half):
        if part.sum() and (~part).sum():
            b = fit_offsets(z[~part], y[~part], metric)
            crossed[part] = (z[part] + b).argmax(1)
    gain, noise = paired_gain(y, crossed, pred, metric, k, rounds=200, seed=seed)
    if gain <= noise:  # what the offsets bought on the half they did not see is within its noise
        return np.zeros(k)
    return fit_offsets(z, y, metric)


@dataclass(frozen=True)
class Decision:
    """How logits become a decision and probabilities: offsets on the model's own logit scale, then a
    temperature. `offsets_log_prob` are the same offsets in calibrated units (before the temperature
    was refitted): what carries over to another model."""

    offsets: tuple[float, ...]
    temperature: float
    offsets_log_prob: tuple[float, ...]
    metric: str
    fitted_on: str  # a sentence: which predictions the offsets and temperature were fitted on

    def adjusted(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits) + np.asarray(self.offsets)

    def to_dict(self) -> dict:
        return {"offsets": list(self.offsets), "temperature": self.temperature,
                "offsets_log_prob": list(self.offsets_log_prob), "metric": self.metric, "fitted_on": self.fitted_on}


def decide(logits: np.ndarray, y: np.ndarray, metric: str, *, fitted_on: str,
           offsets_log_prob: np.ndarray | None = None, offsets: bool = True) -> Decision:
    """Fit the offsets (unless given, in calibrated units, from another model's held-out predictions;
    none with `offsets=False`) and the temperature on held-out `logits` and their labels."""
    z = np.asarray(logits, np.float64)
    k = z.shape[1] if z.ndim == 2 else 0
    t0 = fit_temperature(z, y)
    if offsets_log_prob is not None:
        b = np.asarray(offsets_log_prob, float)
    else:
        b = offsets_that_generalise(z / t0, y, metric) if offsets else np.zeros(k)
    raw = b * t0
    t = fit_temperature(z + raw, y)
    return Decision(tuple(float(v) for v in raw), float(t), tuple(float(v) for v in b), metric, fitted_on)


def decisions_with(logits: np.ndarray, y: np.ndarray, offsets_log_prob: np.ndarray) -> np.ndarray:
    """The decisions of a model's held-out `logits` under calibrated offsets: argmax(logits / T + b),
    T fitted on these logits and labels (the temperature does not change argmax, but the offsets are
    in calibrated units)."""
    z = np.asarray(logits, np.float64)
    return (z / fit_temperature(z, y) + np.asarray(offsets_log_prob)).argmax(1)


def scores(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy, balanced accuracy and macro-F1 of these decisions."""
    return {m: score(y, pred, m, n_classes) for m in METRICS}


def decision_line(d: Decision, classes: list[str]) -> str:
    moved = [(c, b) for c, b in zip(classes, d.offsets_log_prob) if abs(b) >= 0.05]
    offsets = (", offsets " + ", ".join(f"{c} {b:+.1f}" for c, b in moved)) if moved else ", no offsets"
    return (f"Decisions for {d.metric.replace('_', ' ')}: temperature {d.temperature:.3f}{offsets} "
            f"(fitted on {d.fitted_on}).")


def paired_gain(y: np.ndarray, pred_new: np.ndarray, pred_old: np.ndarray, metric: str, n_classes: int, *,
                rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(metric(new) - metric(old), its bootstrap standard error): the images resampled together for
    both, so that only where they disagree counts."""
    y, a, b = (np.asarray(v, int) for v in (y, pred_new, pred_old))
    gain = score(y, a, metric, n_classes) - score(y, b, metric, n_classes)
    if len(y) < 2:
        return gain, float("inf")
    rng = np.random.default_rng(seed)
    diffs = np.empty(rounds)
    for r in range(rounds):
        i = rng.integers(0, len(y), len(y))
        diffs[r] = score(y[i], a[i], metric, n_classes) - score(y[i], b[i], metric, n_classes)
    return gain, float(diffs.std())


def decision_for_kept(recipe, choice, tuned: bool, val_logits: np.ndarray, val_y: np.ndarray) -> Decision:
    """The offsets and temperature of the model that is kept. The head alone: those fitted on its
    out-of-fold predictions over train+val. A fine-tuned model: the head's offsets (in calibrated
    units), its own temperature on validation. The seed recipe's: a temperature, no offsets."""
    if choice is not None and not tuned:
        return choice.decision
    if choice is not None:
        return decide(val_logits, val_y, recipe.metric, offsets_log_prob=choice.decision.offsets_log_prob,
                      fitted_on=f"validation ({len(val_y):,} images); offsets from the head's out-of-fold "
                                "predictions")
    return decide(val_logits, val_y, recipe.metric, offsets=False,
                  fitted_on=f"validation ({len(val_y):,} images); no offsets (the {recipe.name} recipe)")


@dataclass(frozen=True)
class LabelDecision:
    """How logits become label sets: probabilities sigmoid(logits / temperature) per label, a label
    given where its probability reaches its threshold."""

    temperature: tuple[float, ...]
    thresholds: tuple[float, ...]
    fitted_on: str
    metric: str = "map"

    def to_dict(self) -> dict:
        return {"temperature": list(self.temperature), "thresholds": list(self.thresholds),
                "fitted_on": self.fitted_on, "metric": self.metric}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelDecision":
        return cls(tuple(d["temperature"]), tuple(d["thresholds"]), d["fitted_on"], d.get("metric", "map"))

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        return ml.sigmoid(np.asarray(z, np.float64) / np.asarray(self.temperature))


def fit_label_decision(z: np.ndarray, y: np.ndarray, fitted_on: str, *, fallback: LabelDecision | None = None
                 ) -> LabelDecision:
    """Per label: the temperature on these held-out logits, then the threshold that maximises its F1 on
    the calibrated probabilities. A label with fewer than MIN_POSITIVES positives here has too few to fit
    either on (two positives once gave a threshold of 0.008, and the label was predicted on every image):
    it keeps `fallback`'s threshold where one is given (the head's, fitted out of fold on more images),
    else the neutral 0.5, and temperature 1."""
    few = np.asarray(y).sum(0) < MIN_POSITIVES
    t = np.where(few, 1.0, ml.fit_label_temperatures(z, y))
    p = ml.sigmoid(np.asarray(z, np.float64) / t)
    thr = np.where(few, 0.5, ml.fit_thresholds(p, y))
    if few.any():
        kept = "keep the head's thresholds" if fallback is not None else "keep threshold 0.5"
        if fallback is not None:
            thr = np.where(few, np.asarray(fallback.thresholds), thr)
        fitted_on += f"; {int(few.sum())} label(s) with under {MIN_POSITIVES} positives there {kept} and temperature 1"
    return LabelDecision(tuple(float(v) for v in t), tuple(float(v) for v in thr), fitted_on)


def label_decision_line(d: LabelDecision, labels: list[str]) -> str:
    shown = ", ".join(f"{c} {t:.2f}" for c, t in zip(labels[:8], d.thresholds))
    more = f", and {len(labels) - 8} more" if len(labels) > 8 else ""
    return (f"Decisions for per-label F1: thresholds {shown}{more}; a temperature per label (fitted on "
            f"{d.fitted_on}).")
