"""EfficientNet-Lite0, -Lite1 and -Lite2 side by side on the suite's data sets: the frozen features of
each (at its own input size), and of all three concatenated, scored by the logistic-regression probe on
the full training split against the test split; or, with --choice-only, what `--backbone auto` decides
on each set's training folder (train/backbone_choice.py, its sample and its rule).

    python benchmarks/backbone_probe.py --sets elpv,clipart
    python benchmarks/backbone_probe.py --sets fashion-mnist-lt,fashion-mnist --choice-only

DATA/<set>/{train,test}/<class>/ as benchmarks/accuracy_data.py writes them. Prints one line per
backbone: test accuracy / macro-F1 and the extraction's CPU and wall seconds."""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accuracy import files

from imgtune.cache.features import FeatureCache, extract_features
from imgtune.config import DEFAULT
from imgtune.data.scan import scan
from imgtune.devices import Ranks
from imgtune.metrics import evaluate
from imgtune.model.backbones import create_backbone
from imgtune.model.frozen import fast_frozen
from imgtune.progress import Reporter
from imgtune.runs.folder import RunFolder
from imgtune.train.backbone_choice import CANDIDATES, choose_backbone
from imgtune.train.baselines import logistic_probe
from imgtune.train.context import FitContext


def probe(data: Path, cache_dir: Path) -> None:
    classes = sorted(d.name for d in (data / "train").iterdir() if d.is_dir())
    (tr, y_tr), (te, y_te) = files(data, "train", classes), files(data, "test", classes)
    feats = {}
    for name in CANDIDATES:
        bb = create_backbone(name)
        cache = FeatureCache(cache_dir, bb)
        net = functools.partial(fast_frozen, bb.model, bb.data_config.image_size, device=torch.device("cpu"),
                                cache_root=cache_dir, key_info={**cache.key_info, "part": "features"})
        cpu, wall = time.process_time(), time.perf_counter()
        feats[name] = extract_features(bb, tr + te, cache, device=torch.device("cpu"), network=net)[0]
        _line(data.name, f"{name} ({bb.data_config.image_size} px)", feats[name], y_tr, y_te, classes,
              f"; extraction {time.process_time() - cpu:.0f} CPU s, {time.perf_counter() - wall:.0f} s wall")
    _line(data.name, "all three concatenated", np.concatenate(list(feats.values()), 1), y_tr, y_te, classes, "")


def _line(set_name, what, x, y_tr, y_te, classes, cost) -> None:
    model = logistic_probe(x[:len(y_tr)], y_tr)
    m = evaluate(y_te, model.predict_proba(x[len(y_tr):].astype(np.float64)), classes)
    print(f"{set_name} {what}: test accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}{cost}", flush=True)


def choice_only(data: Path, cache_dir: Path) -> None:
    ctx = FitContext(RunFolder(tempfile.mkdtemp()), Reporter(True), torch.device("cpu"), Ranks(), 0, cache_dir,
                     DEFAULT)
    name, record = choose_backbone(ctx, scan(data / "train", seed=0))
    print(f"{data.name}: {name} ({record['why']})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="elpv,clipart")
    p.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    p.add_argument("--cache-dir", type=Path, default=Path("benchmarks/out/backbone-cache"))
    p.add_argument("--choice-only", action="store_true", help="only what --backbone auto chooses on each set")
    args = p.parse_args()
    torch.set_num_threads(2)
    for s in args.sets.split(","):
        (choice_only if args.choice_only else probe)(args.data / s, args.cache_dir)


if __name__ == "__main__":
    main()
