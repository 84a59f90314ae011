"""Perceptual hashes of image files, cached by content digest beside the features (ROOT/phash/), so a
second `suggest` over the same images decodes none of them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.images import BadImage, load_rgb
from ..data.near_duplicates import phash_int
from ..progress import Reporter
from .store import ShardStore

DRAFT = 256  # decoded at this size at least (JPEG DCT scaling): pHash looks at 32 x 32
BATCH = 512  # hashes per shard written


def perceptual_hashes(paths: list[str], digests: list[str | None], cache_root: str | os.PathLike,
                      reporter: Reporter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint64 hash per path, whether it has one): from the cache by content digest, else decoded
    and hashed (files without a digest, or that do not decode, have none)."""
    reporter = reporter or Reporter(quiet=True)
    store = ShardStore(Path(cache_root) / "phash", {"kind": "phash", "version": 1}, dtype="<u8")
    found = store.get_many([d for d in digests if d], (1,))
    out = np.zeros(len(paths), np.uint64)
    ok = np.zeros(len(paths), bool)
    todo = []
    for i, d in enumerate(digests):
        if d in found:
            out[i], ok[i] = found[d][0], True
        elif d is not None:
            todo.append(i)
    keys, rows = [], []
    with reporter.bar("Hashing images", len(todo)) as advance:
        for i in todo:
            try:
                out[i], ok[i] = phash_int(load_rgb(paths[i], draft_size=DRAFT)), True
                keys.append(digests[i])
                rows.append(out[i])
            except BadImage:
                pass
            if len(keys) >= BATCH:
                store.put_many(keys, np.array(rows, np.uint64)[:, None])
                keys, rows = [], []
            advance()
    if keys:
        store.put_many(keys, np.array(rows, np.uint64)[:, None])
    return out, ok
