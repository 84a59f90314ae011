"""The feature cache (the recipe's "bottleneck features") and the extraction that fills it.

Cache entries are keyed by the file's content hash inside a folder keyed by backbone, weights and
transform, so renaming or moving a file reuses its features, an edited file or a new transform gets new
ones, and nothing else is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageFiles
from ..data.images import BadImage, read_bytes
from ..data.transforms import eval_transform
from ..devices import Ranks
from ..errors import RunFolderError
from ..model.backbones import Backbone, create_backbone
from ..model.forward import run_network
from ..progress import Reporter
from .store import ShardStore


def default_cache_dir() -> Path:
    if os.environ.get("IMGTUNE_CACHE"):
        return Path(os.environ["IMGTUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgtune"


def file_digest(path: str) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


class FeatureCache:
    """Pooled backbone features per file content hash under ROOT/features/<key>/ (a ShardStore of
    float32 rows, one shard per extracted batch)."""

    def __init__(self, root: str | os.PathLike, backbone: Backbone):
        self.key_info = {"backbone": backbone.name, "weights": backbone.weights_id,
                         "transform": backbone.data_config.signature}
        key = hashlib.sha256(json.dumps(self.key_info, sort_keys=True).encode()).hexdigest()[:20]
        self.store = ShardStore(Path(root) / "features" / key, self.key_info)

    def read_into(self, digests: list[str | None], out: np.ndarray) -> list[bool]:
        """Cached vectors of `digests` into the rows of `out` [N, D]; -> which were found."""
        return self.store.read_into(digests, out)

    def put_many(self, digests: list[str], vectors: np.ndarray) -> None:
        self.store.put_many(digests, vectors)


def extract_features(backbone: Backbone, paths: list[str], cache: FeatureCache, *, device: torch.device,
                     batch_size: int = 32, reporter: Reporter | None = None, ranks: Ranks = Ranks(),
                     network: Callable[[], nn.Module] | None = None, keep=None):
    """Features for every path, from the cache where possible -> (features [N, D] float32 with NaN rows
    for bad files, {bad path: reason}, number of images that went through the backbone, content digest
    of every path (None for unreadable files)).

    `network()` gives the module the images go through (called only when there is something to
    extract; default: the backbone). With `keep`, its outputs hold more than the features:
    `keep(digests, outputs)` stores what it wants and returns the features, so one pass can fill two
    caches.

    Under torchrun each rank extracts every world-th missing image and writes it to the cache; the
    vectors are then gathered so that every rank holds them all."""
    reporter = reporter or Reporter(quiet=True)
    digests: list[str | None] = []
    bad: dict[str, str] = {}
    with reporter.bar("Hashing", len(paths)) as advance:
        for p in paths:
            try:
                digests.append(file_digest(p))
            except BadImage as e:
                bad[p] = str(e)
                digests.append(None)
            advance()
    feats = np.full((len(paths), backbone.num_features), np.nan, dtype=np.float32)
    found = cache.read_into(digests, feats)  # straight into the matrix: no second copy of the cached rows
    misses = [i for i, d in enumerate(digests) if d is not None and not found[i]]
    if not misses:
        return feats, bad, 0, digests
    mine = misses[ranks.rank::ranks.world]
    done: dict[int, np.ndarray] = {}

    def store(ids: list[int], out: np.ndarray) -> None:
        batch = [digests[mine[j]] for j in ids]
        if keep is not None:
            out = keep(batch, out)
        cache.put_many(batch, out)
        rows = [mine[j] for j in ids]
        feats[rows] = out  # a copy: the batch's outputs (with `keep`, the trunk's too) are let go
        if ranks.active:
            done.update((i, feats[i]) for i in rows)

    images = ImageFiles([paths[i] for i in mine], None, eval_transform(backbone.data_config),
                        backbone.data_config.image_size)
    _, more_bad = run_network((network() if network else backbone.model).to(device), images, device=device,
                              batch_size=batch_size, reporter=reporter, description="Extracting features",
                              on_batch=store, keep=False)
    for rows, failed in ranks.gather((done, more_bad)) if ranks.active else [({}, more_bad)]:
        for i, row in rows.items():
            feats[i] = row
        bad.update(failed)
    n_failed = sum(1 for i in misses if paths[i] in bad)
    return feats, bad, len(misses) - n_failed, digests


def frozen_features(trained, paths: list[str], *, cache_dir=None, reporter: Reporter | None = None
                    ) -> tuple[np.ndarray, dict[str, str], list[str | None]]:
    """-> (features [N, D] float32, NaN rows for files that do not decode; {bad path: reason}; the
    content digest of every path, None for unreadable files)."""
    backbone = create_backbone(trained.backbone, image_size=trained.data_config.image_size)
    wanted = trained.fit_info.get("weights")
    if wanted and wanted != backbone.weights_id:
        raise RunFolderError(f"The run was trained from backbone weights {wanted!r}, which imgtune cannot load "
                             f"again by name ({backbone.weights_id!r} is what {trained.backbone!r} gives): its "
                             "features cannot be reproduced.")
    cache = FeatureCache(cache_dir or default_cache_dir(), backbone)
    feats, bad, _, digests = extract_features(backbone, paths, cache, device=trained.device,
                                              reporter=reporter or Reporter(quiet=True))
    return feats, bad, digests
