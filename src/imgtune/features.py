"""Running a network over image files, and the feature cache (the recipe's "bottleneck features").

Cache entries are keyed by the file's content hash inside a folder keyed by backbone, weights and
transform, so renaming or moving a file reuses its features, an edited file or a new transform gets new
ones, and nothing else is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .atomic import write_bytes_atomic, write_json_atomic
from .backbones import Backbone
from .data.datasets import ImageFiles
from .data.images import BadImage, read_bytes
from .data.transforms import eval_transform
from .distributed import Ranks
from .progress import Reporter
from .runtime import loader_workers


def default_cache_dir() -> Path:
    if os.environ.get("IMGTUNE_CACHE"):
        return Path(os.environ["IMGTUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgtune"


def file_digest(path: str) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


@torch.inference_mode()
def run_network(net: nn.Module, paths: list[str], transform, image_size: int, *, device: torch.device,
                batch_size: int = 32, reporter: Reporter | None = None, description: str = "Images",
                on_batch=None) -> tuple[dict[int, np.ndarray], dict[str, str]]:
    """Decode, transform and forward `paths` in batches -> ({index: output row}, {bad path: reason}).

    Decoding runs in worker processes, overlapped with the forward pass. `on_batch(indices, outputs)` is
    called after each batch (the cache writes there, so an interrupted extraction keeps what it did).
    """
    reporter = reporter or Reporter(quiet=True)
    net.eval()
    outputs: dict[int, np.ndarray] = {}
    bad: dict[str, str] = {}
    if not paths:
        return outputs, bad
    workers = loader_workers() if len(paths) > 2 * batch_size else 0  # a worker costs ~1 s to start
    loader = DataLoader(ImageFiles(paths, None, transform, image_size), batch_size=batch_size,
                        num_workers=workers, persistent_workers=False, prefetch_factor=4 if workers else None)
    with reporter.bar(description, len(paths)) as advance:
        for x, _, idx, reasons in loader:
            ok = [j for j, r in enumerate(reasons) if not r]
            for j, r in enumerate(reasons):
                if r:
                    bad[paths[int(idx[j])]] = r
            if ok:
                out = net(x[ok].to(device)).float().cpu().numpy()
                ids = [int(idx[j]) for j in ok]
                outputs.update(zip(ids, out))
                if on_batch:
                    on_batch(ids, out)
            advance(len(reasons))
    return outputs, bad


class FeatureCache:
    """One file per image under ROOT/features/<key>/<hash[:2]>/<hash>.f32, written atomically.

    An entry is b"ITF1", the vector length (uint32), the float32 values, then the first 16 bytes of the
    SHA-256 of all that: a torn, truncated or altered entry fails the check and is recomputed."""

    MAGIC = b"ITF1"

    def __init__(self, root: str | os.PathLike, backbone: Backbone):
        self.key_info = {"backbone": backbone.name, "weights": backbone.weights_id,
                         "transform": backbone.data_config.signature}
        key = hashlib.sha256(json.dumps(self.key_info, sort_keys=True).encode()).hexdigest()[:20]
        self.dir = Path(root) / "features" / key

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.f32"

    def get(self, digest: str) -> np.ndarray | None:
        try:
            blob = self._path(digest).read_bytes()
        except OSError:
            return None
        body, check = blob[:-16], blob[-16:]
        if len(blob) < 24 or body[:4] != self.MAGIC or hashlib.sha256(body).digest()[:16] != check:
            return None  # torn or altered: recompute it
        n = int.from_bytes(body[4:8], "little")
        if len(body) != 8 + 4 * n:
            return None
        return np.frombuffer(body, dtype="<f4", offset=8).copy()

    def put(self, digest: str, vector: np.ndarray) -> None:
        v = np.ascontiguousarray(vector, dtype="<f4")
        body = self.MAGIC + len(v).to_bytes(4, "little") + v.tobytes()
        if not (self.dir / "key.json").exists():
            write_json_atomic(self.dir / "key.json", self.key_info)
        write_bytes_atomic(self._path(digest), body + hashlib.sha256(body).digest()[:16])


def extract_features(backbone: Backbone, paths: list[str], cache: FeatureCache, *, device: torch.device,
                     batch_size: int = 32, reporter: Reporter | None = None, ranks: Ranks = Ranks()):
    """Features for every path, from the cache where possible -> (features [N, D] float32 with NaN rows
    for bad files, {bad path: reason}, number of images that went through the backbone).

    Under torchrun each rank extracts every world-th missing image and writes it to the cache; the
    vectors are then gathered so that every rank holds them all."""
    reporter = reporter or Reporter(quiet=True)
    digests: list[str | None] = []
    bad: dict[str, str] = {}
    feats = np.full((len(paths), backbone.num_features), np.nan, dtype=np.float32)
    misses: list[int] = []
    with reporter.bar("Hashing", len(paths)) as advance:
        for i, p in enumerate(paths):
            try:
                d = file_digest(p)
            except BadImage as e:
                bad[p] = str(e)
                digests.append(None)
                advance()
                continue
            digests.append(d)
            v = cache.get(d)
            if v is None or v.shape != (backbone.num_features,):
                misses.append(i)
            else:
                feats[i] = v
            advance()
    if not misses:
        return feats, bad, 0
    mine = misses[ranks.rank::ranks.world]
    done: dict[int, np.ndarray] = {}

    def store(ids: list[int], out: np.ndarray) -> None:
        for j, row in zip(ids, out):
            i = mine[j]
            done[i] = row
            cache.put(digests[i], row)

    _, more_bad = run_network(backbone.model.to(device), [paths[i] for i in mine],
                              eval_transform(backbone.data_config), backbone.data_config.image_size, device=device,
                              batch_size=batch_size, reporter=reporter, description="Extracting features",
                              on_batch=store)
    for rows, failed in ranks.gather((done, more_bad)):
        for i, row in rows.items():
            feats[i] = row
        bad.update(failed)
    n_failed = sum(1 for i in misses if paths[i] in bad)
    return feats, bad, len(misses) - n_failed
