"""ImageClassifier: the one object a user holds. fit -> evaluate / predict -> save / load.

The facade over the pipeline: it holds the parameters, runs train.pipeline.fit inside the scoped side
effects a fit needs (seeded random state, CPU numerics, the process group under torchrun, the run
folder's lock), and keeps the one fitted state, a runs.trained.TrainedModel, that everything after
reads.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from . import engine
from .cache.features import default_cache_dir
from .config import get_recipe, with_overrides
from .data.scan import labelled_files
from .data.transforms import DataConfig
from .deploy.runtime import choose_runtime
from .errors import DataError, NotFittedError, ParameterError, RunFolderError
from .infer import predictor, sharded
from .model.backbones import check_available as check_backbone
from .model.backbones import check_name as check_backbone_name
from .progress import Reporter
from .report import mlflow_log
from .runs.folder import RunFolder
from .runs.trained import load_run, save_run
from .train import pipeline
from .train.budget import TimeLimit
from .train.context import FitContext, ModelSpec

UNKNOWN = predictor.UNKNOWN

def _fitted(name: str, doc: str) -> property:
    """A fitted attribute in scikit-learn's style (`clf.classes_`), read from the trained model; before
    fit or load it raises NotFittedError, an AttributeError, so `hasattr(clf, "classes_")` is False."""
    return property(lambda self: getattr(self.trained_, name), doc=doc)


class ImageClassifier:
    """Transfer learning from a folder of labelled images.

    >>> clf = ImageClassifier(epochs=3).fit("photos/", out="runs/p1")
    >>> clf.evaluate("photos/test")["per_class"]
    >>> clf.predict(["new/cat.jpg"])

    An estimator in scikit-learn's sense: the parameters are the constructor's, read and changed with
    get_params / set_params (so `sklearn.base.clone` makes an unfitted copy); what fit or load learned
    is in the attributes ending in "_".
    """

    classes_ = _fitted("classes", "The class (or label) names, in the order of the model's outputs.")
    model_ = _fitted("model", "The trained network (backbone and head) as a torch module.")
    data_config_ = _fitted("data_config", "The input size and normalisation the network was trained with.")
    head_config_ = _fitted("head_config", "The head's settings.")
    temperature_ = _fitted("temperature", "The calibration temperature (one per label for multi-label).")
    metric_ = _fitted("metric", "The metric the decisions were fitted for.")
    device_ = _fitted("device", "Where the model runs.")
    runtime_ = _fitted("runtime", "torch, onnx or onnx-int8: what computes the predictions.")
    run_dir_ = _fitted("run_dir", "The run folder the model was trained into or loaded from.")
    fit_info_ = _fitted("fit_info", "What the fit chose and measured (config.json's record).")
    metrics_ = _fitted("metrics", "The metrics.json document of the run's held-out split.")
    history_ = _fitted("history", "One record per epoch of both stages.")
    task_ = _fitted("task", "single or multi (a set of labels per image).")
    thresholds_ = _fitted("thresholds", "A multi-label model's decision threshold per label.")

    def __init__(self, backbone: str = "efficientnet_lite0", *, recipe: str = "default",
                 image_size: int | None = None, epochs: int | None = None, head_epochs: int | None = None,
                 batch_size: int | None = None, cached_views: int | None = None, metric: str | None = None,
                 augment: str | None = None, task: str | None = None, loss: str | None = None, seed: int = 0,
                 device: str = "auto", weights: str | None = None,
                 cache_dir: str | None = None, quiet: bool = False, checkpoint_every: float = 60.0,
                 time_limit: "float | str | TimeLimit | None" = None):
        self.backbone = backbone
        self.recipe = recipe
        self.image_size = image_size
        self.epochs = epochs
        self.head_epochs = head_epochs
        self.batch_size = batch_size
        self.cached_views = cached_views
        self.metric = metric  # accuracy, balanced_accuracy or macro_f1 (None: the recipe's)
        self.augment = augment  # fine-tuning's augmentation policy (None: the recipe's)
        self.task = task  # "single" or "multi" (multi-label: a set of labels per image); None: the data's
        self.loss = loss  # multi-label data's loss: "bce" or "asl" (None: the recipe's)
        self.seed = seed
        self.device = device
        self.weights = weights
        self.cache_dir = cache_dir
        self.quiet = quiet
        self.checkpoint_every = checkpoint_every  # seconds between checkpoints inside a fine-tune epoch
        # seconds the whole fit may take ('10m' or a train.budget.TimeLimit with its own clock and rates
        # too); fine-tune epochs are planned to fit in it
        self.time_limit = time_limit

    def __getattr__(self, name: str):  # called only for what normal lookup does not find
        if name in ("trained_", "ranks_"):  # set by fit and load
            raise NotFittedError("This ImageClassifier is not trained yet: call fit(...) or "
                                 "ImageClassifier.load(RUN).")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def _parameter_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters as set now (scikit-learn's estimator contract; none is itself an
        estimator, so `deep` changes nothing)."""
        return {name: getattr(self, name) for name in self._parameter_names()}

    def set_params(self, **params) -> "ImageClassifier":
        """Change constructor parameters; checked when fit runs, as the constructor's are. -> self"""
        known = self._parameter_names()
        for name, value in params.items():
            if name not in known:
                raise ParameterError(name, f"{{name}} is not a parameter of ImageClassifier; expected one of "
                                           f"{', '.join(known)}.")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v is not defaults[k] and v != defaults[k]]
        return f"{type(self).__name__}({', '.join(changed)})"

    def fit(self, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
            resume: bool = False, tensorboard: bool = False,
            mlflow: bool | str | None = None, corrections: str | os.PathLike | None = None,
            allow_new_classes: bool = False) -> "ImageClassifier":
        """Train on `data` into the run folder `out`; `resume` continues an interrupted run there, and
        `tensorboard` writes per-epoch scalars to out/tensorboard/. `mlflow` logs the fit to an MLflow run:
        True for $MLFLOW_TRACKING_URI (or MLflow's default), or a tracking URI. `corrections`: a CSV of
        path,action,label,reason,time rows (what `imgtune review` writes) relabelling or excluding images
        of `data` without touching them; a new class only with `allow_new_classes`."""
        if not predictor.is_path(data):
            raise DataError(f"fit takes a folder of class folders, a CSV file or builtin:NAME; received "
                            f"{type(data).__name__}. For a list of labelled files, write them to a CSV with "
                            "columns path,label.")
        self._check_fit_parameters()
        limit = TimeLimit.of(self.time_limit)
        started = (limit.clock if limit else time.perf_counter)()
        recipe = with_overrides(get_recipe(self.recipe), epochs=self.epochs, head_epochs=self.head_epochs,
                                batch_size=self.batch_size, cached_views=self.cached_views, metric=self.metric,
                                augment=self.augment, loss=self.loss)
        if self.task is not None and self.task not in ("single", "multi"):
            raise ParameterError("task", f"{{name}} must be single or multi; received {self.task!r}.")
        if self.image_size is not None:
            DataConfig.check_image_size(self.image_size)  # before any work
        if self.backbone == "auto" and self.weights is not None:
            raise ParameterError("weights", "{name} are for a named backbone: with backbone 'auto' imgtune "
                                            "chooses among EfficientNet-Lite0/1/2 and their packaged weights.")
        mlflow_log.check(mlflow)
        run = RunFolder(out if out is not None else tempfile.mkdtemp(prefix="imgtune-run-"))
        with contextlib.ExitStack() as scope:
            ranks, device = scope.enter_context(engine.ranks_and_device(self.device))
            self.ranks_ = ranks
            if limit is not None and ranks.active:
                raise ParameterError("time_limit", "is for one process; under torchrun give the epochs "
                                                   "instead.")
            scope.enter_context(engine.seeded(self.seed, device))
            scope.enter_context(engine.cpu_numerics())
            if not str(data).startswith("builtin:"):
                _refuse_run_inside_data(run, data)
            if ranks.main:
                scope.enter_context(run.locked())  # one training process per run folder
            ctx = FitContext(run, Reporter(self.quiet or not ranks.main), device, ranks, self.seed,
                             Path(self.cache_dir) if self.cache_dir else default_cache_dir(), recipe, limit,
                             started, checkpoint_every=self.checkpoint_every)
            spec = ModelSpec(self.backbone, self.weights, self.image_size, self.task)
            self.trained_ = pipeline.fit(ctx, data, spec, resume=resume, tensorboard=tensorboard, mlflow=mlflow,
                                         corrections=None if corrections is None else str(corrections),
                                         allow_new_classes=allow_new_classes)
        return self

    def _check_fit_parameters(self) -> None:
        """The parameters fit reads that no later step checks in the caller's words, checked at the door:
        before any work, and before any file is written."""
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ParameterError("backbone", f"{{name}} must be a model name or 'auto'; received {self.backbone!r}.")
        if self.backbone != "auto" and self.weights is None:
            check_backbone(self.backbone)
        elif self.backbone != "auto":
            check_backbone_name(self.backbone)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ParameterError("seed", f"{{name}} must be a whole number, 0 or more; received {self.seed!r}.")
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0:
            raise ParameterError("checkpoint_every", f"{{name}} must be seconds, 0 or more (0: after each epoch "
                                                     f"only); received {every!r}.")
        for name in ("weights", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ParameterError(name, f"{{name}} must be a path; received {value!r}.")
        if not isinstance(self.device, str):
            raise ParameterError("device", f"{{name}} must be auto, cpu, cuda, cuda:N or mps; received {self.device!r}.")

    def save(self, path: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors (+ metrics and history when known) to `path`."""
        return save_run(self.trained_, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto", quiet: bool = False,
             runtime: str = "torch", needs_gradients: str | None = None) -> "ImageClassifier":
        """A run folder -> a ready classifier. Only JSON, safetensors and (with runtime="onnx" or
        "onnx-int8") ONNX are read; nothing is unpickled. runtime="auto" (the command line's default):
        ONNX Runtime where it is installed and the run's model.onnx is checked against its weights
        (exported now when it is missing or stale), else PyTorch; `needs_gradients` (what needs them,
        such as "--explain") keeps it on PyTorch. The choice is said in one line and kept in runtime_."""
        reporter = Reporter(quiet)
        runtime, why = choose_runtime(path, runtime, device=device, needs_gradients=needs_gradients,
                                      reporter=reporter)
        if why:
            reporter.say(why)
        trained = load_run(path, device=device, runtime=runtime)
        clf = cls(trained.backbone, **_parameters_of(trained), device=device, quiet=quiet)
        clf.trained_, clf.ranks_ = trained, engine.Ranks()
        return clf

    def evaluate(self, data: str | os.PathLike, *, tta: bool = False) -> dict:
        """metrics.json for every labelled image under `data` (its test split when it has one). With `tta`,
        each image's prediction averages flipped and zoomed views, and "tta" says what that gained."""
        trained = self.trained_
        manifest = labelled_files(data, trained.classes, trained.task)
        logits, y, kept, bad = predictor.logits_for(trained, manifest.items, Reporter(self.quiet), tta=tta)
        if not len(y):
            raise DataError(f"None of the {len(manifest.items)} images in {manifest.source!r} could be decoded.")
        return {**predictor.metrics_of(trained, logits, y, kept), "source": manifest.source,
                "skipped": [{"path": p, "reason": r} for p, r in manifest.skipped + bad]}

    def predict(self, inputs, *, top_k: int = 5, tta: bool = False,
                min_confidence: float | None = None) -> predictor.Predictions:
        """Paths (files or folders), PIL images or HxWxC uint8 arrays -> one dict per image:
        {"path", "label", "probability", "top_k": [(label, probability), ...]}, with calibrated
        probabilities. With `min_confidence`, an image whose top probability is below it is labelled
        "unknown" (its top_k still lists the classes). Files that cannot be decoded are left out and
        listed in the result's `skipped`. A multi-label model answers {"path", "labels": the label set,
        "probabilities": {label: calibrated probability}} per image. Under torchrun (a process group
        joined), the files are shared among the processes and each is given every answer."""
        return sharded.predict(self.trained_, inputs, ranks=engine.Ranks.current(), top_k=top_k, tta=tta,
                               min_confidence=min_confidence, reporter=Reporter(self.quiet))

    def predict_proba(self, inputs, *, tta: bool = False) -> np.ndarray:
        """Calibrated probabilities [N, classes] in the order of `classes_`, one row per image predicted
        (files that cannot be decoded are left out, as in `predict`)."""
        rows = self.predict(inputs, top_k=len(self.classes_), tta=tta)
        order = {c: i for i, c in enumerate(self.classes_)}
        out = np.zeros((len(rows), len(order)))
        for i, r in enumerate(rows):
            for c, p in (r["probabilities"].items() if "probabilities" in r else r["top_k"]):
                out[i, order[c]] = p
        return out


def _parameters_of(trained) -> dict:
    """The constructor's parameters a loaded run was trained with, as far as its record says: a clone of
    the loaded classifier trains as the run did."""
    recipe = trained.fit_info.get("recipe") or {}
    finetune = recipe.get("finetune") or {}
    recorded = {"epochs": finetune.get("epochs"), "augment": finetune.get("augment"), "metric": recipe.get("metric")}
    return {"recipe": trained.recipe, "seed": trained.seed, "image_size": trained.data_config.image_size,
            "task": trained.task, **{k: v for k, v in recorded.items() if v is not None}}


def _refuse_run_inside_data(run: RunFolder, data) -> None:
    """A run folder inside a folder of class folders would be read as a class by the next train."""
    root = Path(str(data)).resolve()
    if root.is_dir() and run.path.resolve().is_relative_to(root):
        raise RunFolderError(f"--out {str(run.path)!r} is inside the data folder {str(data)!r}: the next "
                             "train on that data would read the run as a class. Choose an --out outside it.")
