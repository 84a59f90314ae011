"""Training and prediction at scale (issue 16): peak memory and time per image from 1,000 to 100,000
images, and prediction's throughput in one process and in two (torchrun).

Data: Fashion-MNIST's 70,000 real images as 28x28 PNG files in class folders (the first N of a fixed
shuffle); past 70,000 the same images mirrored and shifted by one pixel, so every file is new. Prediction
reads 32x32 JPEG copies of them.

    train:   imgtune train DATA-N --out RUN --image-size 64 --epochs 1 --cache-dir FRESH --quiet
    predict: imgtune predict RUN FOLDER-N --output OUT.csv --quiet            (1 process)
             torchrun --standalone --nproc_per_node=2 -m imgtune predict ...  (2 processes)

each under /usr/bin/time -v (peak RSS of the largest process), one after another on this machine.

    python benchmarks/scale.py                        # both parts, 1,000 / 10,000 / 100,000
    python benchmarks/scale.py --only train --sizes 1000 10000
    python benchmarks/scale.py --only predict --python-path OLD/src   # another checkout's code, side by side

Figures go to benchmarks/scale_results.json (keyed by part, code and size) and print as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fashion_mnist import CLASSES, read_idx  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
FEATURE_WIDTH = 1280  # float32 features per image of the default backbone (EfficientNet-Lite0): the matrix


def fmnist_all() -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for prefix in ("train", "t10k"):
        xs.append(read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz"))
        ys.append(read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz"))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def image(x: np.ndarray, i: int) -> np.ndarray:
    """The i-th image: past the real ones, a mirrored copy shifted by one pixel (a new file)."""
    n = len(x)
    a = x[i % n]
    return a if i < n else np.roll(a[:, ::-1], 1 + (i // n - 1), axis=1)


def make_images(root: Path, n: int, fmt: str) -> Path:
    """N images in class folders under ROOT (PNG or JPEG); kept between runs."""
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    x, y = fmnist_all()
    for i in range(n):
        cls = CLASSES[int(y[i % len(y)])]
        path = root / cls / f"{i:06d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(image(x, i), "L")
        if fmt == "jpg":
            img.resize((32, 32)).save(path, quality=90)
        else:
            img.save(path)
    done.write_text("")
    return root


def tree_pss_mib(root: int) -> float:
    """Proportional set size of `root` and all its descendants (MiB): the memory the command holds,
    each page shared between processes (a forked data-loader worker and its parent) counted once."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
        except (OSError, AttributeError):
            continue
    return total / 1024


def timed(cmd: list[str], env: dict) -> dict:
    """Runs `cmd` under /usr/bin/time -v -> wall seconds, peak RSS of its largest process (from time:
    a forked worker counts the pages it shares with its parent too) and the peak PSS of its process
    tree (sampled every 0.2 s: pages shared between the processes counted once), with its stderr."""
    started = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    peak_pss, errors = 0.0, []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak_pss = max(peak_pss, tree_pss_mib(proc.pid))
        time.sleep(0.2)
    reader.join()
    wall, stderr = time.perf_counter() - started, errors[0] if errors else ""
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) / 1024
    return {"wall_s": wall, "peak_rss_mib": rss, "peak_pss_mib": peak_pss, "stderr": stderr}


def train_part(work: Path, sizes: list[int], env: dict, label: str) -> dict:
    out = {}
    for n in sizes:
        data = make_images(work / f"train-{n}", n, "png")
        run, cache = work / f"run-{label}-{n}", work / f"cache-{label}-{n}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        r = timed([sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run), "--image-size", "64",
                   "--epochs", "1", "--cache-dir", str(cache), "--quiet"], env)
        r["ms_per_image"] = 1000 * r["wall_s"] / n
        del r["stderr"]
        out[str(n)] = r
        print(f"train {label} {n:,}: {r['wall_s']:.0f} s, {r['peak_rss_mib']:,.0f} MiB", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    return out


def predict_part(work: Path, sizes: list[int], env: dict, label: str, run: Path) -> dict:
    out = {}
    for n in sizes:
        folder = make_images(work / f"predict-{n}", n, "jpg")
        for procs in (1, 2):
            target = work / f"predictions-{label}-{n}-{procs}.csv"
            prefix = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                          "--standalone", f"--nproc_per_node={procs}"]
            r = timed([*prefix, "-m", "imgtune", "predict", str(run), str(folder), "--output", str(target),
                       "--device", "cpu"], env)
            said = re.search(r"in ([\d.]+) s \(([\d,.]+) images/s", r.pop("stderr"))
            r["images_per_s"] = float(said.group(2).replace(",", "")) if said else None
            r["rows"] = sum(1 for _ in open(target)) - 1
            out[f"{n}/{procs}"] = r
            print(f"predict {label} {n:,} x{procs}: {r['images_per_s']} images/s, {r['peak_rss_mib']:,.0f} MiB",
                  flush=True)
            target.unlink()
    return out


def markdown(res: dict) -> str:
    lines = []
    for label, rows in res.get("train", {}).items():
        lines += [f"train ({label}):", "", "| images | wall s | ms per image | peak RSS MiB | peak PSS MiB | "
                  "feature matrix MiB | peak PSS less the matrix MiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for n, r in rows.items():
            matrix = int(n) * FEATURE_WIDTH * 4 / 2**20
            pss = r.get("peak_pss_mib")
            lines.append(f"| {int(n):,} | {r['wall_s']:.0f} | {r['ms_per_image']:.2f} | {r['peak_rss_mib']:,.0f} | "
                         + (f"{pss:,.0f} | {matrix:,.0f} | {pss - matrix:,.0f} |" if pss else " | | |"))
        lines.append("")
    for label, rows in res.get("predict", {}).items():
        lines += [f"predict ({label}):", "", "| images | processes | images/s | wall s | peak RSS MiB | peak PSS MiB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for key, r in rows.items():
            n, procs = key.split("/")
            pss = f"{r['peak_pss_mib']:,.0f}" if r.get("peak_pss_mib") else ""
            lines.append(f"| {int(n):,} | {procs} | {r['images_per_s']:,.1f} | {r['wall_s']:.0f} | "
                         f"{r['peak_rss_mib']:,.0f} | {pss} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["train", "predict"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--work", type=Path, default=HERE / "out" / "scale")
    ap.add_argument("--results", type=Path, default=HERE / "scale_results.json")
    ap.add_argument("--python-path", help="run another checkout's code (its src folder), e.g. the code before")
    ap.add_argument("--label", default="this-code", help="the name its figures are kept under")
    args = ap.parse_args()
    if not FMNIST.exists():
        sys.exit(f"{FMNIST} not found: apt-get install dataset-fashion-mnist")
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.python_path:
        env["PYTHONPATH"] = str(Path(args.python_path).resolve())
    res = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.only in (None, "train"):
        res.setdefault("train", {}).setdefault(args.label, {}).update(train_part(args.work, args.sizes, env, args.label))
        args.results.write_text(json.dumps(res, indent=1))
    if args.only in (None, "predict"):
        run = args.work / f"run-{args.label}-{min(args.sizes)}"
        if not (run / "model.safetensors").exists():
            train_part(args.work, [min(args.sizes)], env, args.label)
        res.setdefault("predict", {}).setdefault(args.label, {}).update(predict_part(args.work, args.sizes, env, args.label, run))
        args.results.write_text(json.dumps(res, indent=1))
    print(markdown(res))


if __name__ == "__main__":
    main()
