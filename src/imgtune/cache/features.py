"""Running a network over image files, and the feature cache (the recipe's "bottleneck features").

Cache entries are keyed by the file's content hash inside a folder keyed by backbone, weights and
transform, so renaming or moving a file reuses its features, an edited file or a new transform gets new
ones, and nothing else is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from ..data.datasets import ImageFiles
from ..data.images import BadImage, read_bytes
from ..data.transforms import eval_transform
from ..distributed import Ranks
from ..engine import loader_workers, release_free_memory
from ..model.backbones import Backbone
from ..progress import Reporter
from .store import ShardStore


def default_cache_dir() -> Path:
    if os.environ.get("IMGTUNE_CACHE"):
        return Path(os.environ["IMGTUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgtune"


def file_digest(path: str) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


@torch.inference_mode()
def run_network(net: nn.Module, paths: list[str], transform, image_size: int, *, device: torch.device,
                batch_size: int = 32, reporter: Reporter | None = None, description: str = "Images",
                on_batch=None, seeds: list[int] | None = None, keep: bool = True
                ) -> tuple[dict[int, np.ndarray], dict[str, str]]:
    """Decode, transform and forward `paths` in batches -> ({index: output row}, {bad path: reason}).

    Decoding overlaps the forward pass: in worker processes, or in a background thread for a network
    that runs outside the GIL (ONNX Runtime). `on_batch(indices, outputs)` is
    called after each batch (the cache writes there, so an interrupted extraction keeps what it did);
    with `keep=False` the outputs are only handed to it. `seeds` fixes each image's random transform.
    """
    reporter = reporter or Reporter(quiet=True)
    net.eval()
    outputs: dict[int, np.ndarray] = {}
    bad: dict[str, str] = {}
    if not paths:
        return outputs, bad
    dataset = ImageFiles(paths, None, transform, image_size, seeds)
    if getattr(net, "runs_without_gil", False):
        loader = _prefetched(dataset, batch_size)
    else:
        workers = loader_workers() if len(paths) > 2 * batch_size else 0  # a worker costs ~1 s to start
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=False,
                            prefetch_factor=4 if workers else None)
    with reporter.bar(description, len(paths)) as advance:
        for n, (x, _, idx, reasons) in enumerate(loader, 1):
            ok = [j for j, r in enumerate(reasons) if not r]
            for j, r in enumerate(reasons):
                if r:
                    bad[paths[int(idx[j])]] = r
            if ok:
                out = net(x[ok].to(device)).float().cpu().numpy()
                ids = [int(idx[j]) for j in ok]
                if keep:
                    outputs.update(zip(ids, out))
                if on_batch:
                    on_batch(ids, out)
            advance(len(reasons))
            if n % 8 == 0:
                release_free_memory()
    return outputs, bad


def _prefetched(dataset: ImageFiles, batch_size: int):
    """Batches decoded by one background thread while the caller's network computes the previous one.
    For a network that runs outside the GIL (ONNX Runtime): Pillow's decoding and resizing release it
    too, so both overlap without a worker process and without copying every batch between processes."""
    def make(start: int):
        return default_collate([dataset[j] for j in range(start, min(start + batch_size, len(dataset)))])

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(make, 0)
        for start in range(0, len(dataset), batch_size):
            batch = pending.result()
            if start + batch_size < len(dataset):
                pending = pool.submit(make, start + batch_size)
            yield batch


class FeatureCache:
    """Pooled backbone features per file content hash under ROOT/features/<key>/ (a ShardStore of
    float32 rows, one shard per extracted batch)."""

    def __init__(self, root: str | os.PathLike, backbone: Backbone):
        self.key_info = {"backbone": backbone.name, "weights": backbone.weights_id,
                         "transform": backbone.data_config.signature}
        key = hashlib.sha256(json.dumps(self.key_info, sort_keys=True).encode()).hexdigest()[:20]
        self.store = ShardStore(Path(root) / "features" / key, self.key_info)

    def get_many(self, digests: list[str], n_features: int) -> dict[str, np.ndarray]:
        return self.store.get_many(digests, (n_features,))

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
    found = cache.get_many([d for d in digests if d], backbone.num_features)
    misses: list[int] = []
    for i, d in enumerate(digests):
        if d in found:
            feats[i] = found[d]
        elif d is not None:
            misses.append(i)
    if not misses:
        return feats, bad, 0, digests
    mine = misses[ranks.rank::ranks.world]
    done: dict[int, np.ndarray] = {}

    def store(ids: list[int], out: np.ndarray) -> None:
        batch = [digests[mine[j]] for j in ids]
        if keep is not None:
            out = keep(batch, out)
        cache.put_many(batch, out)
        done.update((mine[j], row) for j, row in zip(ids, out))

    _, more_bad = run_network((network() if network else backbone.model).to(device), [paths[i] for i in mine],
                              eval_transform(backbone.data_config), backbone.data_config.image_size, device=device,
                              batch_size=batch_size, reporter=reporter, description="Extracting features",
                              on_batch=store, keep=False)
    for rows, failed in ranks.gather((done, more_bad)):
        for i, row in rows.items():
            feats[i] = row
        bad.update(failed)
    n_failed = sum(1 for i in misses if paths[i] in bad)
    return feats, bad, len(misses) - n_failed, digests
