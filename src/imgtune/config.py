"""Settings for each stage as frozen dataclasses, and the recipes that fill them.

A recipe is data, not code: `train.py` and `classifier.py` read these fields and nothing else decides
how a stage trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass(frozen=True)
class HeadConfig:
    """The new classifier trained on cached backbone features."""

    kind: str = "linear"  # "linear" (dropout + linear) or "mlp" (the seed's Dense-ReLU-Dropout-Dense)
    hidden: int = 256
    dropout: float = 0.2
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    epochs: int = 100
    batch_size: int = 256
    patience: int | None = 10  # epochs without improvement before stopping; None trains every epoch
    label_smoothing: float = 0.1
    schedule: str = "cosine"  # "cosine" or "constant"


@dataclass(frozen=True)
class FineTuneConfig:
    """The head on the backbone, with the last blocks unfrozen."""

    unfreeze: int = 2  # last coarse groups of timm's group_matcher to train (1 = last stage + conv head)
    optimizer: str = "adamw"
    lr: float = 1e-3  # for the unfrozen backbone blocks
    head_lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    epochs: int = 4
    batch_size: int = 32
    # None: run the whole cosine schedule. Fine-tuning dips before it climbs, so stopping on the first
    # epochs without improvement would end it at the dip; the best-epoch checkpoint guards the result.
    patience: int | None = None
    label_smoothing: float = 0.1
    schedule: str = "cosine"
    augment: str = "light"  # "light" (random resized crop + flip), "seed" (the original affine set), "none"
    bn_train: bool = False  # False: every BatchNorm keeps its pretrained running statistics
    # Augmented views per training image whose frozen-trunk output is computed once and cached; epochs
    # then run only the trained blocks, cycling through these views and the plain one. 0: every epoch
    # runs the whole network on freshly augmented images.
    cached_views: int = 3


@dataclass(frozen=True)
class Recipe:
    name: str
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    # Class imbalance: "auto" compensates when the largest training class has 1.5x or more images than the
    # smallest (class-weighted loss, checkpoints chosen on balanced accuracy); "on" always, "off" never.
    balance: str = "auto"

    def __post_init__(self):
        if self.balance not in ("auto", "on", "off"):
            raise ConfigError(f"Unknown balance setting {self.balance!r}: expected auto, on or off.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        return cls(name=d["name"], head=HeadConfig(**d["head"]), finetune=FineTuneConfig(**d["finetune"]),
                   balance=d.get("balance", "auto"))


# The recipe imgtune grew from: a Dense-256 top model on VGG16 bottleneck features (RMSprop, 50 epochs,
# batch 16), then SGD lr 1e-4 momentum 0.9 on the last conv block with heavy affine augmentation.
SEED = Recipe(
    name="seed",
    head=HeadConfig(kind="mlp", hidden=256, dropout=0.5, optimizer="rmsprop", lr=1e-3, weight_decay=0.0,
                    epochs=50, batch_size=16, patience=None, label_smoothing=0.0, schedule="constant"),
    finetune=FineTuneConfig(unfreeze=1, optimizer="sgd", lr=1e-4, head_lr=1e-4, weight_decay=0.0,
                            momentum=0.9, epochs=50, batch_size=16, patience=None, label_smoothing=0.0,
                            schedule="constant", augment="seed", bn_train=True, cached_views=0),
    balance="off",
)

# Ours: a linear head early-stopped on validation, then the last two block groups with AdamW (3x the LR on
# the head), warm-up and cosine decay, label smoothing, frozen BatchNorm statistics, and light augmentation
# that keeps the object in view; imbalanced classes are weighted and checkpoints chosen on balanced accuracy.
DEFAULT = Recipe(name="default")

RECIPES = {r.name: r for r in (DEFAULT, SEED)}


def get_recipe(name: "str | Recipe") -> Recipe:
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ConfigError(f"Unknown recipe {name!r}: expected one of {', '.join(sorted(RECIPES))}.")
    return RECIPES[name]


def with_overrides(recipe: Recipe, *, epochs: int | None = None, batch_size: int | None = None,
                   head_epochs: int | None = None, cached_views: int | None = None) -> Recipe:
    """Apply the few command-line overrides, refusing values that cannot work."""
    for flag, value in (("--epochs", epochs), ("--head-epochs", head_epochs), ("--cached-views", cached_views)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} must be 0 or more; received {value}.")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more; received {batch_size}.")
    ft, head = recipe.finetune, recipe.head
    if epochs is not None:
        ft = dataclasses.replace(ft, epochs=epochs)
    if head_epochs is not None:
        head = dataclasses.replace(head, epochs=head_epochs)
    if batch_size is not None:
        ft = dataclasses.replace(ft, batch_size=batch_size)
    if cached_views is not None:
        ft = dataclasses.replace(ft, cached_views=cached_views)
    return dataclasses.replace(recipe, head=head, finetune=ft)
