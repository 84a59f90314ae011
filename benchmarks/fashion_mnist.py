"""Benchmark both recipes on real data: Fashion-MNIST from Debian's `dataset-fashion-mnist` package.

    apt-get install dataset-fashion-mnist
    python benchmarks/fashion_mnist.py --train-per-class 500 --test-per-class 200 --image-size 128

Writes N training images per class (from the official training set) and M test images per class (from the
official test set) as PNG class folders, then runs `imgtune train` once per recipe, each with a cold
feature cache of its own, under /usr/bin/time -v. Prints a Markdown table for BENCHMARKS.md: accuracy,
macro-F1, per-class accuracy, wall seconds per stage and peak memory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle_boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def prepare(out: Path, train_per_class: int, test_per_class: int, seed: int) -> Path:
    """Write out/{train,test}/<class>/*.png once; a marker file says it is complete."""
    marker = out / f"COMPLETE-{train_per_class}-{test_per_class}-{seed}"
    if marker.exists():
        return out
    if not SOURCE.exists():
        sys.exit(f"{SOURCE} not found: apt-get install dataset-fashion-mnist")
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, prefix, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        images = read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")
        for c, name in enumerate(CLASSES):
            idx = rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx:
                Image.fromarray(images[i], "L").save(folder / f"{prefix}_{i:05d}.png")
    marker.write_text("complete\n")
    return out


def run_recipe(data: Path, out: Path, recipe: str, args, extra: tuple[str, ...] = (), name: str | None = None) -> dict:
    """`imgtune train` with a cold cache under /usr/bin/time -v -> its wall time, peak RSS and results."""
    name = name or recipe
    run = out / f"run-{name}"
    cache = out / f"cache-{name}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run),
           "--recipe", recipe, "--image-size", str(args.image_size),
           "--cache-dir", str(cache), "--seed", str(args.seed), "--quiet"]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    cmd += list(extra)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{recipe} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return {"recipe": recipe, "name": name, "command": " ".join(cmd[2:]), "wall": wall, "peak_rss_mib": int(rss.group(1)) / 1024 if rss else None,
            "seconds": config["seconds"], "metrics": metrics, "history": history}


def markdown(results: list[dict], args) -> str:
    lines = ["| recipe | test accuracy | macro-F1 | features s | head s | fine-tune s | total s (wall) | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        m, s = r["metrics"], r["seconds"]
        lines.append(f"| {r['recipe']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {s['features']:.0f} | "
                     f"{s['head']:.1f} | {s['finetune']:.0f} | {r['wall']:.0f} | {r['peak_rss_mib']:.0f} |")
    lines += ["", "| class | " + " | ".join(r["recipe"] for r in results) + " |",
              "| --- | " + " | ".join("---" for _ in results) + " |"]
    for c in CLASSES:
        lines.append(f"| {c} | " + " | ".join(f"{r['metrics']['per_class'][c]['accuracy']:.3f}" for r in results) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=None,
                   help="fine-tune epochs for both recipes (default: each recipe's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipes", default="default,seed")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = p.parse_args()
    data = prepare(args.out / "fashion-mnist", args.train_per_class, args.test_per_class, args.seed)
    results = [run_recipe(data, args.out, r, args) for r in args.recipes.split(",")]
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(markdown(results, args))


if __name__ == "__main__":
    main()
