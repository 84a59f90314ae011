"""Decoding large photos for a small input: Pillow's JPEG draft mode (DCT scaling) against a full decode,
both followed by the same eval transform to 224 px, alternated in one process on the same files.

    python benchmarks/large_photos.py --photos 12 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from imgtune.data.images import decode_rgb
from imgtune.data.transforms import DataConfig, eval_transform


def photo(seed: int) -> bytes:
    """A 4000x3000 JPEG with photo-like content: smooth gradients, shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:3000, 0:4000].astype(np.float32)
    img = np.stack([(xx / 16 + seed * 20) % 256, (yy / 12) % 256, ((xx + yy) / 28) % 256], axis=-1)
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    files = [photo(i) for i in range(args.photos)]
    tf = eval_transform(DataConfig(224, (0.5,) * 3, (0.5,) * 3))
    times = {"full decode": [], "draft decode": []}
    tensors = {}
    for _ in range(args.rounds):
        for name, draft in (("full decode", None), ("draft decode", 224)):
            started = time.perf_counter()
            tensors[name] = [tf(decode_rgb(b, draft_size=draft)) for b in files]
            times[name].append((time.perf_counter() - started) / len(files))
    diffs = [float((a - b).abs().mean()) for a, b in zip(tensors["full decode"], tensors["draft decode"])]
    full_s, draft_s = (statistics.median(times[k]) for k in ("full decode", "draft decode"))
    print(f"| 4000x3000 JPEG -> 224 px tensor | ms per photo (median of {args.rounds}) |")
    print("| --- | --- |")
    print(f"| full decode + resize | {1000 * full_s:.0f} |")
    print(f"| draft decode + resize | {1000 * draft_s:.0f} |")
    print(f"| speed-up | {full_s / draft_s:.1f}x |")
    print(f"\nmean |difference| of the normalised input tensors (range -1..1): {statistics.mean(diffs):.4f}")


if __name__ == "__main__":
    main()
