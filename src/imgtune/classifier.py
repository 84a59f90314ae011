"""ImageClassifier: the one object a user holds. fit -> evaluate / predict -> save / load.

The facade over the pipeline: it holds the parameters, runs train.pipeline.fit inside the scoped side
effects a fit needs (seeded random state, CPU numerics, the process group under torchrun, the run
folder's lock), and keeps the one fitted state, a runs.trained.TrainedModel, that everything after
reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from . import devices
from .cache.features import default_cache_dir
from .config import TrainSettings
from .data.scan import labelled_files
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
from .train.context import FitContext

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

    def __init__(self, backbone: str = "efficientnet_lite0", **settings):
        """The parameters are config.TrainSettings' fields (the `imgtune train` flags of the same names),
        with their defaults; each is checked when fit runs."""
        self.set_params(**{**TrainSettings.defaults(), "backbone": backbone, **settings})

    def __getattr__(self, name: str):  # called only for what normal lookup does not find
        if name in ("trained_", "ranks_"):  # set by fit and load
            raise NotFittedError("This ImageClassifier is not trained yet: call fit(...) or "
                                 "ImageClassifier.load(RUN).")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def _parameter_names(cls) -> list[str]:
        return list(TrainSettings.options())

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
        defaults = TrainSettings.defaults()
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
        settings = TrainSettings(**self.get_params())  # every parameter checked, before any work
        if settings.backbone != "auto":  # known, and its weights installed
            (check_backbone if settings.weights is None else check_backbone_name)(settings.backbone)
        limit = TimeLimit.of(settings.time_limit)
        started = (limit.clock if limit else time.perf_counter)()
        recipe = settings.recipe_of()
        mlflow_log.check(mlflow)
        run = RunFolder(out if out is not None else tempfile.mkdtemp(prefix="imgtune-run-"))
        with contextlib.ExitStack() as scope:
            ranks, device = scope.enter_context(devices.ranks_and_device(settings.device))
            self.ranks_ = ranks
            if limit is not None and ranks.active:
                raise ParameterError("time_limit", "is for one process; under torchrun give the epochs "
                                                   "instead.")
            scope.enter_context(devices.seeded(settings.seed, device))
            scope.enter_context(devices.cpu_numerics())
            if not str(data).startswith("builtin:"):
                _refuse_run_inside_data(run, data)
            if ranks.main:
                scope.enter_context(run.locked())  # one training process per run folder
            ctx = FitContext(run, Reporter(settings.quiet or not ranks.main), device, ranks, settings.seed,
                             Path(settings.cache_dir) if settings.cache_dir else default_cache_dir(), recipe, limit,
                             started, checkpoint_every=settings.checkpoint_every)
            self.trained_ = pipeline.fit(ctx, data, settings.spec(), resume=resume, tensorboard=tensorboard,
                                         mlflow=mlflow, corrections=None if corrections is None else str(corrections),
                                         allow_new_classes=allow_new_classes)
        return self

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
        clf.trained_, clf.ranks_ = trained, devices.Ranks()
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
        return sharded.predict(self.trained_, inputs, ranks=devices.Ranks.current(), top_k=top_k, tta=tta,
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


def _init_signature() -> inspect.Signature:
    """ImageClassifier(backbone, *, the rest of TrainSettings' fields), for help(), IDEs that ask inspect,
    and scikit-learn."""
    kinds = [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2 + [inspect.Parameter.KEYWORD_ONLY] * len(TrainSettings.options())
    names = {f.name: f for f in dataclasses.fields(TrainSettings)}
    params = [inspect.Parameter("self", kinds[0])] + [
        inspect.Parameter(n, kind, default=names[n].default, annotation=names[n].type)
        for n, kind in zip(names, kinds[1:])]
    return inspect.Signature(params, return_annotation=None)


ImageClassifier.__init__.__signature__ = _init_signature()


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
