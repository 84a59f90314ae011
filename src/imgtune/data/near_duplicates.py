"""Near-duplicate images by perceptual hash (pHash: 64 bits of the low frequencies of a 32 x 32 grey
copy), the rule `inspect` and `suggest` share: two images are near-duplicates when their hashes differ
in at most NEAR_DISTANCE bits (resized, re-encoded or lightly edited copies).

Pairs are found by the pigeonhole principle: two 64-bit hashes that differ in at most d bits agree
exactly on at least one of d + 1 bands, so only images sharing a band are compared (fast on hundreds of
thousands of images)."""

from __future__ import annotations

from typing import Iterator

import imagehash
import numpy as np
from PIL import Image

NEAR_DISTANCE = 2  # of 64 perceptual-hash bits (always even for pHash): resized or re-encoded copies


def phash_int(img: Image.Image) -> int:
    bits = imagehash.phash(img).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.asarray(x, np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def near_pairs(hashes: np.ndarray, max_distance: int = NEAR_DISTANCE) -> Iterator[tuple[int, int]]:
    """Every pair (a, b), a < b, of positions in `hashes` (uint64) within `max_distance` bits, each
    once."""
    hashes = np.asarray(hashes, np.uint64)
    seen: set[tuple[int, int]] = set()
    edges = np.linspace(0, 64, max_distance + 2).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(order)]):
            members = order[s:e]
            for k, a in enumerate(members[:-1]):
                rest = members[k + 1:]
                for b in rest[popcount(hashes[rest] ^ hashes[a]) <= max_distance]:
                    pair = (int(min(a, b)), int(max(a, b)))
                    if pair not in seen:
                        seen.add(pair)
                        yield pair
