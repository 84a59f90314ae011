"""One trained model, as `fit` produces it and a run folder holds it: what predict, evaluate, export,
serve and inspect use. Saved as config.json + model.safetensors; loaded with config.json checked as a
schema, so a tampered or hand-edited file is refused with what is wrong, never used half-valid."""

from __future__ import annotations

import dataclasses
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._version import __version__
from ..config import RUNTIMES, HeadConfig
from ..data.transforms import DataConfig
from ..devices import resolve_device
from ..errors import ConfigError, RunFolderError
from ..model.backbones import architecture
from ..model.heads import Classifier, make_head
from ..model.onnx_module import OnnxModule
from .folder import RunFolder

# what config.json carries about how the model was fitted, beside the model itself
FIT_INFO = ("weights", "recipe", "data", "counts", "class_counts", "skipped", "head_selection", "finetune",
            "decision", "calibration", "seconds", "augment", "backbone_choice", "cache", "corrections")


@dataclass
class TrainedModel:
    """The fitted state: the network (with its decision offsets) and everything needed to read its outputs."""

    backbone: str
    classes: list[str]
    model: torch.nn.Module  # a heads.Classifier, or an ONNX Runtime module with the same outputs
    data_config: DataConfig
    head_config: HeadConfig
    temperature: float | list[float]  # one per label for a multi-label model
    metric: str = "accuracy"
    recipe: str = "default"
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    runtime: str = "torch"
    run_dir: Path | None = None
    fit_info: dict = field(default_factory=dict)
    metrics: dict | None = None
    history: list[dict] = field(default_factory=list)
    task: str = "single"  # "multi": a sigmoid per label (classes are the labels), label sets as answers
    thresholds: list[float] | None = None  # multi-label: a label is given where its probability reaches this


def fitted_state(model) -> TrainedModel:
    """A TrainedModel, or the fitted state of an ImageClassifier (which holds one)."""
    return model if isinstance(model, TrainedModel) else model.trained_


def save_run(trained: TrainedModel, path) -> Path:
    """config.json + model.safetensors (+ metrics and history when known) into `path`."""
    if trained.runtime != "torch":
        raise RunFolderError("A classifier loaded with an ONNX runtime cannot be saved as a run; load it "
                             "with the torch runtime.")
    run = RunFolder(path)
    run.save_weights(trained.model.state_dict(), trained.classes)
    run.write_config({
        **trained.fit_info, "backbone": trained.backbone, "classes": trained.classes,
        "data_config": trained.data_config.to_dict(), "head": dataclasses.asdict(trained.head_config),
        "seed": trained.seed, "temperature": trained.temperature, "task": trained.task,
        **({"thresholds": trained.thresholds} if trained.task == "multi" else {}),
        "versions": {"imgtune": __version__, "torch": torch.__version__, "timm": _timm_version(),
                     "python": platform.python_version()}})
    if trained.metrics:
        run.write_metrics(trained.metrics)
    if trained.history:
        run.write_history(trained.history)
    return run.path


def load_run(path, *, device: "str | torch.device" = "auto", runtime: str = "torch") -> TrainedModel:
    """A run folder -> its TrainedModel. Only JSON, safetensors and (runtime "onnx" or "onnx-int8") ONNX
    are read; nothing is unpickled."""
    if runtime not in RUNTIMES or runtime == "auto":  # auto is chosen before loading: deploy.runtime
        raise ConfigError(f"Unknown runtime {runtime!r}: expected torch, onnx or onnx-int8.")
    run = RunFolder(path)
    cfg = run.read_config()
    try:
        classes, data_config, seed = _checked_config(cfg)
        head_cfg = HeadConfig(**cfg["head"])
        name = str(cfg["backbone"])
        task, thresholds = _checked_task(cfg, len(classes))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise RunFolderError(f"{str(run.config)!r} is incomplete or malformed ({type(e).__name__}: {e}).") from None
    if runtime == "torch":
        model = _torch_model(run, name, head_cfg, classes)
    else:
        model, device = _onnx_model(run, runtime, classes, data_config.image_size), "cpu"
    recipe = cfg.get("recipe") or {}
    where = device if isinstance(device, torch.device) else resolve_device(device)
    temperature = _temperature(cfg, run, len(classes) if task == "multi" else None)
    if task == "multi" and runtime != "torch":  # the exported file's own decisions, as any consumer of it reads them
        temperature, thresholds = _onnx_decisions(model, run, len(classes))
    return TrainedModel(name, classes, model.to(where).eval(), data_config, head_cfg, temperature,
                        metric=str(recipe.get("metric", "accuracy")), recipe=str(recipe.get("name", "default")),
                        seed=seed, device=where, runtime=runtime, run_dir=run.path,
                        fit_info={k: cfg[k] for k in FIT_INFO if k in cfg}, task=task, thresholds=thresholds)


def with_torch(m: TrainedModel) -> TrainedModel | None:
    """The model itself where it runs on PyTorch, else its run loaded again on PyTorch (what needs
    gradients, such as the report's Grad-CAM maps, runs there); None where the run cannot be read."""
    if m.runtime == "torch":
        return m
    if m.run_dir is None:
        return None
    try:
        return load_run(m.run_dir, device="cpu", runtime="torch")
    except RunFolderError:
        return None


def _temperature(cfg: dict, run: RunFolder, n_labels: int | None = None) -> float | list[float]:
    """config.json's temperature: a number, or (multi-label) one per label, each within the limits."""
    given = cfg.get("temperature", 1.0)
    values = [given] if n_labels is None else given if isinstance(given, list) and len(given) == n_labels else None
    ok = values is not None and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                    and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE for t in values)  # NaN fails too
    if not ok:
        what = "a number" if n_labels is None else f"a list of {n_labels} numbers"
        raise RunFolderError(f"{str(run.config)!r} has temperature {given!r}: expected {what} from "
                             f"{MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}.")
    return float(given) if n_labels is None else [float(t) for t in values]


def _onnx_decisions(model, run: RunFolder, n_labels: int) -> tuple[list[float], list[float]]:
    """A multi-label ONNX file's temperatures and thresholds, from its metadata, checked as config.json's are."""
    meta = model.metadata
    try:
        if meta.get("task") != "multi":
            raise ValueError("it was exported from a single-label model")
        _, thresholds = _checked_task(meta, n_labels)
        temperature = _temperature(meta, run, n_labels)
    except (ValueError, RunFolderError) as e:
        raise RunFolderError(f"The ONNX file of {str(run.path)!r} does not carry this run's label decisions ({e}); "
                             "export it again.") from None
    return temperature, thresholds


def _checked_task(cfg: dict, n_classes: int) -> tuple[str, list[float] | None]:
    """config.json's task ("single" when absent) and, for "multi", its thresholds: one per label, each
    a number from 0 to 1."""
    task = cfg.get("task", "single")
    if task not in ("single", "multi"):
        raise ValueError(f"task must be single or multi; found {task!r}")
    if task == "single":
        return task, None
    t = cfg.get("thresholds")
    ok = isinstance(t, list) and len(t) == n_classes and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in t)
    if not ok:
        raise ValueError(f"thresholds must be {n_classes} numbers from 0 to 1, one per label; found {t!r}")
    return task, [float(v) for v in t]


MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3  # beyond them softmax underflows to NaN or says nothing
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _checked_config(cfg: dict) -> tuple[list[str], DataConfig, int]:
    """config.json's classes, data config and seed, checked as a schema: a tampered or hand-edited file
    is refused with what is wrong (ValueError/TypeError, worded for the reader), never used half-valid."""
    classes = cfg["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)):
        raise ValueError(f"classes must be a list of 2 or more names; found {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes are listed more than once: {sorted({c for c in classes if classes.count(c) > 1})}")
    d = cfg["data_config"]

    def numbers(key: str, positive: bool) -> tuple[float, float, float]:
        v = d[key]
        ok = isinstance(v, list) and len(v) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
            for x in v)
        if not ok:
            raise ValueError(f"data_config.{key} must be 3 finite numbers{' above 0' if positive else ''}; found {v!r}")
        return tuple(float(x) for x in v)

    interpolation = d.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"data_config.interpolation must be one of {', '.join(INTERPOLATIONS)}; found {interpolation!r}")
    if not isinstance(d["image_size"], int) or isinstance(d["image_size"], bool):
        raise ValueError(f"data_config.image_size must be a whole number; found {d['image_size']!r}")
    data_config = DataConfig(d["image_size"], numbers("mean", False), numbers("std", True), interpolation)
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be a whole number from 0 to 2**32 - 1; found {seed!r}")
    return list(classes), data_config, seed


def _torch_model(run: RunFolder, name: str, head_cfg: HeadConfig, classes: list[str]) -> Classifier:
    n_classes = len(classes)
    body = architecture(name)
    model = Classifier(body, make_head(head_cfg, body.num_features, n_classes))
    state = run.load_weights(classes)
    state.setdefault("offsets", torch.zeros(n_classes))  # runs from before decision offsets decided by argmax
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise RunFolderError(f"{str(run.weights)!r} does not match config.json (backbone {name!r}, "
                             f"{n_classes} classes): {' '.join(first[:2])[:300]}") from None
    return model


def _onnx_model(run: RunFolder, kind: str, classes: list[str], image_size: int):
    path = run.path / ("model.int8.onnx" if kind == "onnx-int8" else "model.onnx")
    if not path.is_file():
        flag = " --quantize int8" if kind == "onnx-int8" else ""
        raise RunFolderError(f"{str(path)!r} is missing: run `imgtune export {run.path}{flag}` first.")
    model = OnnxModule(path)
    if model.metadata.get("classes") != classes:
        raise RunFolderError(f"{str(path)!r} was exported for other classes than config.json lists; export "
                             "it again.")
    shape = list(model.session.get_inputs()[0].shape)
    wanted = [3, image_size, image_size]
    if len(shape) != 4 or shape[1:] != wanted:
        raise RunFolderError(f"{str(path)!r} takes input of shape {shape}, but the run's images are "
                             f"[batch, 3, {image_size}, {image_size}]: export it again from this run.")
    return model


def _timm_version() -> str:
    import timm

    return timm.__version__
