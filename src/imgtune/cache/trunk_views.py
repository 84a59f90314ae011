"""The cache of the frozen trunk's outputs for views of each image, which fine-tuning trains the tail on.

The trunk is frozen (BatchNorm in eval mode, no dropout or stochastic depth), so its output for a given
input is fixed: computed once per view and cached as float16, it lets every fine-tune epoch run the tail
alone. View 0 is the eval transform (computed during feature extraction, shared by every split); views
1..K are augmented with random draws seeded by the image's content hash, the view number and the run's
seed, so a view is the same in every run and the cache is reused by the next run on the same data.
"Trunk views" are these cached outputs; the test-time augmentation views are data.transforms.TTAViews.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageFiles
from ..data.transforms import eval_transform, train_transform
from ..errors import DataError
from ..model.backbones import Backbone
from ..model.forward import run_network
from ..model.trunk import Tail, Trunk, TrunkAndFeatures
from ..progress import Reporter
from .store import ShardStore


class TrunkViews:
    """Trunk outputs of views of image files, stored float16 under ROOT/trunk/<key>/ (a ShardStore)."""

    def __init__(self, root: str | Path, backbone: Backbone, stage: int, *, augment: str, seed: int,
                 faster: Callable[[nn.Module, str], Callable[[], nn.Module]] | None = None):
        """`faster(net, part)`, when given, returns a function that builds a faster equivalent of `net`
        (the ONNX Runtime copy of the frozen trunk) the first time it is called."""
        self.backbone, self.stage, self.augment, self.seed = backbone, stage, augment, seed
        self.trunk = Trunk(backbone.model, stage).eval()
        self.extractor = TrunkAndFeatures(self.trunk, Tail(backbone.model, stage)).eval()
        # what computes the views (and fine-tuning's evaluation trunk)
        self.runner = faster(self.trunk, f"trunk{stage}") if faster else lambda: self.trunk
        size = backbone.data_config.image_size
        with torch.inference_mode():
            self.shape = tuple(self.trunk(torch.zeros(1, 3, size, size)).shape[1:])
        info = {"backbone": backbone.name, "weights": backbone.weights_id,
                "transform": backbone.data_config.signature, "stage": stage, "augment": augment, "seed": seed}
        key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:20]
        self.store = ShardStore(Path(root) / "trunk" / key, info, dtype="<f2")

    @staticmethod
    def key(digest: str, view: int) -> str:
        return f"{digest}:{view}"

    def view_seed(self, digest: str, view: int) -> int:
        return int.from_bytes(hashlib.sha256(f"{digest}:{view}:{self.seed}".encode()).digest()[:8], "little")

    def keep(self, digests: list[str], outputs: np.ndarray, view: int = 0) -> None:
        self.store.put_many([self.key(d, view) for d in digests], outputs)

    def keep_features(self, digests: list[str], outputs: np.ndarray) -> np.ndarray:
        """Rows of `extractor` outputs: store the trunk part (view 0) -> the features part."""
        size = int(np.prod(self.shape))
        self.keep(digests, outputs[:, :size].reshape(len(outputs), *self.shape))
        return outputs[:, size:]

    def missing(self, digests: list[str], views: range) -> list[tuple[int, int]]:
        return [(i, v) for v in views for i, d in enumerate(digests) if self.key(d, v) not in self.store]

    def fill(self, paths: list[str], digests: list[str], todo: list[tuple[int, int]], *, device: torch.device,
             reporter: Reporter, share: tuple[int, int] = (0, 1)) -> dict[str, str]:
        """Compute the (image index, view) pairs in `todo` (from `missing`) -> {bad path: reason}. With
        `share=(rank, world)` this process computes every world-th of each view's images."""
        bad: dict[str, str] = {}
        for v in sorted({v for _, v in todo}):
            mine = [i for i, w in todo if w == v][share[0]::share[1]]
            if not mine:
                continue
            transform = eval_transform(self.backbone.data_config) if v == 0 else train_transform(
                self.backbone.data_config, self.augment)
            seeds = None if v == 0 else [self.view_seed(digests[i], v) for i in mine]

            def store(ids: list[int], out: np.ndarray, v=v, mine=mine) -> None:
                self.keep([digests[mine[j]] for j in ids], out, v)

            images = ImageFiles([paths[i] for i in mine], None, transform, self.backbone.data_config.image_size,
                                seeds)
            _, failed = run_network(self.runner().to(device), images, device=device, reporter=reporter,
                                    description=f"Trunk view {v}", on_batch=store, keep=False)
            bad.update(failed)
        return bad

    def rows(self, paths: list[str], digests: list[str], views: list[int], *, device: torch.device,
             reporter: Reporter) -> torch.Tensor:
        """Outputs for (path, view) pairs as one float16 tensor [N, C, H, W], read from the store row by
        row (a batch's worth of memory); any missing or damaged are computed again first."""
        keys = [self.key(d, v) for d, v in zip(digests, views)]
        out, found = self.store.get_rows(keys, self.shape)
        lost = [(i, v) for i, (ok, v) in enumerate(zip(found, views)) if not ok]
        if lost:
            self.fill(paths, digests, lost, device=device, reporter=reporter)
            again, ok = self.store.get_rows([keys[i] for i, _ in lost], self.shape)
            for (i, _), row, there in zip(lost, again, ok):
                if not there:
                    raise DataError(f"{paths[i]}: no longer readable as it was when the run checked it; run again.")
                out[i] = row
        return torch.from_numpy(out)
