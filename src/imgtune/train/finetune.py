"""Fine-tuning: the last block groups and the head on images (or on cached trunk views), kept only where
it beats the head on validation.

Guarded twice: when the training loss after warm-up (the second epoch) stays above the loss the head
started from on the augmented training batches, the stage restarts once from the head at a tenth of the
learning rate (a stage that continues from a fine-tuned model trains at that rate from the start, and
is not watched); and the fine-tuned weights are kept only where they beat the head on validation by more
than the bootstrap noise of the validation split."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json_atomic
from ..config import FineTuneConfig
from ..devices import data_parallel
from ..model.backbones import unfrozen_names
from ..model.heads import Classifier
from ..model.linear import class_weights
from ..model.trunk import Tail
from ..runs.folder import load_tensors_and_meta, save_tensors
from ..runs.trained import load_run
from . import budget
from .batches import Images, stage_batches
from .context import FitContext
from .head import Head
from .hooks import BatchCheckpoints, EveryEpoch, StopAt
from .keep import keep_or_not
from .loop import Hook, Objective, Stage, StageState, run_stage, start_loss
from .optim import load_optimizer_tensors, make_optimizer, make_scheduler, optimizer_tensors
from .rate import Probe, RateChoice, choose_rate

# Fine-tuning's second epoch (after its warm-up) still trained this much above the loss the head started
# from: not the dip of the first epoch, from which training recovers (Fashion-MNIST, lr 1e-4: 0.258 ->
# 0.296 -> 0.239), but a model pushed off its solution (clip art, body lr 1e-3: 0.80 -> 1.23).
DIVERGED = 1.05
# A stage that continues from a fine-tuned model (a retrain's) trains at this share of the recipe's rate:
# its blocks are adapted to these images already, and the recipe's rate, warmed up again, pushes them off
# (the digits' reviewed run: validation 0.925 -> 0.896 after the first epoch at 1e-3). At 1e-4 one epoch
# recovered 80 % of the accuracy the label noise cost (0.9578 -> 0.9756; 1e-3: 0 %), two epochs all of
# it (0.9822; 1e-3: 0.9778) (BENCHMARKS.md, "A retrain continues at a tenth of the rate"). It is the rate
# the divergence guard restarts at, so such a stage is not watched (nor its start loss measured).
CONTINUED_RATE = 0.1


class Diverged(Exception):
    """Fine-tuning's first epochs trained above the loss the head started from."""

    def __init__(self, loss: float):
        super().__init__(loss)
        self.loss = loss


@dataclass
class _Training:
    """One fine-tuning stage's moving parts."""

    ctx: FitContext
    cfg: FineTuneConfig
    model: Classifier  # whose weights are checkpointed and kept
    trained: torch.nn.Module  # what the epochs run: the classifier on images, or its tail on cached views
    body: list[torch.nn.Parameter]
    batches: tuple  # (train_batches(epoch), val_batches(), batches per epoch)
    head: Head
    log_epoch: object
    stop_at: float | None
    fresh_plan: bool
    images: Images
    origin: dict  # the weights the stage starts (and restarts) from
    continued: bool  # from a fine-tuned model (FineTuneConfig.start_from), not from the head

    @property
    def origin_name(self) -> str:
        return "the run's model" if self.continued else "the head"

    @property
    def ckpt(self) -> Path:
        return self.ctx.run.checkpoints / "finetune.safetensors"


def fine_tune(ctx: FitContext, model: Classifier, images: Images, head: Head, log_epoch,
              extract_rate: float | None) -> tuple[list[dict], dict]:
    """Fine-tune the last block groups and the head -> (history, what was kept and why): unfreeze them,
    fit the epochs in the time limit (if any), run the stage (guarded against divergence), and keep the
    result only where it beats the head on validation."""
    cfg = ctx.recipe.finetune
    body = _unfreeze(model, cfg.unfreeze, images.backbone_name)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the head on the pretrained body
    continued = cfg.start_from is not None and _continue_from(ctx, model, cfg.start_from, images.manifest.classes)
    origin = {k: v.detach().clone() for k, v in model.state_dict().items()} if continued else start
    bs, per_rank = _batch_size(ctx, cfg, len(images.manifest.split("train")))
    stop_at, fresh = None, False
    if ctx.deadline is not None:
        cfg, stop_at, fresh = _plan(ctx, cfg, model, images, bs, extract_rate)
        if cfg.epochs == 0:
            ctx.say("Fine-tune: skipped, no time left for an epoch within the time limit.")
            return [], {"kept": False, "reason": "no time left for an epoch within the time limit"}
    trained, batches = stage_batches(ctx, cfg, model, images, bs, (per_rank + bs - 1) // bs)
    t = _Training(ctx, cfg, model, trained, body, batches, head, log_epoch, stop_at, fresh, images, origin, continued)
    state, guard = _guarded(t)
    for p in model.parameters():
        p.requires_grad = False
    outcome = keep_or_not(ctx, model, trained, start, state, batches[1], head.objective, continued=continued)
    if continued:
        outcome["started_from"] = cfg.start_from
    if guard["lr_scale"] != 1.0:
        outcome["restarted"] = {"loss_after_warmup": guard.get("diverged_loss"),
                                "start_loss": guard["start_loss"], "lr_scale": guard["lr_scale"]}
    outcome["lr"] = _rate(t, guard) * guard["lr_scale"]
    if "rate" in guard:
        outcome["rate_search"] = guard["rate"]
    return state.history, outcome


def _unfreeze(model: Classifier, groups: int, backbone_name: str) -> list[torch.nn.Parameter]:
    """Only the last `groups` block groups of the body and the head train -> the body's trained parameters."""
    unfrozen = unfrozen_names(model.backbone, groups, backbone_name)
    for n, p in model.backbone.named_parameters():
        p.requires_grad = n in unfrozen
    for p in model.head.parameters():
        p.requires_grad = True
    return [p for n, p in model.backbone.named_parameters() if n in unfrozen]


def _continue_from(ctx: FitContext, model: Classifier, run: str, classes: list[str]) -> bool:
    """The fine-tuned blocks and head of the run folder `run` (loaded, and checked, as any run is) put in
    `model` -> True; False, said, where that run has other classes or another network (the stage then
    starts from the head)."""
    source = load_run(run, device="cpu")
    theirs = {k: v for k, v in source.model.state_dict().items() if k != "offsets"}
    ours = model.state_dict()
    why = "its classes are not these" if source.classes != list(classes) else \
        "its network is not this one" if set(theirs) != set(ours) - {"offsets"} or \
        any(v.shape != ours[k].shape for k, v in theirs.items()) else None
    if why:
        ctx.say(f"Fine-tune: starting from the head, not from {run}'s model: {why}.")
        return False
    model.load_state_dict(theirs, strict=False)
    ctx.say(f"Fine-tune: continuing from {run}'s fine-tuned model (its blocks and head) at a tenth of the "
            "recipe's learning rate, judged against the head again.")
    return True


def _batch_size(ctx: FitContext, cfg: FineTuneConfig, n_train: int) -> tuple[int, int]:
    """(images per batch in this process, training images per process): the global batch stays what the
    recipe says, whatever the number of processes."""
    ranks = ctx.ranks
    bs = max(1, cfg.batch_size // ranks.world)
    per_rank = -(-n_train // ranks.world)  # DistributedSampler pads the last share
    if ranks.active and per_rank * ranks.world > n_train:
        ctx.say(f"Fine-tune: {ranks.world} processes, {bs} images per process per batch; each epoch "
                f"repeats {per_rank * ranks.world - n_train} image(s) per epoch to share them evenly.")
    return bs, per_rank


def _guarded(t: _Training) -> tuple[StageState, dict]:
    """The stage, restarted once from its origin at a tenth of the learning rate when it diverges ->
    (its final state, the guard: the loss the head started from and the rate scale used). Only a stage
    at the full rate is watched, so the restart runs to its end; a continued stage trains at the
    restart's rate from the start (CONTINUED_RATE), and its start loss is not measured."""
    saved = load_tensors_and_meta(t.ckpt) if t.ckpt.exists() else None
    guard = saved[1].get("guard") if saved else None
    if guard is None:  # the loss the head starts from, on the first augmented batches of epoch 1
        loss = None if t.continued else start_loss(t.trained, t.batches[0](0), t.ctx.device, t.head.objective, t.cfg)
        guard = {"start_loss": loss, "lr_scale": 1.0, **_found_rate(t)}
    elif "rate" in guard:
        t.ctx.say(RateChoice.from_dict(guard["rate"]).describe())
    _announce(t, guard)
    try:
        return _attempt(t, guard, saved), guard
    except Diverged as e:
        if t.ctx.ranks.main:
            t.ckpt.unlink(missing_ok=True)  # a resume from here starts over, and diverges the same way
        t.ctx.say(f"Fine-tune: after warm-up the training loss is still {e.loss:.4f}, above {t.origin_name}'s "
                  f"{guard['start_loss']:.4f}: restarting from {t.origin_name} at a tenth of the learning rate.")
        t.model.load_state_dict(t.origin)
        guard = {**guard, "lr_scale": 0.1, "diverged_loss": e.loss}
        return _attempt(t, guard, None), guard


def _announce(t: _Training, guard: dict) -> None:
    cfg = t.cfg
    n_body = sum(p.numel() for p in t.body)
    how = (f"{cfg.augment} augmentation, {cfg.cached_views} cached view(s) per image and the plain one"
           if t.trained is not t.model else f"{cfg.augment} augmentation")
    start = ("; trained at the rate the divergence guard restarts at, so not watched" if guard["start_loss"] is None
             else f"; the head's loss on the first augmented training batches is {guard['start_loss']:.4f} (the "
                  "report's head point is its loss on the plain features it was fitted on)")
    t.ctx.say(f"Fine-tune: training the last {cfg.unfreeze} block group(s) ({n_body:,} parameters) and the "
              f"head on {len(t.images.manifest.split('train')):,} images, {how}{_balance_words(t.cfg)}, up to "
              f"{cfg.epochs} epochs{start}.")


def _attempt(t: _Training, guard: dict, saved) -> StageState:
    """One run of the stage at the guard's rate scale, continued from `saved` (a checkpoint) if given."""
    cfg, ctx, scale = t.cfg, t.ctx, guard["lr_scale"]
    train_batches, val_batches, n_batches = t.batches
    optimizer = _optimizer(t, _rate(t, guard) * scale)
    scheduler = make_scheduler(cfg.schedule, optimizer, cfg.epochs * n_batches, warmup=cfg.warmup)
    state = None
    if saved is not None:
        tensors, meta = saved
        t.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer_tensors(optimizer, tensors, meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        state = StageState.from_meta(meta["state"], {k[5:]: v for k, v in tensors.items()
                                                     if k.startswith("best.")}, tensors.get("rng"))
        where = f"batch {state.batch} of epoch {state.epoch + 1}" if state.batch else f"epoch {state.epoch}"
        ctx.say(f"Fine-tune: continuing after {where} of the interrupted run.")
    stage = Stage("fine-tune", train_batches, n_batches, val_batches, optimizer, scheduler, cfg.epochs,
                  _objective(t), seed=ctx.seed, patience=cfg.patience, label_smoothing=cfg.label_smoothing,
                  bn_train=cfg.bn_train, baseline=True, clip_grad=cfg.clip_grad, clock=ctx.clock)
    return run_stage(stage, t.trained, device=ctx.device, reporter=ctx.reporter, state=state,
                     hooks=_hooks(t, stage, guard), trainer=data_parallel(t.trained, ctx.ranks, ctx.device),
                     total=ctx.ranks.total)


def _balance_words(cfg: FineTuneConfig) -> str:
    return {"head": "", "sqrt": ", classes weighted by the inverse square root of their counts",
            "balanced": ", classes weighted by the inverse of their counts"}[cfg.balance]


def _objective(t: _Training) -> Objective:
    """The head's objective, its loss weighted by the recipe's balance of the training split's counts
    where the recipe asks for one."""
    objective = t.head.objective
    if t.cfg.balance == "head" or objective.multi_loss:
        return objective
    m = t.images.manifest
    return objective.weighted(class_weights(np.asarray(m.targets(m.split("train")), int), len(m.classes),
                                            t.cfg.balance))


def _optimizer(t: _Training, lr: float):
    """A fresh optimizer over exactly the parameters this stage trains: the blocks at `lr`, the head at
    the recipe's ratio to it."""
    cfg = t.cfg
    return make_optimizer(cfg.optimizer, [{"params": t.body, "lr": lr},
                                          {"params": list(t.model.head.parameters()), "lr": lr * cfg.head_lr / cfg.lr}],
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _rate(t: _Training, guard: dict) -> float:
    """The blocks' learning rate: the one found for this data set, else the recipe's (a tenth of it for a
    stage that continues from a fine-tuned model)."""
    if "rate" in guard:
        return guard["rate"]["rate"]
    return t.cfg.lr * (CONTINUED_RATE if t.continued else 1.0)


def _found_rate(t: _Training) -> dict:
    """{"rate": the RateChoice as a dict} where the recipe has candidate rates (and, under a time limit,
    the plan has room for the probe's extra epoch or so, and the stage starts from the head); else nothing,
    and the recipe's rate is used."""
    cfg = t.cfg
    if not cfg.lr_candidates or t.continued or (t.stop_at is not None and cfg.epochs < 3):
        return {}
    if t.ctx.ranks.active:  # each rank would probe on its own share of the batches and might choose another
        t.ctx.say(f"Fine-tune rate: {cfg.lr:g}, the recipe's (the rate search runs in one process only).")
        return {}
    train_batches, val_batches, n_batches = t.batches
    probe = Probe(t.trained, t.model, t.origin, lambda lr: _optimizer(t, lr), t.head.objective, cfg.bn_train,
                  t.ctx.device)
    choice = choose_rate(probe, train_batches(0), val_batches, tuple(cfg.lr_candidates), n_batches)
    t.ctx.say(choice.describe())
    return {"rate": choice.to_dict()}


def _hooks(t: _Training, stage: Stage, guard: dict) -> list:
    """After every epoch: the checkpoint (and every --checkpoint-every seconds inside one), the divergence
    guard, then the epochs handed to TensorBoard/MLflow once judged; the time limit's stop and re-plan."""
    ctx = t.ctx
    checkpoint = _Checkpoint(t, stage, guard)
    judge = _DivergenceGuard(guard, min(2, t.cfg.epochs))
    hooks = [EveryEpoch(checkpoint), judge, _LogJudged(t, judge)] if ctx.ranks.main else [judge]
    if not ctx.ranks.active and ctx.checkpoint_every is not None:
        hooks.append(BatchCheckpoints(checkpoint.save, ctx.checkpoint_every))
    if t.stop_at is not None:
        hooks.append(StopAt(t.stop_at, ctx.reporter))
        if t.fresh_plan:
            hooks.append(budget.Replan(ctx.run.checkpoints / "plan.json", t.stop_at, stage.n_batches,
                                       stage.scheduler, ctx.reporter, ctx.clock))
    return hooks


class _Checkpoint:
    """The stage's checkpoint (model, best epoch, optimizer, schedule, guard) and history, written by the
    main process."""

    def __init__(self, t: _Training, stage: Stage, guard: dict):
        self.t, self.stage, self.guard = t, stage, guard

    def save(self, st: StageState) -> None:
        opt_tensors, opt_meta = optimizer_tensors(self.stage.optimizer)
        tensors = {**{f"model.{k}": v for k, v in self.t.model.state_dict().items()},
                   **{f"best.{k}": v for k, v in st.best_weights.items()}, **opt_tensors,
                   **({"rng": st.rng} if st.batch and st.rng is not None else {})}
        save_tensors(self.t.ckpt, tensors, {"state": st.meta(), "optimizer": opt_meta,
                                            "scheduler": self.stage.scheduler.state_dict(), "guard": self.guard})

    def __call__(self, st: StageState) -> None:
        self.save(st)
        self.t.ctx.run.write_history(self.t.head.history + st.history)


class _DivergenceGuard(Hook):
    """Raises Diverged when the training loss of epoch `judged_at` (after warm-up: the second epoch, the
    first of a one-epoch stage) is not below DIVERGED times the loss the head started from; watches the
    stage at the full rate only (not a continued one: no start loss)."""

    def __init__(self, guard: dict, judged_at: int):
        self.start_loss, self.judged_at = guard["start_loss"], judged_at
        self.watched = guard["lr_scale"] == 1.0 and self.start_loss is not None

    def after_epoch(self, state: StageState) -> None:
        last = state.history[-1]
        if self.watched and last["epoch"] == self.judged_at and \
                not last["loss"] <= DIVERGED * self.start_loss:  # a NaN loss has diverged too
            raise Diverged(last["loss"])  # its epochs were never logged: the restart logs its own once

    def judged(self, epoch: int) -> bool:
        return not (self.watched and epoch < self.judged_at)


class _LogJudged(Hook):
    """Each epoch's record handed to TensorBoard/MLflow once the divergence guard has judged it."""

    def __init__(self, t: _Training, judge: _DivergenceGuard):
        self.t, self.judge, self.unjudged = t, judge, []

    def after_epoch(self, state: StageState) -> None:
        self.unjudged.append((state.history[-1], len(self.t.head.history) + state.epoch))
        if self.judge.judged(state.history[-1]["epoch"]):
            for record, step in self.unjudged:
                self.t.log_epoch(record, step)
            self.unjudged.clear()


def _plan(ctx: FitContext, cfg: FineTuneConfig, model: Classifier, images: Images, bs: int,
          extract_rate: float | None) -> tuple[FineTuneConfig, float, bool]:
    """--time-limit: (the fine-tune settings with the epochs that fit, the time to stop starting epochs,
    whether the plan is new). Kept in checkpoints/plan.json, so a resumed run trains the epochs it
    planned."""
    m, views, limit = images.manifest, images.views, ctx.limit
    train, val = m.split("train"), m.split("val")
    stored = ctx.run.checkpoints / "plan.json"
    fresh = not stored.exists()
    if not fresh:
        plan = budget.Plan(**json.loads(stored.read_text()))
    else:
        size = images.data_config.image_size
        if views is not None:
            probe, example = Classifier(Tail(model.backbone, views.stage), model.head), (bs, *views.shape)
            todo = len(views.missing([images.digest_of[it.path] for it in train], range(cfg.cached_views + 1)))
            todo += len(views.missing([images.digest_of[it.path] for it in val], range(1)))
            fast = views.runner()
        else:
            probe, example, todo, fast = model, (bs, 3, size, size), 0, model
        device = next(model.parameters()).device
        if limit.rates is not None:  # given (tests): nothing is measured
            rate, step = limit.rates.forward, limit.rates.step
        else:
            rate = extract_rate or budget.forward_rate(fast, torch.zeros(32, 3, size, size, device=device))
            step = budget.step_rate(probe, torch.zeros(example, device=device), bn_train=cfg.bn_train)
        plan = budget.plan_epochs(ctx.deadline - limit.clock(), n_train=len(train), n_val=len(val),
                                  n_eval=len(val) + len(m.split("test")), views_to_compute=todo,
                                  forward_rate=rate, step_rate=step)
        write_json_atomic(stored, dataclasses.asdict(plan))
    ctx.say(plan.describe())
    return dataclasses.replace(cfg, epochs=plan.epochs), ctx.deadline - plan.evaluate_seconds, fresh
