"""A stratified sample of the training images and its frozen features: what the choices made from the
data before training (the backbone, the input size, the augmentation) are measured on."""

from __future__ import annotations

import functools

import numpy as np

from ..cache.features import FeatureCache, extract_features
from ..model.frozen import fast_frozen
from ..model.linear import stratified_folds

SAMPLE = 400  # training images a choice extracts features of, at most


def sample(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of a stratified sample of at most SAMPLE images."""
    labels = np.asarray(labels, int)
    if len(labels) <= SAMPLE:
        return np.arange(len(labels))
    return np.sort(np.flatnonzero(stratified_folds(labels, -(-len(labels) // SAMPLE), seed) == 0))


def frozen_network(ctx, backbone):
    """-> a function that builds the fast frozen copy of the backbone (at its data config's input size)
    the first time it is called, and returns that copy every time."""
    key_info = {**FeatureCache(ctx.cache_root, backbone).key_info, "part": "features"}
    return functools.cache(functools.partial(fast_frozen, backbone.model, backbone.data_config.image_size,
                                             device=ctx.device, cache_root=ctx.cache_root, key_info=key_info,
                                             images=ctx.images))


def sample_features(ctx, backbone, paths: list[str], network=None) -> np.ndarray:
    """Pooled features of `paths` through the backbone, from the feature cache or extracted into it (the
    full extraction later reuses them); rows of files that fail to decode are NaN."""
    cache = FeatureCache(ctx.cache_root, backbone)
    return extract_features(backbone, paths, cache, device=ctx.device, reporter=ctx.reporter,
                            network=network or frozen_network(ctx, backbone))[0]
