"""The frozen trunk and the trainable tail of a backbone, and the cache of the trunk's outputs for views
of each image that fine-tuning trains on.

Fine-tuning trains only the last block groups. Everything before them is frozen (BatchNorm in eval
mode, no dropout or stochastic depth), so its output for a given input is fixed: computed once per view
and cached as float16, it lets every fine-tune epoch run the tail alone. View 0 is the eval transform
(computed during feature extraction, shared by every split); views 1..K are augmented with random
draws seeded by the image's content hash, the view number and the run's seed, so a view is the same
in every run and the cache is reused by the next run on the same data.

Applies to backbones built as stem -> `blocks` stages -> conv head (timm's EfficientNet and MobileNet
families); for others `split_stage` returns None and fine-tuning runs the whole network on images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache.features import run_network
from ..cache.store import ShardStore
from ..data.transforms import eval_transform, train_transform
from ..errors import DataError
from ..progress import Reporter
from .backbones import Backbone

_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")


def split_stage(model: nn.Module, trainable: set[str]) -> int | None:
    """The first stage of `model.blocks` that holds a trainable parameter, when everything before it is
    frozen and deterministic; None when the model cannot be split there."""
    if not all(hasattr(model, a) for a in _PARTS) or not trainable:
        return None
    stages = [s for s in range(len(model.blocks)) if any(n.startswith(f"blocks.{s}.") for n in trainable)]
    top = {n for n in trainable if not n.startswith("blocks.")}
    if not stages or any(not n.startswith(("conv_head.", "bn2.")) for n in top):
        return None
    s = min(stages)
    if s == 0 or any(n.startswith(f"blocks.{t}.") for t in range(s) for n in trainable):
        return None
    trunk = Trunk(model, s)
    for m in trunk.modules():  # anything random in the trunk would make a cached output wrong
        if isinstance(m, nn.Dropout) and m.p > 0 or getattr(m, "drop_prob", 0) > 0:
            return None
    return s


class Trunk(nn.Module):
    """Images -> the activations entering stage `s` (the frozen part)."""

    def __init__(self, model: nn.Module, s: int):
        super().__init__()
        self.conv_stem, self.bn1 = model.conv_stem, model.bn1
        self.blocks = nn.Sequential(*model.blocks[:s])

    def forward(self, x):
        return self.blocks(self.bn1(self.conv_stem(x)))


class Tail(nn.Module):
    """Activations entering stage `s` -> pooled features (the part fine-tuning trains). Shares its
    modules with the backbone, so training the tail trains the backbone."""

    def __init__(self, model: nn.Module, s: int):
        super().__init__()
        self.blocks = nn.Sequential(*model.blocks[s:])
        self.conv_head, self.bn2 = model.conv_head, model.bn2
        self._forward_head = model.forward_head  # pooling (and dropout) of the backbone itself

    def forward(self, x):
        return self._forward_head(self.bn2(self.conv_head(self.blocks(x))), pre_logits=True)


class TrunkAndFeatures(nn.Module):
    """Images -> [trunk output, flattened | the backbone's pooled features]: one network for the extraction
    pass that fills both caches (`TrunkViews.keep` splits its rows)."""

    def __init__(self, trunk: Trunk, pool: Tail):
        super().__init__()
        self.trunk, self.pool = trunk, pool

    def forward(self, x):
        t = self.trunk(x)
        return torch.cat([t.flatten(1), self.pool(t)], 1)


class TrunkViews:
    """Trunk outputs of views of image files, stored float16 under ROOT/trunk/<key>/ (a ShardStore)."""

    def __init__(self, root: str | Path, backbone: Backbone, stage: int, *, augment: str, seed: int):
        self.backbone, self.stage, self.augment, self.seed = backbone, stage, augment, seed
        self.trunk = Trunk(backbone.model, stage).eval()
        self.extractor = TrunkAndFeatures(self.trunk, Tail(backbone.model, stage)).eval()
        self.runner = lambda: self.trunk  # what computes the views: replaced by a faster equivalent if any
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

            _, failed = run_network(self.runner().to(device), [paths[i] for i in mine], transform,
                                    self.backbone.data_config.image_size, device=device, reporter=reporter,
                                    description=f"Trunk view {v}", on_batch=store, seeds=seeds, keep=False)
            bad.update(failed)
        return bad

    def rows(self, paths: list[str], digests: list[str], views: list[int], *, device: torch.device,
             reporter: Reporter) -> torch.Tensor:
        """Outputs for (path, view) pairs as one float16 tensor [N, C, H, W]; any missing or damaged in
        the store are computed again first."""
        keys = [self.key(d, v) for d, v in zip(digests, views)]
        found = self.store.get_many(keys, self.shape)
        lost = [(i, v) for i, (k, v) in enumerate(zip(keys, views)) if k not in found]
        if lost:
            self.fill(paths, digests, lost, device=device, reporter=reporter)
            found.update(self.store.get_many([keys[i] for i, _ in lost], self.shape))
        for i, k in enumerate(keys):
            if k not in found:
                raise DataError(f"{paths[i]}: no longer readable as it was when the run checked it; run again.")
        return torch.from_numpy(np.stack([found[k] for k in keys]))
