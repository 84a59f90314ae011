"""Eval and train transforms, resolved from the backbone's own data config (mean, std, interpolation),
so the weights decide the preprocessing and predict matches train.

Every transform turns the decoded image into a uint8 tensor first and resamples that: PyTorch's
antialiased uint8 resize is several times faster than Pillow's (0.5 vs 2.5 ms for 500x375 -> 224 px
bicubic on one core) and within one level of it; scaling and normalising are then one fused step."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..errors import ConfigError
from ..rules import IMAGE_SIZE


@dataclass(frozen=True)
class DataConfig:
    """Everything that turns a decoded image into the tensor the backbone sees at eval time."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self):
        self.check_image_size(self.image_size)

    @staticmethod
    def check_image_size(size) -> None:
        """The one check of an input size, wherever it comes from (a parameter, a flag, config.json)."""
        IMAGE_SIZE.check("image_size", size)

    @property
    def signature(self) -> str:
        """Identifies the eval transform in feature-cache keys: any change here means new features."""
        m = ",".join(f"{v:.4f}" for v in self.mean)
        s = ",".join(f"{v:.4f}" for v in self.std)
        return f"draft-short{self.image_size}-center{self.image_size}-{self.interpolation}-m{m}-s{s}-v3"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), d.get("interpolation", "bicubic"))


def _interp(cfg: DataConfig) -> InterpolationMode:
    return InterpolationMode(cfg.interpolation)


def _as_uint8(img) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, H, W] holding a copy of its pixels, channels last in memory (the layout
    the fast resize kernels take)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


class _Normalized:
    """uint8 [3, H, W] -> float32 (x / 255 - mean) / std, in one pass."""

    def __init__(self, cfg: DataConfig):
        self.scale = torch.tensor([1 / (255 * s) for s in cfg.std]).view(3, 1, 1)
        self.shift = torch.tensor([-m / s for m, s in zip(cfg.mean, cfg.std)]).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32, memory_format=torch.contiguous_format).mul_(self.scale).add_(self.shift)


def _steps(cfg: DataConfig, *resampling, on_pillow: tuple = ()) -> T.Compose:
    """`on_pillow`: steps Pillow does faster (the affine warp), run before the image becomes a tensor."""
    return T.Compose([*on_pillow, _as_uint8, *resampling, _Normalized(cfg)])


MAX_ASPECT = 4  # a longer side beyond 4x the shorter is cut to its middle before "shorter side to S"


class _MiddleBand:
    """Cuts the longer side of an image to at most MAX_ASPECT times the shorter one, keeping the middle,
    so that scaling the shorter side to S never makes more than S x 4S pixels: a 1 x 100,000 picture
    would otherwise be scaled to S x 100,000 S (gigabytes) before the centre crop keeps S x S of it. The
    crop that follows keeps only the middle anyway, so no image of 4:1 or squarer changes. Works on
    PIL images and [C, H, W] tensors."""

    def __call__(self, img):
        h, w = T.functional.get_size(img)
        if max(w, h) <= MAX_ASPECT * min(w, h):
            return img
        cw, ch = min(w, MAX_ASPECT * h), min(h, MAX_ASPECT * w)
        return T.functional.center_crop(img, [ch, cw])


def _shorter_side_to(s: int, cfg: DataConfig) -> T.Compose:
    return T.Compose([_MiddleBand(), T.Resize(s, interpolation=_interp(cfg))])


def eval_transform(cfg: DataConfig) -> T.Compose:
    """Shorter side to image_size, centre crop: the whole of a square image, the middle of a long one."""
    s = cfg.image_size
    return _steps(cfg, _shorter_side_to(s, cfg), T.CenterCrop(s))


def train_transform(cfg: DataConfig, augment: str) -> T.Compose:
    s = cfg.image_size
    if augment == "none":
        return eval_transform(cfg)
    if augment == "light":
        return _steps(cfg, T.RandomResizedCrop(s, scale=(0.7, 1.0), interpolation=_interp(cfg)),
                      T.RandomHorizontalFlip())
    if augment == "rotations":  # no canonical orientation: any of the 8 symmetries of the square
        return _steps(cfg, T.RandomResizedCrop(s, scale=(0.7, 1.0), interpolation=_interp(cfg)),
                      T.RandomHorizontalFlip(), _QuarterTurns())
    if augment == "seed":
        # Keras ImageDataGenerator(rotation_range=40, width/height_shift_range=0.3, shear_range=0.2,
        # zoom_range=0.2, horizontal_flip=True, fill_mode="nearest"). torchvision's affine fills with a
        # constant, so the image is first padded by repeating its edge pixels (the "nearest" fill), the
        # affine acts on the padded canvas, and the centre is cropped back. Shear 0.2 is in radians, as
        # the recipe's Keras version read it.
        return _steps(cfg, on_pillow=(
            _shorter_side_to(s, cfg), T.CenterCrop(s),
            T.Pad(s, padding_mode="edge"),
            T.RandomAffine(degrees=40, translate=(0.3 / 3, 0.3 / 3), scale=(0.8, 1.2),
                           shear=math.degrees(0.2), interpolation=InterpolationMode.BILINEAR),
            T.CenterCrop(s), T.RandomHorizontalFlip()))
    raise ConfigError(f"Unknown augmentation {augment!r}: expected light, rotations, seed or none.")


class _QuarterTurns:
    """Turns a [C, H, W] image by 0, 90, 180 or 270 degrees, each equally likely (with a horizontal flip:
    every one of the square's eight symmetries, vertical flips among them)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))


class TTAViews:
    """Test-time augmentation: one image -> a [V, C, H, W] stack of views whose predictions are averaged.
    View 0 is the plain eval view, so the single-view prediction comes for free."""

    names = ("centre", "centre flipped", "zoom 1.15", "zoom 1.15 flipped")

    def __init__(self, cfg: DataConfig):
        s = cfg.image_size
        self.plain = eval_transform(cfg)
        self.zoom = _steps(cfg, _shorter_side_to(round(s * 1.15), cfg), T.CenterCrop(s))

    def __call__(self, img) -> torch.Tensor:
        a, b = self.plain(img), self.zoom(img)
        return torch.stack([a, a.flip(-1), b, b.flip(-1)])
