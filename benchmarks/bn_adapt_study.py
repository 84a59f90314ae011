"""Does the frozen backbone's BatchNorm hold images far from ImageNet back? The logistic-regression
probe on pooled features of the backbone as pretrained, against the same probe on features of the same
backbone whose BatchNorm statistics were re-estimated on the training images (AdaBN, Li et al. 2016):
no weight changes, only the normalisation.

    python benchmarks/bn_adapt_study.py benchmarks/data/elpv [--image-size 224] [--from-stage 0]

--from-stage S re-estimates only the statistics of stage S onwards (blocks.S ...; 0: every BatchNorm,
the stem's included). Prints test accuracy / macro-F1 of both probes; DATA holds train/ and test/."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import files  # noqa: E402

from imgtune.data.datasets import ImageFiles  # noqa: E402
from imgtune.data.transforms import eval_transform  # noqa: E402
from imgtune.metrics import evaluate  # noqa: E402
from imgtune.model.backbones import create_backbone  # noqa: E402
from imgtune.model.forward import run_network  # noqa: E402
from imgtune.train.baselines import logistic_probe  # noqa: E402


def features(net, paths, cfg) -> np.ndarray:
    out, bad = run_network(net, ImageFiles(paths, None, eval_transform(cfg), cfg.image_size),
                           device=torch.device("cpu"))
    assert not bad, bad
    return np.stack([out[i] for i in range(len(paths))])


def adapt(model, paths, cfg, from_stage: int) -> None:
    """Re-estimate the running statistics of BatchNorm layers (of blocks[from_stage:] and after, or all)
    as the plain average over the training images."""
    chosen = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            stage = int(name.split(".")[1]) if name.startswith("blocks.") else (-1 if name == "bn1" else 99)
            if from_stage == 0 or stage >= from_stage:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over every batch
                chosen.append(m)
    model.eval()
    for m in chosen:
        m.train()
    loader = torch.utils.data.DataLoader(ImageFiles(paths, None, eval_transform(cfg), cfg.image_size),
                                         batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for x, *_ in loader:
            model(x)
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--from-stage", type=int, default=0)
    args = p.parse_args()
    classes = sorted(d.name for d in (args.data / "train").iterdir() if d.is_dir())
    (tr, y_tr), (te, y_te) = files(args.data, "train", classes), files(args.data, "test", classes)
    backbone = create_backbone(image_size=args.image_size)
    cfg, net = backbone.data_config, backbone.model.eval()
    for name in ("pretrained", "adapted"):
        t = time.perf_counter()
        if name == "adapted":
            adapt(net, tr, cfg, args.from_stage)
        x_tr, x_te = features(net, tr, cfg), features(net, te, cfg)
        probe = logistic_probe(x_tr, y_tr)
        m = evaluate(y_te, probe.predict_proba(x_te.astype(np.float64)), classes)
        print(f"{args.data.name} {name} (from stage {args.from_stage}): accuracy {m['accuracy']:.4f}, macro-F1 "
              f"{m['macro_f1']:.4f}, per class " + ", ".join(f"{c} {v['accuracy']:.3f}" for c, v in
                                                              m["per_class"].items())
              + f" ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
