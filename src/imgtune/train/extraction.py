"""The features step of a fit: the pooled features of every scanned image from the cache or the frozen
network (one pass also fills the trunk-view cache fine-tuning trains from), split by split."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..cache.features import FeatureCache, extract_features
from ..cache.trunk_views import TrunkViews
from ..data.manifest import SPLITS, Manifest
from ..data.scan import require_usable
from ..model.backbones import Backbone, unfrozen_names
from ..model.frozen import fast_frozen
from ..model.trunk import split_stage
from .context import FitContext


@dataclass
class Features:
    """The scanned files that decoded, their cached features per split, and what extraction measured."""

    manifest: Manifest
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    digest_of: dict[str, str]
    extract_rate: float | None  # images/s through the frozen network, decoding included


def trunk_views(ctx: FitContext, backbone: Backbone, name: str) -> TrunkViews | None:
    """The cache of frozen-trunk outputs fine-tuning will train from, when the recipe asks for it and
    the backbone splits there."""
    cfg = ctx.recipe.finetune
    if cfg.epochs == 0 or cfg.cached_views == 0:
        return None
    stage = split_stage(backbone.model, unfrozen_names(backbone.model, cfg.unfreeze, name))
    if stage is None:
        return None
    return TrunkViews(ctx.cache_root, backbone, stage, augment=cfg.augment, seed=ctx.seed,
                      faster=_faster(ctx, backbone))


def _faster(ctx: FitContext, backbone: Backbone):
    """net, part -> a function that builds the fast frozen copy of `net` the first time it is called."""
    key_info = FeatureCache(ctx.cache_root, backbone).key_info

    def faster(net: torch.nn.Module, part: str):
        return functools.cache(lambda: fast_frozen(net, backbone.data_config.image_size, device=ctx.device,
                                                   cache_root=ctx.cache_root, key_info={**key_info, "part": part},
                                                   images=ctx.images))
    return faster


def features(ctx: FitContext, backbone: Backbone, manifest: Manifest, views: TrunkViews | None) -> Features:
    """Pooled features of every scanned file, from the cache or extracted (one pass fills the trunk-view
    cache's plain view too); files that fail to decode are skipped and listed."""
    t = time.perf_counter()
    paths = [it.path for s in SPLITS for it in manifest.split(s)]  # split by split: each split is a view
    cache = FeatureCache(ctx.cache_root, backbone)
    faster = _faster(ctx, backbone)
    hooks = {"network": faster(backbone.model, "features")}
    if views:  # one pass fills both caches; the augmented views run the trunk alone
        hooks = {"network": faster(views.extractor, f"trunk{views.stage}+features"), "keep": views.keep_features}
    feats, bad, n_new, digests = extract_features(backbone, paths, cache, device=ctx.device, reporter=ctx.reporter,
                                                  ranks=ctx.ranks, **hooks)
    del hooks  # the extraction network and its memory
    manifest = manifest.without(bad)
    if ctx.ranks.main:
        ctx.run.write_skipped(manifest.skipped)
    require_usable(manifest)
    ctx.say(f"Features: {n_new:,} extracted, {len(paths) - n_new - len(bad):,} from the cache"
            + (f"; {len(manifest.skipped):,} files skipped, listed in {ctx.run.skipped}" if manifest.skipped else ""))
    ctx.seconds["features"] = time.perf_counter() - t
    rate = n_new / ctx.seconds["features"] if n_new >= 64 else None  # images/s, decoding included
    if ctx.limit is not None and ctx.limit.rates is not None:
        rate = ctx.limit.rates.forward
    return Features(manifest, split_views(feats, [p not in bad for p in paths], manifest),
                    dict(zip(paths, digests)), rate)


def split_views(feats: np.ndarray, kept: list[bool], manifest: Manifest) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (its rows of `feats`, its targets). `feats` holds the files split by split in the
    manifest's order, `kept` saying which of them decoded; the rows of the others are dropped in place
    (later rows move up), so that the matrix is the only per-image array and each split a view of it."""
    rows = np.flatnonzero(kept)
    if len(rows) < len(feats):
        for start in range(0, len(rows), 4096):  # rows[i] >= i: each chunk reads only rows not yet written
            chunk = rows[start:start + 4096]
            feats[start:start + len(chunk)] = feats[chunk]
    splits, start = {}, 0
    for s in SPLITS:
        items = manifest.split(s)
        splits[s] = (feats[start:start + len(items)], manifest.targets(items))
        start += len(items)
    return splits
