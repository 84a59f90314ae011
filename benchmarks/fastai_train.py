"""fastai's side of the time-to-accuracy benchmark: `vision_learner(...).fine_tune(n)` the way its docs
show it, on the same images, split and backbone weights as `imgtune train`. Run by fastai_compare.py
inside its own virtual environment (fastai is not a dependency of imgtune):

    python benchmarks/fastai_train.py DATA --weights LITE0.safetensors --epochs N --image-size 128 --json OUT

DATA holds train/<class>/ and test/<class>/. The validation images are the ones imgtune's seeded split
holds out of train/ (10 %, stratified, seed 0), so both tools train on the same 4,500 images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

started = time.perf_counter()

import torch  # noqa: E402
from fastai.vision.all import (  # noqa: E402
    CategoryBlock,
    DataBlock,
    ImageBlock,
    Resize,
    accuracy,
    aug_transforms,
    vision_learner,
)

from imgtune.data.scan import scan  # noqa: E402  (only to reproduce the same split)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", type=Path)
    p.add_argument("--weights", required=True, help="tf_efficientnet_lite0 state dict in timm's layout")
    p.add_argument("--epochs", type=int, default=1, help="n in fine_tune(n)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()

    manifest = scan(str(args.data), seed=0)
    split = {it.path: name for name in ("train", "val", "test") for it in manifest.split(name)}
    classes = list(manifest.classes)
    items = [it.path for it in manifest.items if split[it.path] in ("train", "val")]
    block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=classes)),
                      get_items=lambda _: items,
                      splitter=lambda files: ([i for i, f in enumerate(files) if split[f] == "train"],
                                              [i for i, f in enumerate(files) if split[f] == "val"]),
                      get_y=lambda f: Path(f).parent.name,
                      item_tfms=Resize(args.image_size), batch_tfms=aug_transforms())
    dls = block.dataloaders(args.data, bs=args.batch_size)
    learn = vision_learner(dls, "tf_efficientnet_lite0", pretrained=True, metrics=accuracy,
                           pretrained_cfg_overlay={"file": args.weights})
    from safetensors.torch import load_file

    stem = learn.model[0].model.conv_stem.weight.detach().cpu()  # the pretrained weights really loaded
    if not torch.equal(stem, load_file(args.weights)["conv_stem.weight"]):
        raise SystemExit("fastai did not load the given weights")
    learn.fine_tune(args.epochs)

    test_paths = [it.path for it in manifest.split("test")]
    test_dl = dls.test_dl(test_paths, with_labels=True)
    probs, targets = learn.get_preds(dl=test_dl)
    test_accuracy = float((probs.argmax(1) == targets).float().mean())
    args.json.write_text(json.dumps({"tool": "fastai", "epochs": args.epochs, "test_accuracy": test_accuracy,
                                     "n_test": len(test_paths), "n_train": len(dls.train_ds),
                                     "n_val": len(dls.valid_ds), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
