"""Settings for each stage as frozen dataclasses, and the recipes that fill them.

A recipe is data, not code: the training pipeline (train/) reads these fields and nothing else decides how
a stage trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import rules
from .errors import ConfigError, ParameterError
from .rules import Rule

# what runs a trained model: auto (ONNX Runtime where its copy of the model is checked, else PyTorch),
# PyTorch, ONNX Runtime in fp32 or int8
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
TASKS = ("single", "multi")  # one class per image, or a set of labels per image

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
    # reviewed run's winner and its plain logistic-regression probe: the choice is not searched again,
    # and their out-of-fold predictions are fitted again on the corrected labels.
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
    # A run folder whose fine-tuned model (its blocks and head) the stage starts from, instead of the head
    # on the pretrained body; still judged against the head. A retrain of a run that kept its fine-tuning
    # continues from it (improve.py), as the same classes allow.
    start_from: str | None = None


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


def with_overrides(recipe: Recipe, **changes) -> Recipe:
    """`recipe` with the settings a caller may change (TrainSettings' fields that override a recipe
    field: epochs, head_epochs, batch_size, cached_views, metric, augment, loss), each checked by its
    rule in the words of the Python API (the command line's flags have the same names); None changes
    nothing."""
    options = {name: o for name, o in TrainSettings.options().items() if o.recipe}
    for name, value in changes.items():
        if name not in options:
            raise ConfigError(f"{name} is not a recipe setting; expected one of {', '.join(options)}.")
        if value is not None:
            options[name].rule.check(name, value)
    if changes.get("head_epochs") is not None and recipe.head.kind == "logistic":
        raise ConfigError("head_epochs applies to heads trained by epochs (the seed recipe's); the "
                          f"{recipe.name} recipe's logistic head is fitted by cross-validated L-BFGS.")
    parts: dict[str, dict] = {}
    for name, value in changes.items():
        if value is not None:
            part, _, key = options[name].recipe.rpartition(".")
            parts.setdefault(part, {})[key] = value
    nested = {part: dataclasses.replace(getattr(recipe, part), **kv) for part, kv in parts.items() if part}
    return dataclasses.replace(recipe, **parts.get("", {}), **nested)


@dataclass(frozen=True)
class ModelSpec:
    """What network a fit trains, as the caller asked for it; "auto" and None are chosen from the data."""

    backbone: str  # a timm name, or "auto": EfficientNet-Lite0, 1 or 2, measured on the data
    weights: str | None = None  # a safetensors file of the backbone's weights; None: its packaged ones
    image_size: int | None = None  # None: the backbone's, or larger where the images are large and it pays
    task: str | None = None  # "single" or "multi" (a set of labels per image); None: the data's

    def with_backbone(self, name: str) -> "ModelSpec":
        return dataclasses.replace(self, backbone=name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Option:
    """A setting's rule (its check and its flag's reading), help text and flag; `recipe`: the recipe field
    it overrides ("finetune.epochs"), where it does."""

    help: str
    rule: Rule
    flags: tuple[str, ...] = ()  # default: --the-name
    metavar: str | None = None
    recipe: str | None = None


def option(default, help: str, rule: Rule, **how) -> "dataclasses.Field":
    return field(default=default, metadata={"option": Option(help, rule, **how)})


TIME_LIMIT = Rule("seconds, a duration such as '10m', or a TimeLimit",
                  lambda v: isinstance(v, (int, float, str)) and not isinstance(v, bool) or hasattr(v, "deadline"))
RECIPE = Rule("one of default, seed (or a Recipe)", lambda v: v in RECIPES or isinstance(v, Recipe),
              choices=tuple(RECIPES))


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of `imgtune train`, and ImageClassifier's parameters, each defined once: its default,
    its rule (the check, and how its flag's text is read), its help and flag, and the recipe field it
    overrides. The command's flags (cli.py), the classifier's keyword arguments, get_params and the
    checks at the door are derived from these fields; a run's checkpoints/settings.json records the recipe
    and the ModelSpec they make. A new setting is one field here. None: the recipe's (or the data's)."""

    backbone: str = option(
        "efficientnet_lite0", "registry or timm model name (--model is another name for it); auto: "
        "EfficientNet-Lite0, -Lite1 or -Lite2, the one a cross-validated head on a sample of the images scores "
        "best", rules.name(), flags=("--backbone", "--model"))
    recipe: str = option("default", "the recipe (default: ours; seed: the one imgtune grew from)", RECIPE)
    image_size: int | None = option(
        None, "input size in pixels; auto (the default): the backbone's own, or a larger one where most images "
        "are large and a measurement on a sample shows it pays", rules.whole(*rules.IMAGE_SIZES, auto=True), metavar="N|auto")
    epochs: int | None = option(None, "fine-tune epochs (0: head only)", rules.whole(0), metavar="N",
                                recipe="finetune.epochs")
    head_epochs: int | None = option(None, "epochs of a head trained by epochs (the seed recipe's)", rules.whole(1),
                                     metavar="N", recipe="head.epochs")
    batch_size: int | None = option(None, "fine-tune batch size", rules.whole(1), metavar="N",
                                    recipe="finetune.batch_size")
    cached_views: int | None = option(
        None, "augmented views per training image whose frozen-trunk output is cached, so fine-tune epochs run "
        "only the trained blocks (default: the recipe's; 0: off)", rules.whole(0), metavar="K",
        recipe="finetune.cached_views")
    metric: str | None = option(
        None, "what the run is for: the head's selection, the fine-tune checkpoint and the decision offsets "
        "maximise it (default: the recipe's, accuracy)", rules.one_of(METRICS), recipe="metric")
    augment: str | None = option(
        None, "fine-tuning's augmentation: auto (rotations where the classes do not depend on which way up an "
        "image is, measured on the data; else light), light (crops and mirror images), rotations (both flips "
        "and 90-degree turns: for images with no up, such as cells or aerial views), seed (the original affine "
        "set) or none (default: the recipe's, auto)", rules.one_of(AUGMENTS), recipe="finetune.augment")
    task: str | None = option(
        None, "single: one class per image; multi: a set of labels per image, from a CSV's labels column joined "
        "by ';' (default: what the data shows)", rules.one_of(TASKS))
    loss: str | None = option(
        None, "multi-label loss: binary cross-entropy or the asymmetric loss (default: the recipe's, bce)",
        rules.one_of(MULTI_LOSSES), recipe="multi_loss")
    label_smoothing: float | None = option(
        None, "fine-tuning's label smoothing (timm's --smoothing; default: the recipe's, 0)",
        rules.number(0.0, 0.5, "a number from 0 to 0.5"), recipe="finetune.label_smoothing")
    seed: int = option(0, "seeds every random choice: the same seed and data give the same run",
                       rules.whole(0, 2**32 - 1))
    device: str = option("auto", f"{rules.DEVICES} (default auto: a CUDA GPU where one is visible)", rules.device(),
                         metavar="DEVICE")
    weights: str | None = option(None, "pretrained backbone weights (.safetensors)", rules.path(), metavar="FILE")
    cache_dir: str | None = option(None, "feature cache (default ~/.cache/imgtune or $IMGTUNE_CACHE)", rules.path(),
                                   metavar="DIR")
    quiet: bool = option(False, "say nothing but errors and the result", rules.flag())
    checkpoint_every: float = option(
        60.0, "also checkpoint inside fine-tune epochs this often (default 60; 0: after each epoch only), so "
        "--resume loses little", rules.seconds(), metavar="SECONDS")
    time_limit: float | str | None = option(
        None, "finish within this wall time (600, 90s, 10m, 1.5h): fine-tune epochs are planned from measured "
        "throughput to fill it", TIME_LIMIT, metavar="DURATION")

    def __post_init__(self):
        defaults = self.defaults()
        for name, o in self.options().items():
            value, default = getattr(self, name), defaults[name]
            if not (value is None and default is None):
                o.rule.check(name, value)
        if self.backbone == "auto" and self.weights is not None:
            raise ParameterError("weights", "{name} are for a named backbone: with backbone 'auto' imgtune "
                                            "chooses among EfficientNet-Lite0/1/2 and their packaged weights.")

    @classmethod
    def options(cls) -> dict[str, Option]:
        return {f.name: f.metadata["option"] for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    def recipe_of(self) -> Recipe:
        """The recipe, with the settings that override its fields."""
        return with_overrides(get_recipe(self.recipe),
                              **{name: getattr(self, name) for name, o in self.options().items() if o.recipe})

    def spec(self) -> ModelSpec:
        return ModelSpec(self.backbone, self.weights, self.image_size, self.task)
