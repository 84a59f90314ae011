"""The one loop that runs a network over image files: feature extraction, the trunk-view cache,
prediction, evaluation and export's parity check all go through it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from ..data.datasets import ImageFiles
from ..devices import loader_workers, release_free_memory
from ..progress import Reporter


def run_network(net: nn.Module, images: ImageFiles, *, device: torch.device, batch_size: int = 32,
                reporter: Reporter | None = None, description: str = "Images", on_batch=None, keep: bool = True
                ) -> tuple[dict[int, np.ndarray], dict[str, str]]:
    """Decode, transform and forward `images` in batches -> ({index: output row}, {bad path: reason}).

    `on_batch(indices, outputs)` is called after each batch (the cache writes there, so an interrupted
    extraction keeps what it did); with `keep=False` the outputs are only handed to it.
    """
    outputs: dict[int, np.ndarray] = {}
    bad: dict[str, str] = {}
    for ids, out, failed in network_batches(net, images, device=device, batch_size=batch_size, reporter=reporter,
                                            description=description):
        bad.update(failed)
        if ids:
            if keep:
                outputs.update(zip(ids, out))
            if on_batch:
                on_batch(ids, out)
    return outputs, bad


def network_batches(net: nn.Module, images: ImageFiles, *, device: torch.device, batch_size: int = 32,
                    reporter: Reporter | None = None, description: str = "Images"):
    """Yields (indices, output rows, {bad path: reason}) per batch of `images`, in their order.

    Decoding overlaps the forward pass: in worker processes, or in a background thread for a network
    that runs outside the GIL (ONNX Runtime)."""
    reporter = reporter or Reporter(quiet=True)
    net.eval()
    paths, dataset = images.paths, images
    if not paths:
        return
    if getattr(net, "runs_without_gil", False):
        loader = _prefetched(dataset, batch_size)
    else:
        workers = loader_workers() if len(paths) > 2 * batch_size else 0  # a worker costs ~1 s to start
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=False,
                            prefetch_factor=4 if workers else None)
    with reporter.bar(description, len(paths)) as advance:
        for n, (x, _, idx, reasons) in enumerate(loader, 1):
            ok = [j for j, r in enumerate(reasons) if not r]
            failed = {paths[int(idx[j])]: r for j, r in enumerate(reasons) if r}
            out = np.zeros((0,))
            if ok:
                with torch.inference_mode():
                    out = net(x[ok].to(device)).float().cpu().numpy()
            advance(len(reasons))
            yield [int(idx[j]) for j in ok], out, failed
            if n % 8 == 0:
                release_free_memory()


def _prefetched(dataset: ImageFiles, batch_size: int):
    """Batches decoded by one background thread while the caller's network computes the previous one.
    For a network that runs outside the GIL (ONNX Runtime): Pillow's decoding and resizing release it
    too, so both overlap without a worker process and without copying every batch between processes."""
    def make(start: int):
        return default_collate([dataset[j] for j in range(start, min(start + batch_size, len(dataset)))])

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(make, 0)
        for start in range(0, len(dataset), batch_size):
            batch = pending.result()
            if start + batch_size < len(dataset):
                pending = pool.submit(make, start + batch_size)
            yield batch
