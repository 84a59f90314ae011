"""What the epochs train on: shuffled batches of image files, or of cached trunk views, each epoch's
order drawn from (seed, epoch) and shared out among the ranks under torchrun."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..cache.trunk_views import TrunkViews
from ..config import FineTuneConfig
from ..data.datasets import ImageFiles
from ..data.manifest import Manifest
from ..data.transforms import DataConfig, eval_transform, train_transform
from ..devices import generator, loader_workers
from ..model.heads import Classifier
from ..model.trunk import Tail
from .context import FitContext
from .loop import epoch_seed


@dataclass
class Images:
    """What fine-tuning trains on: the scanned split, how images are read, the trunk-view cache (None:
    whole images), and each file's content digest (the caches' keys)."""

    manifest: Manifest
    data_config: DataConfig
    views: TrunkViews | None
    digest_of: dict[str, str]
    backbone_name: str


def share_batches(order: torch.Tensor, batch_size: int, ranks):
    """Index batches of `order` for this rank: each global batch of `batch_size` is dealt out among the
    ranks (in one process: the batch itself), the order padded with its first indices so that every
    rank gets as many batches as the others."""
    if ranks.active:
        order = torch.cat([order, order[:(-len(order)) % ranks.world]])
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size][ranks.rank::ranks.world]


def stage_batches(ctx: FitContext, cfg: FineTuneConfig, model: Classifier, images: Images, bs: int, n_batches: int):
    """-> (the module the epochs train, (train_batches(epoch), val_batches(), batches per epoch))."""
    m = images.manifest
    if images.views is not None:
        trained = Classifier(Tail(model.backbone, images.views.stage), model.head, model.offsets)
        return trained, (*_view_batches(ctx, cfg, images, bs), n_batches)
    ranks, workers, data_config = ctx.ranks, loader_workers(), images.data_config

    def files(items, transform):
        return ImageFiles([it.path for it in items], list(m.targets(items)), transform, data_config.image_size)

    train_set = files(m.split("train"), train_transform(data_config, cfg.augment))
    val_set = files(m.split("val"), eval_transform(data_config))

    def batches(dataset, *, shuffle: bool, epoch: int = 0):
        sampler = None
        if shuffle and ranks.active:  # each rank its share of one seeded permutation per epoch
            sampler = DistributedSampler(dataset, ranks.world, ranks.rank, shuffle=True, seed=ctx.seed)
            sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=bs, shuffle=shuffle and sampler is None, sampler=sampler,
                            num_workers=workers, generator=generator(epoch_seed(ctx.seed, epoch)),
                            pin_memory=ctx.device.type == "cuda")
        for x, y, _, reasons in loader:
            if any(reasons):  # the file changed since it was checked; leave it out of this batch
                keep = [not r for r in reasons]
                x, y = x[keep], y[keep]
            if len(y):
                yield x, y

    return model, (lambda e: batches(train_set, shuffle=True, epoch=e), lambda: batches(val_set, shuffle=False),
                   n_batches)


def _view_batches(ctx: FitContext, cfg: FineTuneConfig, images: Images, bs: int):
    """(train_batches(epoch), val_batches()) over cached trunk outputs, read from the cache a batch at
    a time in the epoch's shuffled order. Each image has the plain view and `cfg.cached_views` augmented
    ones; its own seeded permutation of them decides which one each epoch uses, so every view is seen once
    per cycle."""
    views, ranks, device, rep = images.views, ctx.ranks, ctx.device, ctx.reporter
    train_items, val_items = images.manifest.split("train"), images.manifest.split("val")
    n_views = cfg.cached_views + 1
    tp, td = [it.path for it in train_items], [images.digest_of[it.path] for it in train_items]
    vp, vd = [it.path for it in val_items], [images.digest_of[it.path] for it in val_items]
    views.store.refresh()  # every rank plans from the same shards, then shares the work out
    todo_train, todo_val = views.missing(td, range(n_views)), views.missing(vd, range(1))
    ranks.barrier()
    views.fill(tp, td, todo_train, device=device, reporter=rep, share=(ranks.rank, ranks.world))
    views.fill(vp, vd, todo_val, device=device, reporter=rep, share=(ranks.rank, ranks.world))
    ranks.barrier()
    views.store.refresh()  # the shards the other ranks wrote
    y = torch.as_tensor(images.manifest.targets(train_items))  # class indices, or 0/1 rows (multi-label)
    yv = torch.as_tensor(images.manifest.targets(val_items))
    g = generator(ctx.seed)
    cycle = torch.stack([torch.randperm(n_views, generator=g) for _ in train_items]) if train_items else None

    def read(paths, digests, idx, view_of):
        """One batch of views, read from the cache as it is needed: memory flat in the number of images."""
        idx = idx.tolist()
        return views.rows([paths[i] for i in idx], [digests[i] for i in idx], [view_of(i) for i in idx],
                          device=device, reporter=rep).float()

    def train_batches(epoch: int):
        view = cycle[:, epoch % n_views].tolist()
        order = torch.randperm(len(y), generator=generator(epoch_seed(ctx.seed, epoch)))
        for idx in share_batches(order, bs * ranks.world, ranks):
            yield read(tp, td, idx, view.__getitem__), y[idx]

    def val_batches():
        for i in range(0, len(yv), 256):
            idx = torch.arange(i, min(i + 256, len(yv)))
            yield read(vp, vd, idx, lambda _: 0), yv[idx]

    return train_batches, val_batches
