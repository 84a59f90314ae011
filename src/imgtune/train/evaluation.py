"""The last steps of a fit: the decisions fitted on validation (offsets, temperature; per-label
thresholds), the metrics of the decided model on the held-out split beside the baselines, and the
diagnosis from the cached features."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics as metrics_lib
from ..atomic import write_json_atomic
from ..cache.trunk_views import TrunkViews
from ..diagnose.diagnosis import diagnose
from ..diagnose.label_errors import write_label_issues
from ..infer.calibration import softmax
from ..infer.predictor import logits_for, metrics_of
from ..model.heads import Classifier
from ..model.linear import Candidate
from ..model.trunk import Tail
from ..report.console import baseline_lines
from ..runs.trained import TrainedModel
from . import multilabel
from .baselines import run_baselines, run_multilabel_baselines
from .context import FitContext
from .decide import decision_for_kept, decision_line, fit_label_decision, label_decision_line
from .extraction import Features


@dataclass
class Evaluation:
    """The decisions fitted on validation and the metrics of the decided model on the held-out split."""

    temperature: float | list[float]
    thresholds: list[float] | None  # multi-label
    decision: object  # decide.Decision or decide.LabelDecision
    calibration: dict
    metrics: dict


def decide_and_evaluate(ctx: FitContext, network: TrainedModel, feats: Features, views: TrunkViews | None,
                        choice, tuned: bool) -> Evaluation:
    """The decisions on validation (decision offsets for the metric, put in the network, and a
    temperature; multi-label: a temperature and a threshold per label), then the metrics on test (val
    when there is no test split) with the baselines."""
    m = feats.manifest
    split_logits = _split_logits(ctx, network, feats, views, tuned)
    val_logits, val_y, val_paths = split_logits("val")
    decide = _decide_labels if m.multi else _decide_classes
    calibration, decision, val_logits, temperature, thresholds = decide(ctx, network, choice, tuned, val_logits, val_y)
    decided = dataclasses.replace(network, temperature=temperature, thresholds=thresholds)
    split = "test" if m.split("test") else "val"
    logits, y, kept = (val_logits, val_y, val_paths) if split == "val" else split_logits(split)
    metrics = {**metrics_of(decided, logits, y, kept), "split": split}
    keep = set(kept)
    rows = [i for i, it in enumerate(m.split(split)) if it.path in keep]
    if m.multi:
        metrics["baselines"] = run_multilabel_baselines(choice, feats.splits, split, rows, ctx.seed)
    else:
        metrics["baselines"] = run_baselines(choice, feats.splits, split, rows, network.classes, ctx.seed)
    for line in baseline_lines(metrics):
        ctx.say(line)
    return Evaluation(temperature, thresholds, decision, calibration, metrics)


def write_diagnosis(ctx: FitContext, feats: Features, choice, eval_split: str) -> None:
    """RUN/diagnosis.json and RUN/label_issues.csv, from the cached features (seconds)."""
    m = feats.manifest
    candidate = choice.selection.candidate if choice is not None else Candidate(1.0)
    paths = {s: [it.path for it in m.split(s)] for s in ("train", "val", "test")}
    oof = None  # the head selection's out-of-fold predictions of its winner, where it judged every image
    if choice is not None and len(choice.oof_labels) == len(paths["train"]) + len(paths["val"]):
        oof = softmax(choice.selection.oof_logits)
    doc = diagnose(feats.splits, paths, m.classes, candidate, eval_split, ctx.seed, oof=oof)
    write_json_atomic(ctx.run.diagnosis, doc)
    write_label_issues(doc["label_issues"]["rows"], ctx.run.label_issues)
    issues = doc["label_issues"]
    ctx.say(f"Label check: {len(issues['rows']):,} of {issues['judged']:,} training and validation images look "
            f"mislabelled ({issues['method']}, out of fold), listed in {ctx.run.label_issues}.")


def _split_logits(ctx: FitContext, network: TrainedModel, feats: Features, views: TrunkViews | None, tuned: bool):
    """split name -> (logits, targets, paths) of the kept model on that split's images."""
    model, m = network.model, feats.manifest
    evaluator = model  # the frozen trunk is unchanged by fine-tuning: its fast copy serves evaluation
    if views is not None and tuned:
        evaluator = Classifier(torch.nn.Sequential(views.runner(), Tail(model.backbone, views.stage)),
                               model.head, model.offsets).eval()

    def split_logits(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        items = m.split(name)
        if tuned:
            return logits_for(network, items, ctx.reporter, network=evaluator)[:3]
        x, y = feats.splits[name]  # the backbone is unchanged: its cached features are exact
        with torch.inference_mode():
            z = model.head.eval()(torch.from_numpy(x).to(ctx.device)) + model.offsets
        return z.cpu().numpy(), y, [it.path for it in items]
    return split_logits


def _decide_classes(ctx: FitContext, network: TrainedModel, choice, tuned: bool, val_logits, val_y):
    """Decision offsets (in the model) and the temperature -> (calibration figures, the decision, the
    validation logits with the offsets, the temperature, no thresholds)."""
    decision = decision_for_kept(ctx.recipe, choice, tuned, val_logits, val_y)
    model = network.model
    with torch.no_grad():
        model.offsets.copy_(torch.as_tensor(decision.offsets, dtype=model.offsets.dtype))
    val_logits = decision.adjusted(val_logits)
    t = decision.temperature
    # figures that claim to be held out come from images the model did not fit: the kept head was
    # refitted on train+val, so its validation logits are in-sample, and its out-of-fold ones are used
    held_z, held_y, held = val_logits, val_y, f"the validation split ({len(val_y):,} images)"
    if choice is not None and not tuned:
        held_z, held_y = decision.adjusted(choice.selection.oof_logits), choice.oof_labels
        held = f"out-of-fold predictions of {len(held_y):,} train+val images"
    calibration = {"temperature": t, "fitted_on": decision.fitted_on, "held_out": held,
                   "val_ece_before": metrics_lib.expected_calibration_error(held_y, softmax(held_z)),
                   "val_ece_after": metrics_lib.expected_calibration_error(held_y, softmax(held_z, t)),
                   "val_rejection": metrics_lib.rejection_table(held_y, softmax(held_z, t))}
    ctx.say(decision_line(decision, network.classes))
    return calibration, decision, val_logits, t, None


def _decide_labels(ctx: FitContext, network: TrainedModel, choice, tuned: bool, val_logits, val_y):
    """A temperature and a threshold per label: the head's, fitted out of fold, when the head is kept;
    else fitted on validation (thresholds of labels with few positives there from the head) -> (calibration
    figures, the decision, the validation logits, the temperatures, the thresholds)."""
    on_val = f"validation ({len(val_y):,} images)"
    if choice is not None and not tuned:
        decision = choice.decision
    else:
        decision = fit_label_decision(val_logits, val_y, on_val, fallback=choice.decision if choice else None)
    bce = [multilabel.val_scores(z, val_y)["val_loss"]
           for z in (val_logits, val_logits / np.asarray(decision.temperature))]
    temperature, thresholds = list(decision.temperature), list(decision.thresholds)
    calibration = {"temperature": temperature, "fitted_on": decision.fitted_on,
                   "val_bce_before": bce[0], "val_bce_after": bce[1]}
    ctx.say(label_decision_line(decision, network.classes))
    return calibration, decision, val_logits, temperature, thresholds
