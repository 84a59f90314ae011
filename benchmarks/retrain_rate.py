"""The rate and length of a retrain that continues from the reviewed run's fine-tuned model: one retrain of
RUN (a reviewed run folder, as benchmarks/improve_loop.py leaves them: its K=200 round's
`k200-r1-reviewed`) at the given rate and epochs, scored on TEST (clean labels); one JSON line.

    python benchmarks/retrain_rate.py RUN OUT TEST --cache-dir CACHE --rate 1e-4 --epochs 1

`--rate` is the rate the continued stage trains its blocks and head at (the recipe's rate is set to
rate / CONTINUED_RATE for this retrain only); seconds are the retrain call's wall time in this process."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("test")
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    a = ap.parse_args()

    from imgtune import ImageClassifier, improve
    from imgtune.config import Recipe
    from imgtune.train.finetune import CONTINUED_RATE

    recipe_lr = a.rate / CONTINUED_RATE
    as_recorded = Recipe.from_dict.__func__

    def with_rate(cls, d):  # the reviewed run's recipe, its blocks' and head's rates changed
        r = as_recorded(cls, d)
        return dataclasses.replace(r, finetune=dataclasses.replace(r.finetune, lr=recipe_lr, head_lr=recipe_lr))

    Recipe.from_dict = classmethod(with_rate)
    started = time.perf_counter()
    improve.retrain(a.run, a.out, epochs=a.epochs, quiet=True, cache_dir=a.cache_dir, say=lambda *_: None)
    seconds = time.perf_counter() - started
    m = ImageClassifier.load(a.out, quiet=True).evaluate(a.test)
    finetune = json.loads(Path(a.out, "config.json").read_text())["finetune"]
    history = [json.loads(line) for line in open(Path(a.out, "history.jsonl"))]
    print(json.dumps({"rate": finetune["lr"], "epochs": a.epochs, "accuracy": round(m["accuracy"], 4),
                      "macro_f1": round(m["macro_f1"], 4), "kept": finetune["kept"],
                      "val": [h["val_accuracy"] for h in history if h.get("stage") == "fine-tune"],
                      "seconds": round(seconds, 1),
                      "per_class": [round(v["accuracy"], 3) for v in m["per_class"].values()]}))


if __name__ == "__main__":
    main()
