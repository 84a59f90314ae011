"""Two models' predictions on the same labelled images, side by side: overall and per-class accuracy,
precision, recall and F1 of each, every difference with its paired-bootstrap interval (the images
resampled together for both, so that only where the two disagree counts), the images that went from
wrong to right and from right to wrong, and a verdict in plain words."""

from __future__ import annotations

import numpy as np

from ..metrics import confusion_matrix, macro_scores, per_class

ROUNDS = 1000
Z95 = 1.96  # a difference is "beyond the noise" where its 95 % interval leaves out 0


def scores(y: np.ndarray, pred: np.ndarray, n: int) -> dict:
    """accuracy, macro-F1 and per-class precision / recall / F1 (recall is the class's accuracy)."""
    pc = per_class(confusion_matrix(y, pred, n))
    return {"accuracy": float(np.mean(pred == y)) if len(y) else 0.0, "macro_f1": macro_scores(pc)[1],
            "precision": np.asarray(pc["precision"], float), "recall": np.asarray(pc["recall"], float),
            "f1": np.asarray(pc["f1"], float)}


def compare(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, classes: list[str], paths: list[str], *,
            rounds: int = ROUNDS, seed: int = 0) -> dict:
    """The comparison document (compare.json): B against A on the images `paths` with labels `y`."""
    y, a, b = (np.asarray(v, int) for v in (y, pred_a, pred_b))
    n = len(classes)
    sa, sb = scores(y, a, n), scores(y, b, n)
    boot = _bootstrap(y, a, b, n, rounds, seed)
    overall = {k: _difference(sa[k], sb[k], boot[k]) for k in ("accuracy", "macro_f1")}
    support = np.bincount(y, minlength=n)
    per = {c: {"support": int(support[j]),
               **{k: _difference(float(sa[k][j]), float(sb[k][j]), boot[k][:, j]) for k in ("recall", "precision", "f1")}}
           for j, c in enumerate(classes)}
    fixed = [_flip(i, y, a, b, classes, paths) for i in np.flatnonzero((a != y) & (b == y))]
    broken = [_flip(i, y, a, b, classes, paths) for i in np.flatnonzero((a == y) & (b != y))]
    doc = {"n_images": int(len(y)), "classes": list(classes), "overall": overall, "per_class": per,
           "wrong_to_right": fixed, "right_to_wrong": broken, "bootstrap_rounds": rounds}
    doc["verdict"] = verdict(doc)
    return doc


def _bootstrap(y, a, b, n, rounds, seed) -> dict[str, np.ndarray]:
    """B - A of every score over `rounds` resamples of the images: {score: [rounds] or [rounds, n]}."""
    rng = np.random.default_rng(seed)
    out = {"accuracy": np.empty(rounds), "macro_f1": np.empty(rounds),
           **{k: np.empty((rounds, n)) for k in ("recall", "precision", "f1")}}
    for r in range(rounds):
        i = rng.integers(0, len(y), len(y))
        sa, sb = scores(y[i], a[i], n), scores(y[i], b[i], n)
        for k in out:
            out[k][r] = np.asarray(sb[k]) - np.asarray(sa[k])
    return out


def _difference(a: float, b: float, draws: np.ndarray) -> dict:
    """A, B, B - A and the half-width of its 95 % interval (1.96 bootstrap standard errors)."""
    return {"a": a, "b": b, "difference": b - a, "interval": float(Z95 * np.std(draws)) if len(draws) else 0.0}


def _flip(i: int, y, a, b, classes, paths) -> dict:
    return {"path": paths[i], "true": classes[y[i]], "a": classes[a[i]], "b": classes[b[i]]}


def beyond_noise(d: dict) -> bool:
    return abs(d["difference"]) > d["interval"] and d["difference"] != 0


def verdict(doc: dict) -> str:
    """One line: the overall difference, then the classes whose accuracy (recall) moved beyond the noise,
    e.g. "B is better on Shirt by 6.0 points (±3.1); the rest within noise"."""
    acc = doc["overall"]["accuracy"]
    if beyond_noise(acc):
        head = (f"B is {'more' if acc['difference'] > 0 else 'less'} accurate overall by "
                f"{abs(acc['difference']) * 100:.1f} points (±{acc['interval'] * 100:.1f})")
    else:
        head = (f"overall accuracy within noise ({acc['difference'] * 100:+.1f} points, "
                f"±{acc['interval'] * 100:.1f})")
    moved = sorted(((c, d["recall"]) for c, d in doc["per_class"].items() if beyond_noise(d["recall"])),
                   key=lambda cd: -abs(cd[1]["difference"]))
    better = [f"{c} by {d['difference'] * 100:.1f} points (±{d['interval'] * 100:.1f})" for c, d in moved
              if d["difference"] > 0]
    worse = [f"{c} by {-d['difference'] * 100:.1f} points (±{d['interval'] * 100:.1f})" for c, d in moved
             if d["difference"] < 0]
    parts = [head]
    if better:
        parts.append(f"better on {', '.join(better)}")
    if worse:
        parts.append(f"worse on {', '.join(worse)}")
    rest = len(doc["per_class"]) - len(moved)
    if rest:
        parts.append("every class within noise" if not moved else f"the other {rest} within noise" if rest > 1
                     else "the other class within noise")
    return "; ".join(parts) + "."
