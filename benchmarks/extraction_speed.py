"""Feature extraction throughput against the bare forward pass of the same backbone in ONNX Runtime.

    python benchmarks/extraction_speed.py --images 256 --image-size 224 --rounds 3

Writes N JPEG photos (about 500x375, cut from scikit-image's sample photographs) once, then, alternating
for R rounds:
- reference: ONNX Runtime running a plain export of the backbone (timm's model as it is, default session
  options) on pre-made input tensors, batch 32; no decoding, no files;
- imgtune's frozen network (padding fixed for the image size, ONNX Runtime) on the same tensors;
- imgtune: `extract_features` over the JPEG files with a cold cache, as `imgtune train` runs it: decoding
  (Pillow) and resizing (PyTorch, uint8) in a background thread, the frozen network with its padding
  fixed and run by ONNX Runtime one single-threaded share of each batch per core, features written to
  the cache. Both paths imgtune uses are timed: the whole backbone (when fine-tuning is off)
  and the trunk whose outputs are cached for fine-tuning, followed by the rest of the frozen backbone;
- PyTorch eager: the same extraction with the backbone run by PyTorch.
Each path runs in its own process (as `imgtune train` would), after an untimed warm-up over 64 images.
Prints images per second (median over the rounds) and the ratios to the reference.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgtune.cache.features import FeatureCache, extract_features
from imgtune.cache.trunk_views import TrunkViews
from imgtune.model.backbones import create_backbone
from imgtune.model.frozen import fast_frozen
from imgtune.model.onnx_module import OnnxModule, trace
from imgtune.model.trunk import split_stage

BATCH = 32


def write_photos(folder: Path, n: int) -> list[str]:
    from skimage import data

    marker = folder / f"COMPLETE-{n}"
    paths = [folder / f"photo_{i:04d}.jpg" for i in range(n)]
    if marker.exists():
        return [str(p) for p in paths]
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.fromarray(getattr(data, name)()).convert("RGB")
               for name in ("chelsea", "coffee", "astronaut", "rocket", "cat")]
    rng = np.random.default_rng(0)
    for i, p in enumerate(paths):
        img = sources[i % len(sources)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.BICUBIC).save(p, quality=90)
    marker.write_text("complete\n")
    return [str(p) for p in paths]


def bare_onnx(backbone, size: int, n: int, workdir: Path, *, ours: bool = False) -> float:
    """Images/s of a forward pass on pre-made tensors: the plain export, or (`ours`) imgtune's frozen
    network (padding fixed, checked against PyTorch)."""
    if ours:
        net = fast_frozen(backbone.model, size, device=torch.device("cpu"), cache_root=workdir,
                          key_info={"trunk": False})
    else:
        path = workdir / "bare.onnx"
        if not path.exists():
            path.write_bytes(trace(backbone.model, size, "features"))
        net = OnnxModule(path)
    x = torch.randn(BATCH, 3, size, size)
    net(x)  # warm-up
    started = time.perf_counter()
    done = 0
    while done < n:
        net(x)
        done += BATCH
    return done / (time.perf_counter() - started)


def extraction(backbone, paths: list[str], size: int, workdir: Path, *, fast: bool, trunk: bool) -> float:
    """Images/s of a cold-cache extraction (the ONNX export, when used, is made once beforehand)."""
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(dir=workdir) as cache_root:
        cache = FeatureCache(cache_root, backbone)
        hooks = {}
        frozen = backbone.model
        if trunk:
            stage = split_stage(backbone.model, {n for n, _ in backbone.model.named_parameters()
                                                 if n.startswith(("blocks.5.", "blocks.6.", "conv_head.", "bn2."))})
            views = TrunkViews(cache_root, backbone, stage, augment="light", seed=0)
            frozen = views.extractor
            hooks["keep"] = views.keep_features
        net = (fast_frozen(frozen, size, device=cpu, cache_root=workdir, key_info={"trunk": trunk})
               if fast else frozen)
        started = time.perf_counter()
        extract_features(backbone, paths, cache, device=cpu, network=lambda: net, **hooks)
        return len(paths) / (time.perf_counter() - started)


PATHS = {"reference: bare ONNX Runtime forward": "bare",
         "imgtune's frozen network alone, same tensors": "ours",
         "imgtune, whole backbone": "whole",
         "imgtune, trunk cached + rest": "trunk",
         "PyTorch eager, whole backbone": "eager"}


def measure(path: str, images: int, size: int, out: Path) -> float:
    """Images/s of one path, after an untimed warm-up (exports and first-touch costs out of the timing)."""
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as training does (devices.cpu_numerics)
    paths = write_photos(out / "photos", images)
    backbone = create_backbone(image_size=size)
    if path in ("bare", "ours"):
        def run(n): return bare_onnx(backbone, size, n, out, ours=path == "ours")
    else:
        def run(n): return extraction(backbone, paths[:n], size, out, fast=path != "eager", trunk=path == "trunk")
    run(2 * BATCH)
    return run(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/extraction"))
    p.add_argument("--only", choices=sorted(PATHS.values()), help="measure one path in this process and print it")
    args = p.parse_args()
    if args.only:
        print(measure(args.only, args.images, args.image_size, args.out))
        return
    write_photos(args.out / "photos", args.images)
    speeds: dict[str, list[float]] = {k: [] for k in PATHS}
    for _ in range(args.rounds):  # each path in a fresh process, as `imgtune train` runs; alternating
        for name, path in PATHS.items():
            result = subprocess.run([sys.executable, __file__, "--only", path, "--images", str(args.images),
                                     "--image-size", str(args.image_size), "--out", str(args.out)],
                                    check=True, capture_output=True, text=True)
            speeds[name].append(float(result.stdout.split()[-1]))
    ref = statistics.median(speeds["reference: bare ONNX Runtime forward"])
    print(f"{args.images} JPEGs 500x375 -> {args.image_size} px, batch {BATCH}, {torch.get_num_threads()} threads, "
          f"{args.rounds} alternating rounds, each path in its own process (median images/s; all rounds)")
    print("| path | images/s | ratio to reference | rounds |")
    print("| --- | --- | --- | --- |")
    for name, values in speeds.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {med / ref:.2f}x | {', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
