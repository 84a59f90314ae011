"""`imgtune train --time-limit`: does the run end within the limit (+-10 %), and what did it plan?

    python benchmarks/time_limit.py --limit 10m

Trains on the Fashion-MNIST benchmark data with a cold cache under /usr/bin/time -v and reports the wall
time against the limit, the planned and trained fine-tune epochs, and the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fashion_mnist import prepare

from imgtune.train.budget import parse_duration


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", default="10m")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = p.parse_args()
    data = prepare(args.out / "fashion-mnist", 500, 200, 0)
    run, cache = args.out / "run-time-limit", args.out / "cache-time-limit"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run),
           "--image-size", str(args.image_size), "--cache-dir", str(cache), "--time-limit", args.limit]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    limit = parse_duration(args.limit)
    plan = json.loads((run / "checkpoints" / "plan.json").read_text())
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    trained = [h for h in history if h["stage"] == "fine-tune" and h["epoch"] > 0]
    best = max(trained, key=lambda h: h["val_accuracy"]) if trained else None
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    metrics = json.loads((run / "metrics.json").read_text())
    print(f"command: {' '.join(cmd[2:])}")
    print("| limit s | wall s | wall / limit | planned epochs | trained epochs | best epoch | test accuracy | "
          "peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {limit:.0f} | {wall:.0f} | {wall / limit:.3f} | {plan['epochs']} | {len(trained)} | "
          f"{best['epoch'] if best else '-'} | {metrics['accuracy']:.4f} | {int(rss.group(1)) / 1024:.0f} |")
    print("plan:", json.dumps(plan))


if __name__ == "__main__":
    main()
