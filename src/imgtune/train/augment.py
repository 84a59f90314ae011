"""`--augment auto`: fine-tuning's augmentation chosen from the data.

Rotations by quarter turns and vertical flips (the `rotations` policy) multiply what a small data set
shows the network where a class does not depend on which way up an image is (cells, solar cells,
textures, aerial views), and teach it nonsense where it does (a 6 and a 9, arrows, letters, upright
photographs). Which of the two a data set is, is measured rather than assumed: on a stratified sample of
the training images, each image also gets one view turned or flipped (a seeded one of the square's seven
other symmetries), and a cross-validated logistic head on the cached features is scored twice: trained
and tested on the plain views, and trained on plain and turned views together and tested on turned ones.
Where the classes survive the turn (the second score at most one standard error of the comparison, or
one point, below the first), `rotations` is chosen; otherwise `light` (crops and horizontal flips).
Strict on purpose: turns cost a set that has an up more than they give one that has none. On the suite
(BENCHMARKS.md), a rule that allowed two standard errors took the clip art (-4.0 points, noise +-2.2)
for orientation-free, and fine-tuning with turns then never beat the head there (0.6696 on test against
0.7024 with crops); the ELPV solar cells (-2.3, +-1.5) gained nothing from turns either (0.7668 against
0.7805 at 224 px). Decided once per run: a resumed run reads checkpoints/augment.json.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ..atomic import write_json_atomic
from ..data.datasets import ImageFiles
from ..data.transforms import eval_transform
from ..metrics import score
from ..model.forward import run_network
from ..model.linear import Search, cross_validate, fit_logistic, logits, stratified_folds
from .decide import paired_gain
from .sampled import frozen_network, sample, sample_features

MARGIN = 1.0  # turned views may score at most this many standard errors of the comparison below plain ones
FLOOR = 0.01  # ... or this share below, whichever is more: on a sample that is all right, noise is 0
FOLDS = 5


class Turned:
    """The eval transform, then one of the square's seven symmetries other than the identity (drawn from
    torch's generator, which ImageFiles seeds per image): quarter turns, and flips about the vertical axis
    and the diagonals."""

    def __init__(self, cfg):
        self.plain = eval_transform(cfg)

    def __call__(self, img) -> torch.Tensor:
        x = self.plain(img)
        k = int(torch.randint(7, ())) + 1  # 1..7: k % 4 quarter turns, then a vertical flip when k >= 4
        x = torch.rot90(x, k % 4, dims=(-2, -1))
        return x.flip(-2) if k >= 4 else x


def choose_augment(ctx, backbone, manifest) -> tuple[str, str]:
    """-> (the augmentation policy for fine-tuning, why). A resumed run reads what the run chose."""
    stored = ctx.run.checkpoints / "augment.json"
    if not stored.exists() and ctx.ranks.main:  # under torchrun rank 0 decides, the others read its choice
        if manifest.multi:
            augment, why = "light", "multi-label data: the orientation test reads single labels"
        else:
            augment, why = _measured(ctx, backbone, manifest)
        write_json_atomic(stored, {"augment": augment, "why": why})
    ctx.ranks.barrier()
    doc = json.loads(stored.read_text())
    return doc["augment"], doc["why"]


def _measured(ctx, backbone, manifest) -> tuple[str, str]:
    train = manifest.split("train")
    labels = np.array([it.label for it in train])
    pick = sample(labels, ctx.seed)
    if len(np.unique(labels[pick])) < 2 or np.bincount(labels[pick]).max() < FOLDS:
        return "light", "too few training images to test whether the classes depend on orientation"
    paths = [train[i].path for i in pick]
    cfg = backbone.data_config
    net = frozen_network(ctx, backbone)  # built once, on first use, for both passes (the plain views may be cached)
    plain = sample_features(ctx, backbone, paths, net)
    seeds = [ctx.seed * 100_003 + i for i in range(len(paths))]
    out, _ = run_network(net(), ImageFiles(paths, None, Turned(cfg), cfg.image_size, seeds), device=ctx.device,
                         reporter=ctx.reporter, description="Orientation test")
    turned = np.full_like(plain, np.nan)
    for i, row in out.items():
        turned[i] = row
    ok = ~(np.isnan(plain).any(1) | np.isnan(turned).any(1))
    r = compare_orientations(plain[ok], turned[ok], labels[pick][ok], len(manifest.classes), seed=ctx.seed)
    free = r["turned"] >= r["plain"] - max(MARGIN * r["noise"], FLOOR)
    why = (f"on {r['images']} training images a cross-validated head scored {r['plain']:.4f} on plain views and "
           f"{r['turned']:.4f} on turned or flipped ones ({(r['turned'] - r['plain']) * 100:+.1f} points, noise "
           f"+-{r['noise'] * 100:.1f}): the classes {'do not depend' if free else 'depend'} on orientation")
    return ("rotations" if free else "light"), why


def compare_orientations(plain: np.ndarray, turned: np.ndarray, y: np.ndarray, n_classes: int, *,
                         seed: int = 0) -> dict:
    """Accuracy of a head trained and tested on plain views, against one trained on plain and turned views
    and tested on turned ones, by the same folds (the head's L2 strength chosen on the plain views) ->
    both, the bootstrap noise of their difference and the number of images."""
    y = np.asarray(y, int)
    c = cross_validate(plain, y, n_classes, Search.plain("accuracy", seed)).candidate.c
    fold = stratified_folds(y, FOLDS, seed)
    pred_plain, pred_turned = np.zeros(len(y), int), np.zeros(len(y), int)
    for k in range(FOLDS):
        held, rest = fold == k, fold != k
        head = fit_logistic(plain[rest], y[rest], n_classes, c=c)
        pred_plain[held] = logits(plain[held], head).argmax(1)
        both = fit_logistic(np.concatenate([plain[rest], turned[rest]]), np.concatenate([y[rest], y[rest]]),
                            n_classes, c=c)
        pred_turned[held] = logits(turned[held], both).argmax(1)
    _, noise = paired_gain(y, pred_turned, pred_plain, "accuracy", n_classes, seed=seed)
    return {"plain": score(y, pred_plain, "accuracy", n_classes), "turned": score(y, pred_turned, "accuracy", n_classes),
            "noise": noise, "images": int(len(y))}
