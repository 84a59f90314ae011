"""The report's "what to do next": the run's problems worst first, each with its evidence.

Every line carries `impact`, a rough size in points of accuracy on the evaluated images (a class's gap
times its share, the share of images that look mislabelled, a baseline's lead, ...), which orders them;
it is a ranking device, said as such, not a promise. Built from metrics.json, the diagnosis (label
errors found out of fold, per-class learning curves) and, where `inspect` wrote one into the run
folder, the data audit.
"""

from __future__ import annotations

import numpy as np

from ..metrics import noise_of_gap
from .learning_curve import forecast, forecast_line

WEAK_GAP = 0.05  # a class this far under the mean per-class accuracy is named
CALIBRATION_ECE = 0.05
IMBALANCE = 5.0
SHARED = 0.5  # flagged on at least this share of the images: a property of the data, not files to fix


def next_steps(metrics: dict, config: dict, diagnosis: dict | None = None, audit: dict | None = None,
               run: str = "RUN") -> list[dict]:
    """-> [{"impact", "text", "evidence"}], largest impact first."""
    if metrics.get("task") == "multi":
        return []
    steps = []
    pc = metrics["per_class"]
    n = max(1, metrics["n_images"])
    curve = (diagnosis or {}).get("learning_curve")
    gains = {r["class"]: r for r in forecast(curve, metrics["classes"], {c: v["accuracy"] for c, v in pc.items()})} \
        if curve else {}
    steps += _baselines(metrics, n)
    steps += _weak_classes(metrics, gains)
    steps += _more_data(gains, pc, n)
    steps += _label_issues((diagnosis or {}).get("label_issues"), run)
    steps += _audit(audit)
    steps += _imbalance(metrics, config)
    if metrics.get("ece", 0) > CALIBRATION_ECE:
        steps.append({"impact": 0.0, "text": "Probabilities are off even after temperature scaling: do not read "
                      "them as chances without checking", "evidence": f"ECE {metrics['ece']:.3f} on {n:,} images"})
    steps.sort(key=lambda s: (s.get("property_of_data", False), -s["impact"]))  # a property of the data last
    return steps


def _baselines(m: dict, n: int) -> list[dict]:
    probe = (m.get("baselines") or {}).get("logistic_probe")
    if not probe or probe["accuracy"] - m["accuracy"] < max(1 / n, noise_of_gap(probe["accuracy"], n)):
        return []  # level within the noise of the split: nothing to fix
    gap = probe["accuracy"] - m["accuracy"]
    return [{"impact": gap, "text": "A logistic regression on the same features beats this model: try "
             "--epochs 0 (the head alone) or another --recipe, and look at the training curves",
             "evidence": f"accuracy {m['accuracy']:.4f} against {probe['accuracy']:.4f} for the probe"}]


def _weak_classes(m: dict, gains: dict) -> list[dict]:
    pc, classes = m["per_class"], m["classes"]
    mean = float(np.mean([v["accuracy"] for v in pc.values()]))
    cm = np.asarray(m["confusion_matrix"])
    total = max(1, cm.sum())
    out = []
    for i, c in enumerate(classes):
        acc, support = pc[c]["accuracy"], pc[c]["support"]
        if support == 0 or mean - acc < WEAK_GAP:
            continue
        row = cm[i].copy()
        row[i] = 0
        j = int(row.argmax())
        confused = f"; {row[j] / support:.0%} of its images are called {classes[j]!r}" if row[j] else ""
        g = gains.get(c)
        if g and not g["flat"]:
            fix = f"more {c!r} images should help ({forecast_line(g)})"
        elif g:
            fix = (f"more images alone will not help much (its learning curve is flat): check its labels and "
                   f"what tells {c!r} from {classes[j]!r}")
        else:
            fix = "look at its misclassified images and its labels"
        out.append({"impact": (mean - acc) * support / total, "text": f"{c!r} is weak: {fix}",
                    "evidence": f"accuracy {acc:.2f} against a mean of {mean:.2f} over the classes{confused}"})
    return out


def _more_data(gains: dict, pc: dict, n: int) -> list[dict]:
    if not gains:
        return []
    rows = sorted(gains.values(), key=lambda r: -r["gain"] * pc[r["class"]]["support"])
    growing = [r for r in rows if not r["flat"]]
    if not growing:
        return [{"impact": 0.0, "text": "More images of the same kind would barely help: every class's learning "
                 "curve is flat; look at labels, image quality and the recipe instead",
                 "evidence": "head fits on 25-100 % of the training images"}]
    best = growing[:3]
    flat = [r["class"] for r in rows if r["flat"]]
    text = "Where more images help most: " + "; ".join(forecast_line(r) for r in best)
    if flat:
        text += f"; flat: {', '.join(flat[:5])}{' ...' if len(flat) > 5 else ''}"
    impact = sum(r["gain"] * pc[r["class"]]["support"] for r in best) / n
    return [{"impact": impact, "text": text,
             "evidence": "power laws fitted to head fits on 25, 50, 75 and 100 % of the training images "
                         "(3 seeds), on the cached features"}]


def _label_issues(issues: dict | None, run: str) -> list[dict]:
    if not issues or not issues.get("rows"):
        return []
    k, judged = len(issues["rows"]), max(1, issues["judged"])
    pairs: dict[tuple[str, str], int] = {}
    for r in issues["rows"]:
        pairs[(r["label"], r["suggested"])] = pairs.get((r["label"], r["suggested"]), 0) + 1
    (given, other), count = max(pairs.items(), key=lambda kv: kv[1])
    return [{"impact": k / judged, "text": f"{k:,} training and validation images look mislabelled: "
             f"review them (imgtune review {run}: keep, relabel or exclude each on one page; then imgtune "
             f"retrain {run})",
             "evidence": f"{k:,} of {judged:,} by {issues['method']} on out-of-fold probabilities; most often "
                         f"{given!r} that looks like {other!r} ({count:,})"}]


def _audit(doc: dict | None) -> list[dict]:
    if not doc:
        return []
    out = []
    leaks = sum((doc.get("leakage") or {}).values())
    if leaks:
        out.append({"impact": leaks / max(1, doc.get("n_usable", 1)), "text": "The same pictures are in train and "
                    "in val or test: remove the copies so the scores are honest", "evidence": f"{leaks:,} groups "
                    "of duplicates across splits (inspect.json)"})
    odd, n = len(doc.get("odd", [])), max(1, doc.get("n_usable", 1))
    evidence = f"{odd:,} of {doc.get('n_usable', 0):,} images flagged by the audit"
    if odd >= SHARED * n:  # a property of the data (8x8 digits are all tiny), not files to fix: said last
        out.append({"impact": 0.0, "text": "Most images share what the audit flags (blurry, dark, bright, "
                    "low-information or oddly shaped): a property of this data set, not a few files to fix",
                    "evidence": evidence, "property_of_data": True})
    elif odd:
        out.append({"impact": 0.5 * odd / n, "text": "Some images are odd (blurry, dark, bright, "
                    "low-information or oddly shaped): look at them in inspect.html", "evidence": evidence})
    return out


def _imbalance(m: dict, config: dict) -> list[dict]:
    counts = list((config.get("class_counts") or {}).values())
    if not counts or min(counts) == 0 or max(counts) / min(counts) < IMBALANCE:
        return []
    metric = (config.get("recipe") or {}).get("metric", "accuracy")
    if metric != "accuracy":
        return []
    gap = m["accuracy"] - m.get("balanced_accuracy", m["accuracy"])
    return [{"impact": max(0.0, gap) / 2, "text": "The classes are imbalanced and the run maximises accuracy: "
             "if every class matters the same, train with --metric balanced_accuracy",
             "evidence": f"largest class {max(counts) / min(counts):.0f}x the smallest; accuracy "
                         f"{m['accuracy']:.4f}, balanced accuracy {m.get('balanced_accuracy', float('nan')):.4f}"}]
