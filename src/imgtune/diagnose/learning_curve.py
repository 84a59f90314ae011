"""What more images of each class would buy: a learning curve per class from the cached features.

The run's head is fitted on 25, 50, 75 and 100 % of the training images (a stratified subsample, several
seeds) and scored per class on the evaluation split. Each class's error rate then gets a power law in
its number of training images, err(n) = a * n^-b (a straight line in log-log; b is clipped at 0), the
form learning curves take over the range a data set grows by (Hestness et al. 2017), its exponent shrunk
half-way to the overall curve's (SHRINK); b < 0.1 is "flat". The forecast for k times the images scales
the class's error by k^-b: applied to the model's measured per-class accuracy, "Shirt: 0.62 now, about
0.68 with twice the images".

Head fits on frozen features are a stand-in for the whole model (fine-tuning gains on top), so the
forecast is a ranking of where images help most with a rough size, not a promise.
"""

from __future__ import annotations

import numpy as np

from ..model.linear import Candidate, fit_candidate, logits

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SEEDS = 3
# "flat": an error that falls by under 7 % per doubling of the images (b < 0.1); a class near 100 % may
# gain little without being flat
FLAT_EXPONENT = 0.1
# A class's exponent from four noisy points varies widely (0.04 to 0.49 on Fashion-MNIST at 250 per
# class); it is taken half-way to the exponent of the overall error curve, which four times as many
# images measure. Over 4 draws of 250 per class forecasting 500, the mean absolute error of the per-class
# forecast was 0.0118 shrunk, 0.0132 with each class's own exponent, 0.0158 for "no change"
# (BENCHMARKS.md, "Diagnosis").
SHRINK = 0.5


def subsample(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of round(fraction * n_c) images of every class c (at least one), drawn without replacement."""
    picks = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take = max(1, int(round(fraction * len(idx))))
        picks.append(rng.choice(idx, take, replace=False) if take < len(idx) else idx)
    return np.sort(np.concatenate(picks))


def measure(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray, n_classes: int, *,
            candidate: Candidate, seed: int = 0, sample: np.ndarray | None = None) -> dict:
    """Per-class accuracy (recall) on the evaluation images of heads fitted on fractions of the
    training images -> {"fractions", "train_per_class": [fraction][class] images, "accuracy":
    [fraction][class] (mean over SEEDS draws), "overall": [fraction]}, at each of FRACTIONS. The whole set is one fit (no seed
    changes it). `sample` (indices into the training images): those only, each fit gathering its own
    rows of `x_train`."""
    sample = np.arange(len(y_train)) if sample is None else np.asarray(sample)
    y_train, y_eval = np.asarray(y_train, int)[sample], np.asarray(y_eval, int)
    counts_eval = np.bincount(y_eval, minlength=n_classes)
    rows = {"fractions": list(FRACTIONS), "train_per_class": [], "accuracy": [], "overall": []}
    heads = {}  # each draw's fit starts from the same draw's fit on the fraction before (a warm start)
    for f in FRACTIONS:
        runs = 1 if f >= 1 else SEEDS
        acc, overall, n = np.zeros(n_classes), 0.0, np.zeros(n_classes)
        for s in range(runs):
            idx = subsample(y_train, f, np.random.default_rng([seed, s, int(f * 1000)]))
            head = heads[s] = fit_candidate(x_train[sample[idx]], y_train[idx], n_classes, candidate,
                                            init=heads.get(s))
            pred = logits(x_eval, head).argmax(1)
            right = np.bincount(y_eval[pred == y_eval], minlength=n_classes)
            acc += right / np.maximum(counts_eval, 1)
            overall += float((pred == y_eval).mean())
            n += np.bincount(y_train[idx], minlength=n_classes)
        rows["train_per_class"].append((n / runs).tolist())
        rows["accuracy"].append((acc / runs).tolist())
        rows["overall"].append(overall / runs)
    rows["eval_per_class"] = counts_eval.tolist()
    return rows


def fit_power_law(n: np.ndarray, error: np.ndarray, floor: float) -> tuple[float, float]:
    """err(n) = a * n^-b by least squares in log-log on the points (n, error), errors floored at `floor`
    (half an image of the evaluation split: a measured 0 has no logarithm) -> (a, b), b >= 0."""
    n, e = np.asarray(n, float), np.maximum(np.asarray(error, float), floor)
    keep = n > 0
    if keep.sum() < 2 or np.ptp(np.log(n[keep])) == 0:
        return float(e[keep].mean()) if keep.any() else floor, 0.0
    slope, intercept = np.polyfit(np.log(n[keep]), np.log(e[keep]), 1)
    b = max(0.0, -float(slope))
    if b == 0.0:  # flat: the level is the mean error
        return float(e[keep].mean()), 0.0
    return float(np.exp(intercept)), b


def forecast(curve: dict, classes: list[str], now: dict[str, float] | None = None, factor: float = 2.0) -> list[dict]:
    """Per class: the fitted exponent, the accuracy now (the model's measured per-class accuracy where
    `now` gives it, else the curve's at 100 %) and about `factor` times the images, largest gain first."""
    n = np.asarray(curve["train_per_class"], float)  # [fractions, classes]
    acc = np.asarray(curve["accuracy"], float)
    pooled = fit_power_law(n.mean(axis=1), 1 - np.asarray(curve["overall"], float),
                           0.5 / max(1, sum(curve["eval_per_class"])))[1]
    out = []
    for j, name in enumerate(classes):
        floor = 0.5 / max(1, curve["eval_per_class"][j])
        if curve["eval_per_class"][j] == 0:
            continue
        own = fit_power_law(n[:, j], 1 - acc[:, j], floor)[1]
        b = SHRINK * pooled + (1 - SHRINK) * own
        current = float(now[name]) if now and name in now else float(acc[-1, j])
        later = 1 - (1 - current) * factor ** -b
        out.append({"class": name, "images": float(n[-1, j]), "exponent": b, "class_exponent": own,
                    "overall_exponent": pooled, "now": current,
                    "forecast": later, "gain": later - current, "factor": factor, "flat": b < FLAT_EXPONENT})
    out.sort(key=lambda r: (-r["gain"], r["class"]))
    return out


def forecast_line(row: dict) -> str:
    """"Shirt: 0.62 now, about 0.68 with twice the images" or "Bag: flat (0.97 now)"."""
    if row["flat"]:
        return f"{row['class']}: flat ({row['now']:.2f} now)"
    times = "twice the" if row["factor"] == 2 else f"{row['factor']:g}x the"
    return f"{row['class']}: {row['now']:.2f} now, about {row['forecast']:.2f} with {times} images"
