"""Why fine-tuning does or does not beat the head: one data set, several fine-tuning variants side by side
on the same cached features, head and split, each epoch's validation scores and the test scores.

    python benchmarks/finetune_study.py DATA --variants default,lr1e-4,bn --epochs 6

DATA holds train/ and test/ class folders (benchmarks/accuracy_data.py writes them). Every variant runs
the default recipe with one change (VARIANTS below), fine-tuning unguarded and never falling back to the
head, so that what the epochs do is seen whole. Results go to benchmarks/out/finetune-study.jsonl."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from imgtune import ImageClassifier
from imgtune.config import DEFAULT


def _ft(**kw):
    return lambda r: dataclasses.replace(r, finetune=dataclasses.replace(r.finetune, **kw))


VARIANTS = {
    "default": lambda r: r,
    "lr1e-4": _ft(lr=1e-4, head_lr=1e-4),
    "lr3e-4": _ft(lr=3e-4, head_lr=3e-4),
    "lr3e-5": _ft(lr=3e-5, head_lr=3e-5),
    "bn": _ft(bn_train=True),
    "bn-lr1e-4": _ft(bn_train=True, lr=1e-4, head_lr=1e-4),
    "bn-lr3e-4": _ft(bn_train=True, lr=3e-4, head_lr=3e-4),
    "sgd": _ft(optimizer="sgd", lr=1e-2, head_lr=1e-2),
    "none": _ft(augment="none"),
    "rotations": _ft(augment="rotations"),
    "unfreeze3": _ft(unfreeze=3),
    "bn-rot": _ft(bn_train=True, augment="rotations"),
    "bn-rot-u4": _ft(bn_train=True, augment="rotations", unfreeze=4),
    "bn-rot-lr3e-4": _ft(bn_train=True, augment="rotations", lr=3e-4, head_lr=3e-4),
    "sqrt": _ft(balance="sqrt"),
    "balanced": _ft(balance="balanced"),
    "sqrt-u3": _ft(balance="sqrt", unfreeze=3),
    "u3": _ft(unfreeze=3),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--variants", default="default")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--cache-dir", type=Path, default=Path("benchmarks/out/study-cache"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/finetune-study.jsonl"))
    p.add_argument("--label", default="study")
    args = p.parse_args()
    import imgtune.train.finetune as finetune

    finetune.DIVERGED = float("inf")  # unguarded: see what the epochs do
    for name in args.variants.split(","):
        recipe = VARIANTS[name](dataclasses.replace(DEFAULT, name=f"study-{name}"))
        run = Path("benchmarks/out/study-runs") / f"{args.label}-{args.data.name}-{name}"
        shutil.rmtree(run, ignore_errors=True)
        started = time.process_time(), time.perf_counter()
        clf = ImageClassifier(recipe=recipe, epochs=args.epochs, image_size=args.image_size,
                              cache_dir=str(args.cache_dir), quiet=True).fit(str(args.data / "train"), out=run)
        test = clf.evaluate(str(args.data / "test"))
        ft = clf.fit_info_["finetune"]
        curve = [(h["epoch"], round(h.get("loss") or 0, 4), round(h["val_accuracy"], 4))
                 for h in clf.history_ if h["stage"] == "fine-tune"]
        row = {"label": args.label, "set": args.data.name, "variant": name, "epochs": args.epochs,
               "kept": ft["kept"], "val_head": ft.get("val_head"), "val_finetuned": ft.get("val_finetuned"),
               "best_epoch": ft.get("best_epoch"), "curve": curve, "test_accuracy": test["accuracy"],
               "test_macro_f1": test["macro_f1"],
               "per_class": {c: round(v["accuracy"], 3) for c, v in test["per_class"].items()},
               "cpu_s": round(time.process_time() - started[0]), "wall_s": round(time.perf_counter() - started[1])}
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
