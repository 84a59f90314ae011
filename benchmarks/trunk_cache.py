"""Fine-tuning from cached trunk outputs against fine-tuning on images, on the Fashion-MNIST benchmark.

    python benchmarks/trunk_cache.py --rounds 1

Runs `imgtune train` (default recipe, cold caches) with its cached augmented views and with
`--cached-views 0` (every epoch runs the whole network on freshly augmented images), alternating, and
prints per-epoch fine-tune seconds, the time spent computing the views, test accuracy and wall time, with
the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fashion_mnist import prepare, run_recipe


def summary(r: dict) -> dict:
    ft = [h for h in r["history"] if h["stage"] == "fine-tune" and h["epoch"] > 0]
    return {"name": r["name"], "accuracy": r["metrics"]["accuracy"], "wall": r["wall"],
            "finetune": r["seconds"]["finetune"], "epoch_s": statistics.median(h["seconds"] for h in ft),
            "epochs": len(ft), "views_s": r["seconds"]["finetune"] - sum(h["seconds"] for h in ft),
            "rss": r["peak_rss_mib"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = p.parse_args()
    data = prepare(args.out / "fashion-mnist", 500, 200, 0)
    rows = []
    for _ in range(args.rounds):
        rows.append(summary(run_recipe(data, args.out, "default", args, name="cached")))
        rows.append(summary(run_recipe(data, args.out, "default", args, ("--cached-views", "0"), name="uncached")))
    (args.out / "trunk_cache.json").write_text(json.dumps(rows, indent=2))
    print("| run | test accuracy | fine-tune epoch s (median) | epochs | views s | fine-tune s | wall s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['accuracy']:.4f} | {r['epoch_s']:.1f} | {r['epochs']} | {r['views_s']:.0f} | "
              f"{r['finetune']:.0f} | {r['wall']:.0f} | {r['rss']:.0f} |")
    c = [r for r in rows if r["name"] == "cached"]
    u = [r for r in rows if r["name"] == "uncached"]
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    print(f"\nepoch ratio cached/uncached: {med(c, 'epoch_s') / med(u, 'epoch_s'):.2f}; fine-tune stage ratio "
          f"{med(c, 'finetune') / med(u, 'finetune'):.2f}; wall ratio {med(c, 'wall') / med(u, 'wall'):.2f}; "
          f"accuracy difference {100 * (med(c, 'accuracy') - med(u, 'accuracy')):+.2f} points")


if __name__ == "__main__":
    main()
