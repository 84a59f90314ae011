"""kill -9 `imgtune train` at random moments, resume it, and check the final weights are bit-identical to
a run that was never interrupted.

    python stress/kill_resume.py --trials 20

Each trial starts from an empty run folder and an empty feature cache, so a kill can land anywhere:
start-up and scan, feature extraction, the head stage, fine-tuning (checkpoints are written after every
batch, so also during a checkpoint write), evaluation and the report. After the kill the script looks
at what the run folder holds to say where it was, then runs the same command with --resume (or without
it when the run had not yet written split.csv, when there is nothing to resume) and compares every
tensor of model.safetensors with the reference run's. Results: a table on stdout and
stress/out/kill_resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from imgtune.cache.store import ShardStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_class_folders  # noqa: E402  (the tests' generated shapes)

OUT = Path(__file__).resolve().parent / "out"


def train_cmd(data: Path, run: Path, cache: Path, args) -> list[str]:
    return [sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run), "--cache-dir", str(cache),
            "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--batch-size", "16",
            "--checkpoint-every", "0", "--seed", "0", "--quiet"]


def where(run: Path, cache: Path, n_images: int) -> str:
    """What the run folder says about the moment of the kill."""
    ckpt = run / "checkpoints"
    torn = ckpt.is_dir() and any(p.name.endswith(".tmp") for p in ckpt.iterdir())
    if (run / "config.json").exists():
        phase = "evaluation or report"
    elif (ckpt / "finetune.safetensors").exists():
        try:
            with safe_open(str(ckpt / "finetune.safetensors"), "pt") as f:
                state = json.loads(f.metadata()["imgtune"])["state"]
            phase = f"fine-tune epoch {state['epoch'] + 1}, batch {state['batch']}"
        except Exception:
            phase = "fine-tune (checkpoint unreadable)"
    elif (ckpt / "head.safetensors").exists():
        phase = "fine-tune start"
    elif (run / "split.csv").exists():
        features = cache / "features"
        n = sum(len(ShardStore(d, {}).index()) for d in features.iterdir()) if features.exists() else 0
        phase = f"features ({n}/{n_images} cached)" if n < n_images else "head"
    else:
        phase = "start-up or scan"
    return phase + (" (during a checkpoint write)" if torn else "")


def same(a: dict, path: Path) -> bool:
    b = load_file(path)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    work = OUT / "kill_resume"
    shutil.rmtree(work, ignore_errors=True)
    data = write_class_folders(work / "photos", args.per_class, seed=args.seed)
    n_images = 3 * args.per_class
    started = time.perf_counter()
    ref = subprocess.run(train_cmd(data, work / "reference", work / "cache-reference", args), capture_output=True,
                         text=True)
    if ref.returncode:
        sys.exit(f"reference run failed: {ref.stderr[-2000:]}")
    full_seconds = time.perf_counter() - started
    reference = load_file(work / "reference" / "model.safetensors")
    rng = random.Random(args.seed)
    trials = []
    for i in range(args.trials):
        run, cache = work / f"run-{i}", work / f"cache-{i}"
        cmd = train_cmd(data, run, cache, args)
        kill_at = rng.uniform(0.05, 0.97) * full_seconds
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=kill_at)
            killed = False  # it finished first
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
        phase = where(run, cache, n_images) if killed else "finished before the kill"
        resumed = subprocess.run(cmd + (["--resume"] if (run / "split.csv").exists() else []),
                                 capture_output=True, text=True)
        ok = resumed.returncode == 0 and (run / "model.safetensors").exists()
        identical = ok and same(reference, run / "model.safetensors")
        trials.append({"trial": i + 1, "kill_at_s": round(kill_at, 1), "killed": killed, "phase": phase,
                       "resumed": ok, "identical": identical,
                       "error": None if ok else resumed.stderr.strip().splitlines()[-1:]})
        print(f"{i + 1:2d}  kill at {kill_at:5.1f} s  {phase:45s}  resumed {ok}  identical {identical}", flush=True)
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)

    summary = {"trials": len(trials), "killed": sum(t["killed"] for t in trials),
               "resumed": sum(t["resumed"] for t in trials), "identical": sum(t["identical"] for t in trials),
               "reference_seconds": round(full_seconds, 1), "settings": vars(args), "runs": trials}
    OUT.mkdir(exist_ok=True)
    (OUT / "kill_resume.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{summary['killed']} of {summary['trials']} runs killed; {summary['resumed']} resumed to the end, "
          f"{summary['identical']} with weights identical to the uninterrupted run "
          f"(reference {full_seconds:.0f} s).")


if __name__ == "__main__":
    main()
