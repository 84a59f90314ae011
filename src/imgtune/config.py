"""Settings for each stage as frozen dataclasses, and the recipes that fill them.

A recipe is data, not code: the training pipeline (train/) reads these fields and nothing else decides how
a stage trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError

# what runs a trained model: auto (ONNX Runtime where its copy of the model is checked, else PyTorch),
# PyTorch, ONNX Runtime in fp32 or int8
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
DEVICES = "auto, cpu, cuda, cuda:N or mps"  # what --device accepts

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
BALANCES = ("head", "sqrt", "balanced")  # fine-tuning's class weights
MULTI_LOSSES = ("bce", "asl")  # multi-label data: binary cross-entropy, the asymmetric loss


@dataclass(frozen=True)
class HeadConfig:
    """The new classifier trained on cached backbone features.

    "logistic" (the default recipe's): multinomial logistic regression fitted by full-batch L-BFGS, its L2
    strength and class weighting chosen by k-fold cross-validation over train+val (`selection.py`).
    "linear" (dropout + linear) and "mlp" (the seed's Dense-ReLU-Dropout-Dense) train by SGD-style
    epochs on the train split with the optimiser settings below."""

    kind: str = "logistic"
    hidden: int = 256
    dropout: float = 0.0
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    epochs: int = 100
    batch_size: int = 256
    patience: int | None = 10  # epochs without improvement before stopping; None trains every epoch
    label_smoothing: float = 0.0
    schedule: str = "cosine"  # "cosine" or "constant"
    folds: int = 5  # cross-validation folds of the logistic head's selection
    # The logistic head's candidates as (C, class weighting) pairs; () scores the eight L2 strengths of
    # model/linear.py with the weightings the metric and the class sizes call for. A retrain gives the
    # reviewed run's winner alone: its choice is kept, and its out-of-fold predictions are fitted again.
    candidates: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class FineTuneConfig:
    """The head on the backbone, with the last blocks unfrozen."""

    unfreeze: int = 2  # last coarse groups of timm's group_matcher to train (1 = last stage + conv head)
    optimizer: str = "adamw"
    # 1e-3 adapts the blocks to data far from ImageNet (digits: 0.941 -> 0.978 on validation in 4 epochs;
    # 1e-4 reached 0.949); where it pushes the blocks off their solution (clip art: the training loss
    # after warm-up 0.73 against the head's 0.29), the guard restarts from the head at 1e-4.
    lr: float = 1e-3  # for the unfrozen backbone blocks (when no candidates are given, or under torchrun)
    head_lr: float = 1e-3  # the head's, in this ratio to the blocks' rate whichever rate is chosen
    # Rates the blocks may train at, each probed briefly from the head and scored on validation before
    # the stage (train/rate.py), e.g. (1e-4, 3e-4, 1e-3); () trains at `lr`. Off by default: with
    # bn_train the first batches move every rate's validation loss (the statistics re-estimate), and the
    # short probe then favours the lowest rate, which on the ELPV solar cells gained nothing (BENCHMARKS.md).
    lr_candidates: tuple[float, ...] = ()
    weight_decay: float = 1e-4
    momentum: float = 0.9
    epochs: int = 4
    batch_size: int = 32
    # None: run the whole cosine schedule. Fine-tuning dips before it climbs, so stopping on the first
    # epochs without improvement would end it at the dip; the best-epoch checkpoint guards the result.
    patience: int | None = None
    label_smoothing: float = 0.0  # as the head was fitted: the hand-over to fine-tuning changes no loss
    schedule: str = "cosine"
    # "auto" (chosen from the data: train/augment.py), "light" (random resized crop + horizontal flip),
    # "rotations" (light + quarter turns and vertical flips), "seed" (the original affine set), "none"
    augment: str = "auto"
    # True: BatchNorm in the trained blocks normalises by each batch and updates its statistics (frozen
    # blocks never do); False: every BatchNorm keeps its pretrained running statistics.
    bn_train: bool = True
    # Augmented views per training image whose frozen-trunk output is computed once and cached; epochs
    # then run only the trained blocks, cycling through these views and the plain one. 0: every epoch
    # runs the whole network on freshly augmented images.
    cached_views: int = 3
    # The fine-tuning loss's class weights: "head" (the weighting the head's cross-validation chose),
    # "sqrt" (inverse square root of each class's training count) or "balanced" (inverse count); the
    # decision offsets fitted afterwards on held-out predictions turn the result back to the metric.
    balance: str = "head"
    warmup: float = 0.1  # share of the steps over which the learning rate rises from 0 (cosine schedule)
    clip_grad: float | None = None  # cap on the gradients' global norm


@dataclass(frozen=True)
class Recipe:
    name: str
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    # What the run is for, and so what every choice is made on: the head's selection, the fine-tune
    # checkpoint, keeping fine-tuning at all, and the decision offsets: accuracy, balanced_accuracy
    # (the mean per-class recall) or macro_f1.
    metric: str = "accuracy"
    # Per-class decision offsets fitted on held-out predictions to maximise `metric` (decide.py).
    offsets: bool = True
    # The loss of multi-label data (train/multilabel.py): binary cross-entropy, or the asymmetric loss.
    multi_loss: str = "bce"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}; received {self.metric!r}.")
        if self.finetune.balance not in BALANCES:
            raise ConfigError(f"balance must be one of {', '.join(BALANCES)}; received {self.finetune.balance!r}.")
        if self.multi_loss not in MULTI_LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(MULTI_LOSSES)}; received {self.multi_loss!r}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        finetune = {"lr_candidates": (), **d["finetune"]}  # runs from before the rate search trained at lr
        finetune["lr_candidates"] = tuple(finetune["lr_candidates"])
        head = {**d["head"], "candidates": tuple(tuple(c) for c in d["head"].get("candidates", ()))}
        return cls(name=d["name"], head=HeadConfig(**head), finetune=FineTuneConfig(**finetune),
                   metric=d.get("metric", "accuracy"), offsets=d.get("offsets", False),
                   multi_loss=d.get("multi_loss", "bce"))


# The recipe imgtune grew from: a Dense-256 top model on VGG16 bottleneck features (RMSprop, 50 epochs,
# batch 16), then SGD lr 1e-4 momentum 0.9 on the last conv block with heavy affine augmentation.
SEED = Recipe(
    name="seed",
    head=HeadConfig(kind="mlp", hidden=256, dropout=0.5, optimizer="rmsprop", lr=1e-3, weight_decay=0.0,
                    epochs=50, batch_size=16, patience=None, label_smoothing=0.0, schedule="constant"),
    finetune=FineTuneConfig(unfreeze=1, optimizer="sgd", lr=1e-4, head_lr=1e-4, weight_decay=0.0,
                            momentum=0.9, epochs=50, batch_size=16, patience=None, label_smoothing=0.0,
                            schedule="constant", augment="seed", bn_train=True, cached_views=0),
    metric="accuracy", offsets=False,
)

# Ours: a logistic head chosen by cross-validation on the cached features, then the last two block groups
# with AdamW at 1e-3 (restarted at 1e-4 when it diverges), warm-up and cosine decay, BatchNorm in the
# trained blocks normalising by the batch, augmentation chosen from the data, kept only where it beats
# the head on validation; decision offsets fitted for the metric.
DEFAULT = Recipe(name="default")

RECIPES = {r.name: r for r in (DEFAULT, SEED)}


def get_recipe(name: "str | Recipe") -> Recipe:
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ConfigError(f"Unknown recipe {name!r}: expected one of {', '.join(sorted(RECIPES))}.")
    return RECIPES[name]


AUGMENTS = ("auto", "light", "rotations", "seed", "none")


def with_overrides(recipe: Recipe, *, epochs: int | None = None, batch_size: int | None = None,
                   head_epochs: int | None = None, cached_views: int | None = None, metric: str | None = None,
                   augment: str | None = None, loss: str | None = None) -> Recipe:
    """Apply the few settings a caller may change, refusing values that cannot work (in the words of
    the Python API; the command line's flags have the same names)."""
    for name, value in (("epochs", epochs), ("head_epochs", head_epochs), ("cached_views", cached_views)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be a whole number, 0 or more; received {value!r}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be a whole number, 1 or more; received {batch_size!r}.")
    if head_epochs is not None and recipe.head.kind == "logistic":
        raise ConfigError("head_epochs applies to heads trained by epochs (the seed recipe's); the "
                          f"{recipe.name} recipe's logistic head is fitted by cross-validated L-BFGS.")
    if metric is not None and metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}; received {metric!r}.")
    if augment is not None and augment not in AUGMENTS:
        raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}; received {augment!r}.")
    if loss is not None and loss not in MULTI_LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(MULTI_LOSSES)}; received {loss!r}.")
    ft, head = recipe.finetune, recipe.head
    if epochs is not None:
        ft = dataclasses.replace(ft, epochs=epochs)
    if head_epochs is not None:
        head = dataclasses.replace(head, epochs=head_epochs)
    if batch_size is not None:
        ft = dataclasses.replace(ft, batch_size=batch_size)
    if cached_views is not None:
        ft = dataclasses.replace(ft, cached_views=cached_views)
    if augment is not None:
        ft = dataclasses.replace(ft, augment=augment)
    return dataclasses.replace(recipe, head=head, finetune=ft, metric=metric or recipe.metric,
                               multi_loss=loss or recipe.multi_loss)
