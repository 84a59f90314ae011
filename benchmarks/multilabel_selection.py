"""The multi-label head's selection cost against the number of labels: `multilabel.select_label_head` on
planted features (EfficientNet-Lite0's width, 1,280), every L2 strength scored on at most 64 labels
(the default) against every strength scored on every label (before).

    python benchmarks/multilabel_selection.py --labels 64,300,1000 --before-up-to 300

Prints one line per run: labels, way, CPU seconds (user+sys of this process) and wall seconds, and the
out-of-fold mAP of the chosen head over all labels."""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from imgtune.infer.multilabel import mean_average_precision, sigmoid
from imgtune.train import multilabel


def planted(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images of d features, k labels each a noisy linear rule, 1-10 % positive."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    w = rng.normal(size=(d, k)).astype(np.float32) * np.sqrt(d) / 4
    z = x @ w + rng.normal(scale=0.5, size=(n, k))
    cut = np.array([np.quantile(z[:, j], 1 - q) for j, q in enumerate(rng.uniform(0.01, 0.10, k))])
    return x, (z > cut).astype(np.float32)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", default="64,300,1000")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--before-up-to", type=int, default=300, help="score every label too, up to this many")
    a = ap.parse_args()
    sampled = multilabel.MAX_SELECTION_LABELS
    multilabel.fit_ovr(*planted(100, 1280, 4), c=1.0)  # warm up the threads and the allocator
    for k in (int(v) for v in a.labels.split(",")):
        x, y = planted(a.images, 1280, k)
        cut = int(a.images * 0.8)
        ways = [("sampled", sampled)] + ([("every label", 10**9)] if k <= a.before_up_to and k > sampled else [])
        for way, cap in ways:
            multilabel.MAX_SELECTION_LABELS = cap
            c0, w0 = cpu(), time.perf_counter()
            choice = multilabel.select_label_head(x[:cut], y[:cut], x[cut:], y[cut:], folds=5, seed=0)
            c1, w1 = cpu(), time.perf_counter()
            m = mean_average_precision(choice.oof_labels, sigmoid(choice.selection.oof_logits))
            print(f"{k:>5} labels  {way:<12} C={choice.selection.candidate.c:<5g} {c1 - c0:8.1f} CPU-s "
                  f"{w1 - w0:7.1f} s wall  out-of-fold mAP {m:.4f}", flush=True)
    multilabel.MAX_SELECTION_LABELS = sampled


if __name__ == "__main__":
    main()
