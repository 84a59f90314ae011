"""Which unlabelled images to label next: uncertain ones, not like each other, not copies of what is
labelled already.

1. Uncertainty of the calibrated probabilities: the margin 1 - (p1 - p2) between the two most likely
   classes (1: a toss-up, 0: sure), or the entropy divided by log K.
2. Near-duplicates are set aside: an image whose perceptual hash is within NEAR_DISTANCE bits of a
   labelled image's (a resized or re-encoded copy adds nothing; the rule `inspect` uses), or of one
   chosen before it. Feature similarity is no test of that: on Open Clip Art a fifth of the drawings have a
   different drawing at cosine 0.97 or more, and on Fashion-MNIST a JPEG copy scores as low as 0.65.
3. Diversity: of the pool_factor * n most uncertain images, a greedy k-centre pass picks, one at a time,
   the image with the largest uncertainty x distance (1 - cosine) to its nearest labelled or already
   chosen image (the mix of Citovsky et al. 2021, "Batch active learning at scale"). The default pool is
   the n most uncertain themselves (POOL_FACTOR 1), the pass only ordering them, most informative and
   spread first: in simulated active learning on Fashion-MNIST (20 per class, then 5 rounds of 100; 5
   seeds) wider pools lost accuracy at every round, 1.1 points after 5 rounds at 5n, 0.5 at 2n
   (BENCHMARKS.md, "Diagnosis"). A wider pool is for batches large against the pool of unlabelled
   images, where one confusion can fill a batch.

Similarities are computed in chunks, so labelled and unlabelled sets of hundreds of thousands fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.near_duplicates import NEAR_DISTANCE, near_pairs

POOL_FACTOR = 1
CHUNK = 2048


def uncertainty(probs: np.ndarray, kind: str = "margin") -> np.ndarray:
    """Per row of calibrated probabilities: 1 - (top - second) ("margin") or entropy / log K ("entropy")."""
    p = np.asarray(probs, float)
    if kind == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if kind == "entropy":
        return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1) / np.log(p.shape[1])
    raise ValueError(f"unknown uncertainty {kind!r}: expected margin or entropy")


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each unit row of `a`: the largest cosine similarity with a row of `b` (-inf where `b` is empty)."""
    best = np.full(len(a), -np.inf, np.float32)
    for s in range(0, len(b), CHUNK):
        for r in range(0, len(a), CHUNK):
            best[r:r + CHUNK] = np.maximum(best[r:r + CHUNK], (a[r:r + CHUNK] @ b[s:s + CHUNK].T).max(axis=1))
    return best


@dataclass
class Ranking:
    chosen: list[int]  # row indices, best first
    uncertainty: np.ndarray  # per row
    distance: dict[int, float]  # chosen row -> its distance to the nearest labelled or earlier-chosen image
    duplicates: dict[int, tuple[str, int]]  # row -> ("labelled" | "chosen", the index it duplicates)


def rank_for_labelling(probs: np.ndarray, features: np.ndarray, labelled: np.ndarray, n: int, *,
                       kind: str = "margin", pool_factor: int = POOL_FACTOR, hashes: np.ndarray | None = None,
                       labelled_hashes: np.ndarray | None = None) -> Ranking:
    """The `n` rows of (probs, features) to label next, best first (fewer where fewer remain);
    `labelled` holds the labelled images' features (the same backbone's). With perceptual `hashes` (and
    the labelled images' `labelled_hashes`), near-duplicates are left out."""
    u = uncertainty(probs, kind)
    x = unit_rows(features)
    duplicates, twins = _near_duplicates(hashes, labelled_hashes, NEAR_DISTANCE)
    near_sim = nearest(x, unit_rows(labelled)) if len(labelled) else np.full(len(x), -np.inf, np.float32)
    free = np.array([i for i in np.argsort(-u, kind="stable") if int(i) not in duplicates], dtype=np.int64)
    pool = free[:max(n, pool_factor * n)]
    d = (np.clip(1.0 - near_sim[pool], 0.0, 2.0) if len(labelled) else np.full(len(pool), 2.0)).astype(np.float64)
    chosen, distance = [], {}
    alive = np.ones(len(pool), bool)
    position = {int(i): k for k, i in enumerate(pool)}
    while len(chosen) < n and alive.any():
        k = int(np.where(alive, u[pool] * d, -np.inf).argmax())
        i = int(pool[k])
        chosen.append(i)
        distance[i] = float(d[k])
        alive[k] = False
        for j in twins.get(i, ()):  # near-duplicates of the one just chosen
            if j in position and alive[position[j]]:
                duplicates[j] = ("chosen", i)
                alive[position[j]] = False
        d = np.minimum(d, 1.0 - x[pool] @ x[i])
    return Ranking(chosen, u, distance, duplicates)


def _near_duplicates(hashes, labelled_hashes, max_bits: int) -> tuple[dict[int, tuple[str, int]], dict[int, list[int]]]:
    """-> ({row: ("labelled", the labelled image it copies)}, {row: rows that are near-duplicates of it})."""
    if hashes is None:
        return {}, {}
    lab = np.asarray(labelled_hashes if labelled_hashes is not None else [], np.uint64)
    both = np.concatenate([lab, np.asarray(hashes, np.uint64)])
    m = len(lab)
    duplicates: dict[int, tuple[str, int]] = {}
    twins: dict[int, list[int]] = {}
    for a, b in near_pairs(both, max_bits):
        if b < m:  # two labelled images
            continue
        if a < m:
            duplicates.setdefault(b - m, ("labelled", a))
        else:
            twins.setdefault(a - m, []).append(b - m)
            twins.setdefault(b - m, []).append(a - m)
    return duplicates, twins
