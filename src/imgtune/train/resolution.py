"""`--image-size auto`: a larger input where the images are large enough for it to pay.

A backbone's default input (224 px for EfficientNet-Lite0) throws detail away when most images are
much larger. Whether the detail matters depends on the data, so it is measured, not assumed: on a
stratified sample of the training images, the cross-validated head on features at the default size is
compared with the same head at a larger size (capped for speed), and the larger size is used only
where it wins by more than twice the noise of the comparison (its bootstrap standard error). Twice,
because the larger input costs about twice the compute in every later step, and a gain of one standard
error happens by chance one time in six: on the clip art a gain of +2.0 points (noise +-1.9) on 301
images chose 320 px, which was 1.8 points less accurate than 224 px on the held-out drawings.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from PIL import Image

from ..atomic import write_json_atomic
from ..metrics import score
from ..model.linear import Search, cross_validate
from .decide import paired_gain
from .sampled import sample, sample_features

MARGIN = 2.0  # the gain must exceed this many standard errors of the comparison
LARGER = 1.25  # the images' median shorter side must be this many times the default input to try more
CAP = 1.5  # the larger input is at most this many times the default (extraction costs grow with its square)


def median_short_side(paths: list[str], *, limit: int = 200, seed: int = 0) -> float | None:
    """The median shorter side of (a seeded sample of) the images, read from their headers only."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(paths))[:limit]
    sides = []
    for i in chosen:
        try:
            with Image.open(paths[i]) as img:
                sides.append(min(img.size))
        except Exception:  # noqa: BLE001  unreadable: the scan's decoding will say why
            continue
    return float(np.median(sides)) if sides else None


def larger_size(default: int, short_side: float | None) -> int | None:
    """The larger input worth trying (a multiple of 32), or None when the images are not large enough."""
    if short_side is None or short_side < LARGER * default:
        return None
    size = min(int(short_side) // 32 * 32, int(default * CAP) // 32 * 32)
    return size if size > default else None


def compare(small: np.ndarray, large: np.ndarray, y: np.ndarray, n_classes: int, *, metric: str,
            seed: int = 0) -> dict:
    """Cross-validated head at both sizes on the same images -> both scores, the gain of the larger
    one, its bootstrap noise, and whether it pays (gain above MARGIN times the noise)."""
    y = np.asarray(y, int)
    preds = {}
    for name, x in (("small", small), ("large", large)):
        sel = cross_validate(x, y, n_classes, Search.plain(metric, seed))
        preds[name] = sel.oof_logits.argmax(1)
    gain, noise = paired_gain(y, preds["large"], preds["small"], metric, n_classes, seed=seed)
    return {"small": score(y, preds["small"], metric, n_classes), "large": score(y, preds["large"], metric, n_classes),
            "gain": gain, "noise": noise, "pays": bool(gain > MARGIN * noise and gain > 0), "images": int(len(y))}


def auto_image_size(ctx, backbone, manifest):
    """The backbone at its default input, or at a larger one where most images are large enough and
    the cross-validated head on a sample of the training images is better there than the noise of the
    comparison. Decided once: a resumed run reads checkpoints/image_size.json."""
    stored = ctx.run.checkpoints / "image_size.json"
    default = backbone.data_config.image_size
    if stored.exists():
        size = int(json.loads(stored.read_text())["image_size"])
    else:
        size, how = _measured_size(ctx, backbone, manifest)
        ctx.say(f"Image size: {size} px ({how}).")
        if ctx.ranks.main:
            write_json_atomic(stored, {"image_size": size, "why": how})
    return backbone if size == default else _at_size(backbone, size)


def _at_size(backbone, size: int):
    return dataclasses.replace(backbone, data_config=dataclasses.replace(backbone.data_config, image_size=size))


def _measured_size(ctx, backbone, manifest) -> tuple[int, str]:
    """-> (the input size, why), from the features of a sample of the training images at both sizes."""
    default, metric = backbone.data_config.image_size, ctx.recipe.metric
    train = manifest.split("train")
    short = median_short_side([it.path for it in train], seed=ctx.seed)
    large = larger_size(default, short)
    how = f"the images' median shorter side is {short:.0f} px" if short else "no image size read"
    if large is None:
        return default, how
    labels = np.array([it.label for it in train])
    pick = sample(labels, ctx.seed)
    paths = [train[i].path for i in pick]
    feats = {name: sample_features(ctx, _at_size(backbone, s), paths) for name, s in (("small", default), ("large", large))}
    ok = ~(np.isnan(feats["small"]).any(1) | np.isnan(feats["large"]).any(1))
    r = compare(feats["small"][ok], feats["large"][ok], labels[pick][ok], len(manifest.classes), metric=metric,
                seed=ctx.seed)
    how += (f"; on {r['images']} training images the cross-validated head's {metric.replace('_', ' ')} was "
            f"{r['small']:.4f} at {default} px and {r['large']:.4f} at {large} px ({r['gain'] * 100:+.1f} points, "
            f"noise +-{r['noise'] * 100:.1f}; a larger input must win by {MARGIN:g}x the noise)")
    return (large if r["pays"] else default), how
