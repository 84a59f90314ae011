"""torch Datasets over image files. A file that fails to decode yields a zero image and its reason, so one
bad file never stops a batch; the caller drops it and reports it."""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import BadImage, decode_rgb, read_bytes


class ImageFiles(Dataset):
    def __init__(self, paths: list[str], labels: list[int] | None, transform, image_size: int,
                 seeds: list[int] | None = None):
        self.paths = paths
        self.seeds = seeds  # per image: the random draws of its transform, the same in any worker
        self.labels = labels
        self.transform = transform
        self.image_size = image_size
        self._blank = None  # what a bad file yields: zeros shaped like the transform's output

    def blank(self) -> torch.Tensor:
        if self._blank is None:
            s = self.image_size
            self._blank = torch.zeros_like(self.transform(Image.new("RGB", (s, s))))
        return self._blank

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        label = self.labels[i] if self.labels is not None else -1
        try:
            img = decode_rgb(read_bytes(self.paths[i]), draft_size=self.image_size)
            if self.seeds is None:
                return self.transform(img), label, i, ""
            with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
                torch.manual_seed(self.seeds[i])
                return self.transform(img), label, i, ""
        except BadImage as e:
            return self.blank(), label, i, str(e)
