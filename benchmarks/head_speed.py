"""Head retraining time on cached features: `imgtune train DATA --epochs 0` on 10,000 Fashion-MNIST
images, once with a cold feature cache (extraction + head) and then again with the cache warm, where the
head on the cached vectors is all the work left. Reports the head stage's seconds from config.json.

    python benchmarks/head_speed.py --per-class 1112 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import prepare  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=1112, help="training images per class (10 of them; 10% become val)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="warm-cache runs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = p.parse_args()
    data = prepare(args.out / "fashion-mnist-head", args.per_class, 50, seed=0)
    cache = args.out / "cache-head"
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for i in range(args.runs + 1):
        run = args.out / f"run-head-{i}"
        shutil.rmtree(run, ignore_errors=True)
        started = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run), "--epochs", "0",
                            "--image-size", str(args.image_size), "--cache-dir", str(cache), "--quiet"],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr[-2000:])
        config = json.loads((run / "config.json").read_text())
        history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
        rows.append({"cache": "cold" if i == 0 else "warm", "train_vectors": config["counts"]["train"],
                     "head_epochs": len(history), "head_seconds": config["seconds"]["head"],
                     "features_seconds": config["seconds"]["features"], "wall": time.perf_counter() - started,
                     "val_accuracy": max(h["val_accuracy"] for h in history)})
    print("| cache | training vectors | head epochs | head s | features s | wall s | best val accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['cache']} | {r['train_vectors']:,} | {r['head_epochs']} | {r['head_seconds']:.2f} | "
              f"{r['features_seconds']:.1f} | {r['wall']:.1f} | {r['val_accuracy']:.4f} |")


if __name__ == "__main__":
    main()
