"""The head on the cached features: the default recipe's cross-validated logistic selection, or the seed
recipe's head trained by epochs. Both are checkpointed, so a resumed run does not fit them again."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..devices import data_parallel, generator
from ..model.heads import make_head
from ..model.linear import Search, load_into
from ..model.linear import logits as selection_logits
from ..progress import Reporter
from ..runs.folder import load_tensors_and_meta, save_tensors
from . import multilabel
from .batches import share_batches
from .context import FitContext
from .decide import decide
from .hooks import EveryEpoch, StopAt
from .loop import Objective, Stage, epoch_seed, run_stage, validate
from .optim import make_optimizer, make_scheduler
from .selection import HeadChoice, Split, select_head

@dataclass
class Head:
    """The fitted head and what fine-tuning needs from it: the module, the selection (logistic heads),
    the objective fine-tuning trains and judges by, and the head's history."""

    module: torch.nn.Sequential
    choice: HeadChoice | None
    objective: Objective
    history: list[dict]


def fit_head(ctx: FitContext, feats: dict[str, Split], n_features: int, n_classes: int, log_epoch,
             multi: bool = False) -> Head:
    """The head on the cached features; `multi`: multi-label targets (0/1 rows), sigmoid outputs."""
    recipe = ctx.recipe
    if multi:
        objective = Objective("map", multi_loss=recipe.multi_loss)
        if recipe.head.kind == "logistic":
            choice, history = _logistic(ctx, feats, n_classes, log_epoch, objective)
            module = make_head(recipe.head, n_features, n_classes)
            load_into(module[-1], choice.train_head)
            return Head(module, choice, objective, history)
    elif recipe.head.kind == "logistic":
        choice, history = _logistic(ctx, feats, n_classes, log_epoch)
        module = make_head(recipe.head, n_features, n_classes)
        load_into(module[-1], choice.train_head)
        objective = Objective(recipe.metric, choice.class_weights,
                              choice.decision.offsets_log_prob if recipe.offsets else None)
        return Head(module, choice, objective, history)
    deadline = ctx.deadline
    stop_at = None if deadline is None else ctx.clock() + 0.1 * (deadline - ctx.clock())  # a tenth at most
    if not multi:
        objective = Objective(recipe.metric, None, None)
    module, history = _by_epochs(ctx, feats, n_features, n_classes, objective, log_epoch, stop_at)
    return Head(module, None, objective, history)


def _restored(ctx: FitContext):
    ckpt = ctx.run.checkpoints / "head.safetensors"
    if not ckpt.exists():
        return None
    ctx.say("Head: restored from the interrupted run's checkpoint.")
    return load_tensors_and_meta(ckpt)


def _logistic(ctx: FitContext, feats: dict[str, Split], n_classes: int, log_epoch,
              multi: Objective | None = None) -> tuple[HeadChoice, list[dict]]:
    """The head as a model selection on the cached features (selection.py; multilabel.py with the
    `multi` objective), with the decisions its out-of-fold predictions fit."""
    restored = _restored(ctx)
    if restored is not None:  # finished in an earlier, interrupted run
        tensors, meta = restored
        return HeadChoice.from_saved(tensors, meta), meta["history"]
    recipe = ctx.recipe
    (x, y), (xv, yv) = feats["train"], feats["val"]
    started = time.perf_counter()
    ctx.say(f"Head: choosing its L2 strength{'' if multi is not None else ' and class weighting'} by "
            f"{recipe.head.folds}-fold cross-validation on {len(y) + len(yv):,} train+val images ...")
    if multi is not None:
        steps = multilabel.selection_steps(y.shape[1], recipe.head.folds)
        with ctx.reporter.bar("Head selection (folds)", steps) as advance:
            choice = multilabel.select_label_head(x, y, xv, yv, loss=recipe.multi_loss, folds=recipe.head.folds,
                                                  seed=ctx.seed, advance=advance)
        scores = dict(decider=None, scorer=multi.scorer())
    else:
        with ctx.reporter.bar("Head selection (folds)", recipe.head.folds) as advance:
            given = recipe.head.candidates  # a retrain's: the reviewed run's winner
            search = Search(recipe.metric, recipe.head.folds, ctx.seed, pairs=given)
            choice = select_head((x, y), (xv, yv), n_classes, search, advance)
        choice.decision = decide(choice.selection.oof_logits, choice.oof_labels, recipe.metric,
                                 fitted_on=f"out-of-fold predictions of {len(choice.oof_labels):,} train+val "
                                           "images", offsets=recipe.offsets)
        scores = dict(decider=Objective(recipe.metric, None, choice.decision.offsets_log_prob).decider())
    ctx.say(choice.describe())
    val = torch.from_numpy(selection_logits(xv, choice.train_head))
    record = {"stage": "head", "epoch": 1, "loss": choice.train_loss, "images": len(y),
              **validate(torch.nn.Identity(), [(val, torch.from_numpy(yv))], torch.device("cpu"), **scores),
              "lr": 0.0, "seconds": round(time.perf_counter() - started, 3)}
    history = [record]
    log_epoch(record, 1)
    if ctx.ranks.main:
        tensors, meta = choice.to_saved()
        save_tensors(ctx.run.checkpoints / "head.safetensors", tensors, {**meta, "history": history})
        ctx.run.write_history(history)
    return choice, history


def _by_epochs(ctx: FitContext, feats: dict[str, Split], n_features: int, n_classes: int, objective: Objective,
               log_epoch, stop_at: float | None) -> tuple[torch.nn.Module, list[dict]]:
    """A head trained by epochs on the train split (the seed recipe's), best epoch on validation."""
    cfg, ranks, device = ctx.recipe.head, ctx.ranks, ctx.device
    # the same head whether or not extraction drew random numbers (inside the fit's seeded scope)
    torch.manual_seed(ctx.seed)
    head = make_head(cfg, n_features, n_classes).to(device)
    restored = _restored(ctx)
    if restored is not None:  # finished in an earlier, interrupted run
        head.load_state_dict(restored[0])
        return head, restored[1]["history"]
    x, y = (torch.from_numpy(v) for v in feats["train"])
    xv, yv = (torch.from_numpy(v) for v in feats["val"])
    # each rank trains on its share of every batch, the batch size rounded to a multiple of the ranks
    bs = max(ranks.world, cfg.batch_size - cfg.batch_size % ranks.world) if ranks.active else cfg.batch_size
    n_batches = (len(y) + bs - 1) // bs

    def train_batches(epoch: int):
        order = torch.randperm(len(y), generator=generator(epoch_seed(ctx.seed, epoch)))
        for idx in share_batches(order, bs, ranks):
            yield x[idx], y[idx]

    optimizer = make_optimizer(cfg.optimizer, [{"params": list(head.parameters()), "lr": cfg.lr}],
                               momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    stage = Stage("head", train_batches, n_batches, lambda: [(xv[i:i + 4096], yv[i:i + 4096])
                                                            for i in range(0, len(yv), 4096)],
                  optimizer, make_scheduler(cfg.schedule, optimizer, cfg.epochs * n_batches), cfg.epochs,
                  objective, seed=ctx.seed, patience=cfg.patience, label_smoothing=cfg.label_smoothing,
                  clock=ctx.clock)
    hooks = [EveryEpoch(lambda st: log_epoch(st.history[-1], st.epoch))] + \
        ([StopAt(stop_at, Reporter(quiet=True))] if stop_at is not None else [])
    # head epochs take milliseconds: one summary line instead of one per epoch
    state = run_stage(stage, head, device=device, reporter=Reporter(quiet=True), hooks=hooks,
                      trainer=data_parallel(head, ranks, device), total=ranks.total)
    if state.history:
        best = state.history[state.best_epoch - 1]
        ctx.say(f"Head: {len(state.history)} epochs, best val {objective.name} {best[objective.select]:.4f} "
                f"(epoch {state.best_epoch}).")
    if ranks.main:
        save_tensors(ctx.run.checkpoints / "head.safetensors", head.state_dict(), {"history": state.history})
        ctx.run.write_history(state.history)
    return head, state.history
