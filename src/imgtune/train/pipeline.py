"""One fit, as the list of its steps: check the run folder, scan, backbone, features, head, fine-tune,
decide and calibrate, evaluate, save. Each step keeps the run folder up to date, so an interrupted fit
continues with resume=True."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic, write_json_atomic
from ..cache.trunk_views import TrunkViews
from ..config import ModelSpec, with_overrides
from ..data.builtin import resolve as resolve_data
from ..data.corrections import apply_corrections
from ..data.manifest import Manifest
from ..data.scan import find_images, require_usable, scan
from ..devices import prepare
from ..errors import DataError, ParameterError, RunFolderError
from ..model.backbones import Backbone, create_backbone
from ..model.heads import Classifier
from ..model.linear import load_into
from ..report.mlflow_log import MlflowLog
from ..report.page import write_report
from ..report.tensorboard import TensorBoardLog
from ..runs.trained import TrainedModel, load_run, save_run
from .augment import choose_augment
from .backbone_choice import choose_backbone
from .context import FitContext
from .evaluation import decide_and_evaluate, write_diagnosis
from .extraction import Features, features, trunk_views
from .finetune import Images, fine_tune
from .head import Head, fit_head
from .resolution import auto_image_size


def fit(ctx: FitContext, data: str, spec: ModelSpec, *, resume: bool, tensorboard: bool,
        mlflow: bool | str | None = None, corrections: str | None = None,
        allow_new_classes: bool = False) -> TrainedModel:
    """`spec`: the network to train -> the trained model, saved in ctx.run. Ranks other than 0 return the
    model rank 0 saved. `mlflow` (True or a tracking URI): rank 0 logs the fit to an MLflow run too, the
    server reached before any step. `corrections`: a CSV relabelling or excluding images of `data`."""
    settings = {"recipe": ctx.recipe.to_dict(), **spec.to_dict(), "corrections": corrections,
                "allow_new_classes": allow_new_classes, "seed": ctx.seed, "data": str(data)}
    with MlflowLog.maybe(mlflow if ctx.ranks.main else None, ctx.run, settings, ctx.say) as tracking:
        trained = _fit(ctx, data, spec, resume=resume, tensorboard=tensorboard, tracking=tracking,
                       corrections=corrections, allow_new_classes=allow_new_classes)
        tracking.finish(ctx.run, trained.history)
    return trained


def _fit(ctx: FitContext, data: str, spec: ModelSpec, *, resume: bool, tensorboard: bool, tracking,
         corrections: str | None, allow_new_classes: bool) -> TrainedModel:
    """fit's steps; `tracking` hears of each epoch as TensorBoard does."""
    source = resolve_data(str(data), ctx.cache_root)
    if source != str(data):  # builtin:NAME: where its images are, for inspect, evaluate and embed
        ctx.say(f"Data: {data} is the image folder {source}")
    manifest = check_and_scan(ctx, source, spec, resume, corrections, allow_new_classes)
    ctx.say(manifest.summary())
    ctx.images = len(manifest.items)
    if spec.backbone == "auto":  # Lite0, Lite1 or Lite2, measured on a sample of the training images
        spec = spec.with_backbone(choose_backbone_for(ctx, manifest, spec.image_size))
    backbone = create_backbone(spec.backbone, weights=spec.weights, image_size=spec.image_size)
    if spec.image_size is None:  # auto: a larger input where the images are large and it pays
        backbone = auto_image_size(ctx, backbone, manifest)
    choose_augmentation(ctx, backbone, manifest)
    views = trunk_views(ctx, backbone, spec.backbone)
    feats = features(ctx, backbone, manifest, views)
    stages = train_stages(ctx, backbone, feats, views, spec.backbone, tensorboard=tensorboard, tracking=tracking)
    if not ctx.ranks.main:  # rank 0 alone decides, evaluates and writes the run; the others read it
        ctx.ranks.barrier()
        return load_run(ctx.run.path, device=ctx.device)
    trained = finish(ctx, spec.backbone, backbone, feats, views, stages)
    ctx.ranks.barrier()
    return trained


@dataclass
class Stages:
    """What training returned: the head stage, the classifier (the head on the backbone; fine-tuned where
    fine-tuning was kept), what fine-tuning kept and why, and its epochs."""

    head: Head
    model: Classifier
    finetune: dict
    finetune_history: list[dict]


def train_stages(ctx: FitContext, backbone: Backbone, feats: Features, views: TrunkViews | None, name: str, *,
                 tensorboard: bool, tracking) -> Stages:
    """The head on the cached features, then fine-tuning (when the recipe has epochs), each epoch logged
    to TensorBoard and `tracking`."""
    with TensorBoardLog.maybe(ctx.run.path / "tensorboard", tensorboard and ctx.ranks.main) as tb:
        def log_epoch(record: dict, step: int) -> None:
            tb.epoch(record, step)
            tracking.epoch(record, step)

        with _timed(ctx, "head"):
            head = fit_head(ctx, feats.splits, backbone.num_features, len(feats.manifest.classes), log_epoch,
                            multi=feats.manifest.multi)
        model = prepare(Classifier(backbone.model, head.module.to(ctx.device)), ctx.device)
        finetune, ft_history = {"kept": False, "reason": "not asked for (--epochs 0)"}, []
        with _timed(ctx, "finetune"):
            if ctx.recipe.finetune.epochs > 0:
                images = Images(feats.manifest, backbone.data_config, views, feats.digest_of, name)
                ft_history, finetune = fine_tune(ctx, model, images, head, log_epoch, feats.extract_rate)
        if views is not None:  # nothing past fine-tuning reads the cache: its index (~200 bytes a view) goes
            views.store.refresh()
    return Stages(head, model, finetune, ft_history)


def finish(ctx: FitContext, name: str, backbone: Backbone, feats: Features, views: TrunkViews | None,
           stages: Stages) -> TrainedModel:
    """Rank 0's end of the fit: the kept weights, the decisions and the metrics, the diagnosis, then the
    TrainedModel assembled from them, saved with its report."""
    head, model, m = stages.head, stages.model, feats.manifest
    if not stages.finetune["kept"] and head.choice is not None:  # the head alone: the one fitted on train+val
        load_into(model.head[-1], head.choice.all_head)
    network = TrainedModel(name, list(m.classes), model.eval(), backbone.data_config, ctx.recipe.head, 1.0,
                           device=ctx.device, task=m.task)  # before its decisions
    with _timed(ctx, "evaluate"):
        evaluation = decide_and_evaluate(ctx, network, feats, views, head.choice, stages.finetune["kept"])
    if not m.multi and ctx.limit is None:  # label errors out of fold, per-class learning curves
        with _timed(ctx, "diagnosis"):
            write_diagnosis(ctx, feats, head.choice, evaluation.metrics["split"])
    elif not m.multi:  # its head fits are not in the time plan: the limit is kept
        ctx.say(f"Diagnosis (label errors, learning curves) left out under --time-limit: `imgtune inspect "
                f"{m.source} --run {ctx.run.path}` finds the label errors.")
    ctx.seconds["total"] = time.perf_counter() - ctx.started_wall
    per_class = m.targets(m.items).sum(0) if m.multi else np.bincount(m.targets(m.items), minlength=len(m.classes))
    fit_info = {"weights": backbone.weights_id, "recipe": ctx.recipe.to_dict(), "data": m.source,
                "counts": m.counts(), "skipped": len(m.skipped),
                "class_counts": {c: int(n) for c, n in zip(m.classes, per_class)},
                "head_selection": head.choice.to_dict() if head.choice is not None else None,
                "finetune": stages.finetune, "decision": evaluation.decision.to_dict(),
                "calibration": evaluation.calibration, "cache": str(ctx.cache_root), **ctx.choices,
                "seconds": {k: round(v, 2) for k, v in ctx.seconds.items()}}
    trained = TrainedModel(name, list(m.classes), model, backbone.data_config, ctx.recipe.head,
                           evaluation.temperature, metric=ctx.recipe.metric, recipe=ctx.recipe.name, seed=ctx.seed,
                           device=ctx.device, run_dir=ctx.run.path, fit_info=fit_info, metrics=evaluation.metrics,
                           history=head.history + stages.finetune_history, task=m.task,
                           thresholds=evaluation.thresholds)
    save_run(trained, ctx.run.path)
    write_report(ctx.run.path, trained.metrics, ctx.run.report)
    return trained


@contextlib.contextmanager
def _timed(ctx: FitContext, name: str):
    """Adds the wall seconds of a step to ctx.seconds[name]."""
    t = time.perf_counter()
    yield
    ctx.seconds[name] = ctx.seconds.get(name, 0.0) + time.perf_counter() - t


def check_and_scan(ctx: FitContext, source: str, spec: ModelSpec, resume: bool, corrections: str | None = None,
                   allow_new_classes: bool = False) -> Manifest:
    """The run folder's state against `resume`, the settings against an interrupted run's, then the
    scan: the split is written once and reused on resume, so a continued run sees the same files."""
    run = ctx.run
    if resume and not run.split.exists():
        raise RunFolderError(f"--resume: {str(run.path)!r} holds no run to continue (no split.csv); "
                             "start it without --resume.")
    if not resume and run.has_run():
        raise RunFolderError(f"{str(run.path)!r} already holds a run: pass --resume to continue it, or "
                             "choose another --out.")
    settings = {"backbone": spec.backbone, "recipe": ctx.recipe.to_dict(), "image_size": spec.image_size,
                "seed": ctx.seed, "weights": spec.weights, "task": spec.task,
                "time_limit": None if ctx.limit is None else ctx.limit.seconds,  # as the user gave it
                "data": str(Path(source).resolve()),  # what a resumed run checks it is given the same data by
                "corrections": _digest(corrections)}
    task = spec.task
    if resume:  # the task the data was found to have when the run started
        task = _check_same_settings(run, settings).get("data_task", task)
    manifest = scan(run.split if resume else source, seed=ctx.seed, task=task)
    if resume:
        _check_same_classes(manifest, source, ctx.seed, task, corrected=corrections is not None)
        if (run.checkpoints / "corrections.json").exists():
            ctx.choices["corrections"] = json.loads((run.checkpoints / "corrections.json").read_text())
    elif corrections is not None:  # after the split: each image keeps the split it had without
        manifest, applied = apply_corrections(manifest, corrections, allow_new_classes=allow_new_classes)
        require_usable(manifest)
        ctx.say(applied.describe())
        ctx.choices["corrections"] = applied.to_dict()
    if ctx.deadline is not None and ctx.deadline <= ctx.clock():
        raise ParameterError("time_limit", f"{{name}} {ctx.limit.seconds:g}s was spent before training could "
                                           f"start ({ctx.clock() - ctx.started:.1f} s of start-up): give a longer "
                                           "limit.")
    if not resume and ctx.ranks.main:
        manifest.write_csv(run.split)
        if "corrections" in ctx.choices:  # the decisions go with the run: a review of it continues from them
            write_bytes_atomic(run.corrections, Path(corrections).read_bytes())
            write_json_atomic(run.checkpoints / "corrections.json", ctx.choices["corrections"])
        write_json_atomic(run.checkpoints / "settings.json", {**settings, "data_task": manifest.task})
    ctx.ranks.barrier()
    return manifest


def choose_backbone_for(ctx: FitContext, manifest: Manifest, image_size: int | None) -> str:
    """--backbone auto: the backbone the rest of the fit uses, measured on the data (backbone_choice.py)."""
    with _timed(ctx, "backbone"):
        name, record = choose_backbone(ctx, manifest, image_size)
    ctx.say(f"Backbone: {name} ({record['why']}).")
    ctx.choices["backbone_choice"] = record
    return name


def choose_augmentation(ctx: FitContext, backbone: Backbone, manifest: Manifest) -> None:
    """--augment auto: the policy fine-tuning will use, measured on the data (train/augment.py), put in
    the recipe for the rest of the fit."""
    if ctx.recipe.finetune.augment != "auto" or ctx.recipe.finetune.epochs == 0:
        return
    with _timed(ctx, "augment"):
        augment, why = choose_augment(ctx, backbone, manifest)
    ctx.say(f"Augmentation: {augment} ({why}).")
    ctx.choices["augment"] = {"chosen": augment, "why": why}
    ctx.recipe = with_overrides(ctx.recipe, augment=augment)


def _digest(path) -> str | None:
    """The SHA-256 of a corrections file: a resumed run must be given the same decisions."""
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(f"Corrections file {str(path)!r} cannot be read: {e.strerror or e}.") from None


def _check_same_classes(manifest: Manifest, source: str, seed: int, task: str | None, *,
                        corrected: bool = False) -> None:
    """--resume with the same DATA: its classes now must be the run's (the split is the run's own; with
    corrections, the run's may add classes after the data's)."""
    try:
        now = find_images(source, seed=seed, task=task).classes
    except DataError as e:
        raise DataError(f"--resume: the data cannot be read as it was when the run started: {e}") from None
    if now != (manifest.classes[:len(now)] if corrected else manifest.classes):
        raise ParameterError("resume", f"{{name}}: {source!r} now has classes {now}, the interrupted run "
                                       f"{manifest.classes}; resume with the data the run started on, or "
                                       "start a new run folder.")


def _check_same_settings(run, settings: dict) -> dict:
    """A resumed run must train as the interrupted one did, or its checkpoints mean something else.
    -> the interrupted run's settings."""
    path = run.checkpoints / "settings.json"
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        raise RunFolderError(f"--resume: {str(path)!r} is missing or unreadable; start a new run.") from None
    now = json.loads(json.dumps(settings))  # tuples become lists, as they were when saved
    # "data" is compared where the interrupted run recorded it (runs from before it did not)
    diff = [k for k in now if before.get(k) != now[k] and (k not in ("data", "task", "corrections") or k in before)]
    if diff:
        raise ParameterError("resume", f"{{name}}: settings differ from the interrupted run ({', '.join(diff)}); "
                                       "resume with the same settings, or start a new run folder.")
    return before
