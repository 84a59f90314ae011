"""Decoding large photos for a small input: Pillow's JPEG draft mode (DCT scaling) against a full decode,
both followed by the same eval transform to 224 px, alternated in one process on the same files.

    python benchmarks/large_photos.py --photos 12 --rounds 3

With --run RUN (a run trained on the Fashion-MNIST benchmark), also the accuracy side: N test images per
class are written as 4000x3000 JPEGs (the 28 px image upscaled to 3000x3000 on a black 4000x3000 canvas)
and the run evaluates them once with draft decoding (what imgtune does) and once with full decoding:

    python benchmarks/large_photos.py --photos 8 --rounds 3 --run benchmarks/out/run-default --per-class 30
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

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


def large_test_set(folder: Path, source: Path, per_class: int) -> Path:
    marker = folder / f"COMPLETE-{per_class}"
    if marker.exists():
        return folder
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        out = folder / class_dir.name
        out.mkdir(parents=True, exist_ok=True)
        for png in sorted(class_dir.glob("*.png"))[:per_class]:
            canvas = Image.new("RGB", (4000, 3000))
            canvas.paste(Image.open(png).convert("RGB").resize((3000, 3000), Image.BICUBIC), (500, 0))
            canvas.save(out / f"{png.stem}.jpg", quality=90)
    marker.write_text("complete\n")
    return folder


def accuracy_both_ways(run: Path, folder: Path) -> dict:
    import imgtune.data.datasets as datasets
    from imgtune.classifier import ImageClassifier

    clf = ImageClassifier.load(run, quiet=True)
    results = {}
    for name in ("draft decode", "full decode"):
        if name == "full decode":  # what decoding without draft mode would give
            datasets.decode_rgb = lambda data, draft_size=None: decode_rgb(data, draft_size=None)
        started = time.perf_counter()
        rows = clf.predict([str(folder)], top_k=1)
        labels = {r["path"]: r["label"] for r in rows}
        results[name] = {"accuracy": sum(Path(p).parent.name == label for p, label in labels.items()) / len(labels),
                         "n": len(labels), "seconds": time.perf_counter() - started, "labels": labels}
    datasets.decode_rgb = decode_rgb
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--run", type=Path, help="a run trained on the Fashion-MNIST benchmark: measure accuracy too")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
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
    if args.run:
        folder = large_test_set(args.out / "fashion-large", args.out / "fashion-mnist" / "test", args.per_class)
        res = accuracy_both_ways(args.run, folder)
        print(f"\n| {res['draft decode']['n']} Fashion-MNIST test images as 4000x3000 JPEGs | test accuracy | "
              "evaluate seconds |")
        print("| --- | --- | --- |")
        for name, r in res.items():
            print(f"| {name} | {r['accuracy']:.4f} | {r['seconds']:.0f} |")
        a, b = res["draft decode"]["labels"], res["full decode"]["labels"]
        print(f"\nsame label either way: {sum(a[k] == b[k] for k in a)} of {len(a)}")


if __name__ == "__main__":
    main()
