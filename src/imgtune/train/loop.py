"""The training loop shared by the head stage (on cached features) and the fine-tune stage (on images).

Plain PyTorch: a fresh optimizer per stage built from the parameters that stage trains, one scheduler
step per batch, validation after every epoch, the best epoch's weights kept and restored at the end.
Optional behaviour (checkpoints, the time limit, logging) comes in as hooks. Every epoch starts from a
generator seeded with (seed, epoch), so a run resumed at an epoch boundary
sees the same shuffles and augmentations as one that never stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..devices import Precision, to_device
from ..metrics import confusion_matrix, macro_scores, per_class
from ..progress import Reporter


class Objective:
    """What a stage trains and judges by: the metric (checkpoints are chosen on its validation value), the
    loss's class weights (None: plain), and the decision offsets in calibrated units (decide.py) that
    turn logits into the decisions the metric judges (None: argmax). With `multi_loss` (bce or asl) the
    outputs are multi-label: that loss trains, mAP judges (multilabel.py)."""

    def __init__(self, metric: str, class_weights=None, offsets_log_prob=None, multi_loss: str | None = None):
        self.metric = "map" if multi_loss else metric
        self.multi_loss = multi_loss
        self.class_weights = None if class_weights is None else tuple(float(w) for w in class_weights)
        self.offsets_log_prob = None if offsets_log_prob is None or not np.any(offsets_log_prob) \
            else np.asarray(offsets_log_prob, float)

    select = property(lambda self: f"val_{self.metric}")
    name = property(lambda self: "mAP" if self.multi_loss else self.metric.replace("_", " "))

    def criterion(self, device, label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(logits, targets) -> the mean training loss: the multi-label loss, or the cross-entropy with the
        class weights and `label_smoothing`."""
        if self.multi_loss:
            from .multilabel import criterion

            return criterion(self.multi_loss)
        weights = self.tensor(device)
        return lambda z, y: F.cross_entropy(z, y, weight=weights, label_smoothing=label_smoothing)

    def weighted(self, class_weights) -> "Objective":
        """The same objective with other class weights on the loss."""
        return Objective(self.metric, class_weights, self.offsets_log_prob, self.multi_loss)

    def scorer(self):
        """(logits, targets) -> the validation record's scores; None: validate's single-label ones."""
        if not self.multi_loss:
            return None
        from .multilabel import val_scores

        return val_scores

    def tensor(self, device) -> torch.Tensor | None:
        return None if self.class_weights is None else torch.tensor(self.class_weights, dtype=torch.float32,
                                                                        device=device)

    def decider(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """logits, labels -> decisions: argmax, or argmax(logits / T + offsets) with T fitted on these
        logits (a new model's logits have their own scale)."""
        if self.offsets_log_prob is None:
            return None
        from .decide import decisions_with

        return lambda z, y: decisions_with(z, y, self.offsets_log_prob)


def set_train_mode(model: nn.Module, *, bn_train: bool = True) -> None:
    """Train mode, except that BatchNorm layers whose parameters are frozen stay in eval mode: their
    running statistics are the pretrained ones and must not drift towards the new data's batches.
    With `bn_train=False` every BatchNorm keeps its running statistics (its affine weights still learn)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not bn_train or not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


@dataclass
class StageState:
    """Where a stage stands: enough, with the model and optimizer, to continue it exactly."""

    epoch: int = 0  # next epoch to run (or the one under way, when batch > 0)
    best_score: tuple[float, float] | None = None  # (the selected val score, -val loss)
    best_epoch: int = -1
    bad_epochs: int = 0
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    # inside an epoch: batches done, their summed loss and images, and the CPU random state after them
    batch: int = 0
    loss_total: float = 0.0
    seen: int = 0
    rng: torch.Tensor | None = None

    def meta(self) -> dict:
        return {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": self.history, "batch": self.batch,
                "loss_total": self.loss_total, "seen": self.seen}

    @classmethod
    def from_meta(cls, meta: dict, best_weights: dict, rng: torch.Tensor | None = None) -> "StageState":
        score = tuple(meta["best_score"]) if meta.get("best_score") is not None else None
        return cls(meta["epoch"], score, meta["best_epoch"], meta["bad_epochs"], best_weights, meta["history"],
                   meta.get("batch", 0), meta.get("loss_total", 0.0), meta.get("seen", 0),
                   rng if meta.get("batch", 0) else None)


@torch.inference_mode()
def collect_logits(model: nn.Module, batches: Iterable, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the model in eval mode over the batches."""
    model.eval()
    zs, ys = [], []
    for x, y in batches:
        zs.append(model(to_device(x, device)).float().cpu())
        ys.append(y)
    if not zs:
        return np.zeros((0, 0), np.float32), np.zeros(0, int)
    y = torch.cat(ys).numpy()
    return torch.cat(zs).numpy(), (y.astype(np.float32) if y.ndim == 2 else y.astype(int))


@torch.no_grad()
def start_loss(model: nn.Module, batches: Iterable, device: torch.device, objective: Objective, cfg, *,
               batches_max: int = 32) -> float:
    """The training loss the model starts fine-tuning from: its loss, in the stage's train mode and
    with its loss settings, on the first training batches (augmented as training will see them)."""
    set_train_mode(model, bn_train=False)  # measured, not trained: no BatchNorm statistics move
    total, n = 0.0, 0
    criterion = objective.criterion(device, cfg.label_smoothing)
    for i, (x, y) in enumerate(batches):
        if i >= batches_max:
            break
        x, y = to_device(x, device), to_device(y, device)
        loss = criterion(model(x).float(), y)
        total += loss.item() * len(y)
        n += len(y)
    model.eval()
    return total / max(n, 1)


@torch.inference_mode()
def validate(model: nn.Module, batches: Iterable, device: torch.device,
             decider: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, scorer=None) -> dict:
    """Loss, accuracy, balanced accuracy (mean per-class recall) and macro-F1 on the validation batches.
    The scores judge `decider(logits, labels)`'s decisions (default: argmax), the loss the logits.
    `scorer(logits, targets)`, when given, makes the record instead (multi-label outputs)."""
    if scorer is not None:
        return scorer(*collect_logits(model, batches, device))
    model.eval()
    loss, n, truth, outputs = 0.0, 0, [], []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        truth.append(y.cpu())
        outputs.append(logits.cpu())
        n += len(y)
    if not n:
        return {"val_loss": 0.0, "val_accuracy": 0.0, "val_balanced_accuracy": 0.0, "val_macro_f1": 0.0}
    y_true, z = torch.cat(truth).numpy(), torch.cat(outputs).numpy()
    y_pred = decider(z, y_true) if decider is not None else z.argmax(1)
    balanced_accuracy, macro_f1 = macro_scores(per_class(confusion_matrix(y_true, y_pred, z.shape[1])))
    return {"val_loss": loss / n, "val_accuracy": float((y_true == y_pred).mean()),
            "val_balanced_accuracy": balanced_accuracy, "val_macro_f1": macro_f1}


@dataclass
class Stage:
    """What one stage trains with: its batches (`train_batches(epoch)`, `val_batches()`), optimiser and
    schedule (one step per batch), and the objective it trains and judges by: its loss (with
    `label_smoothing` where it is the cross-entropy), `objective.select` (then the loss) on validation, the
    decisions its decider makes. With `baseline`, the model as it comes in is validated first (epoch 0) and
    competes too: a stage never leaves the model worse on validation than it found it. Epoch durations are
    read on `clock`."""

    name: str
    train_batches: Callable[[int], Iterable]
    n_batches: int
    val_batches: Callable[[], Iterable]
    optimizer: torch.optim.Optimizer
    scheduler: object
    epochs: int
    objective: Objective = field(default_factory=lambda: Objective("accuracy"))
    seed: int = 0
    patience: int | None = None
    label_smoothing: float = 0.0
    bn_train: bool = True
    baseline: bool = False
    clip_grad: float | None = None
    clock: Callable[[], float] = time.perf_counter


class Hook:
    """Behaviour around a stage's epochs and batches (validation, keeping the best epoch, checkpoints, the
    time limit, logging); each method does nothing unless a hook overrides it."""

    def before_stage(self, state: "StageState") -> None:
        """Before the first epoch of a stage that starts afresh (not one continued from a checkpoint)."""

    def before_epoch(self, stage: Stage, state: "StageState", last_seconds: float) -> bool:
        """False ends the stage before this epoch."""
        return True

    def after_batch(self, state: "StageState", done: int, loss_sum: float, seen: int) -> None:
        """After each trained batch: `done` batches of the epoch, their summed loss and images."""

    def end_epoch(self, record: dict) -> None:
        """Adds to the epoch's record (its loss and images so far) before the record is kept."""

    def after_epoch(self, state: "StageState") -> int | None:
        """After each epoch (its record is state.history[-1]); may return a new number of epochs."""
        return None

    def after_stage(self, state: "StageState") -> None:
        """After the last epoch."""


class Validation(Hook):
    """The validation scores in every epoch's record; with the stage's `baseline`, an epoch 0 record of
    the model as it comes in."""

    def __init__(self, stage: Stage, model: nn.Module, device: torch.device):
        self.stage, self.model, self.device = stage, model, device

    def scores(self) -> dict:
        objective = self.stage.objective
        return validate(self.model, self.stage.val_batches(), self.device, objective.decider(), objective.scorer())

    def before_stage(self, state: "StageState") -> None:
        if self.stage.baseline:
            state.history.append({"stage": self.stage.name, "epoch": 0, "loss": None, **self.scores(),
                                  "lr": 0.0, "seconds": 0.0})

    def end_epoch(self, record: dict) -> None:
        record.update(self.scores())


class KeepBest(Hook):
    """Keeps the best epoch by `select` on validation (then the loss), weights and BatchNorm statistics
    alike, counts the epochs since (for the patience), says each epoch's line, and restores the best
    weights at the end."""

    def __init__(self, stage: Stage, model: nn.Module, reporter: Reporter):
        self.name, self.select, self.model, self.reporter = stage.name, stage.objective.select, model, reporter

    def before_stage(self, state: "StageState") -> None:
        if state.history:  # the baseline: epoch 0
            self._judge(state, state.history[-1])
            self.reporter.say(f"{self.name} epoch 0 (before training): {_scores(state.history[-1], self.select)}")

    def after_epoch(self, state: "StageState") -> None:
        record = state.history[-1]
        self._judge(state, record)
        self.reporter.say(f"{self.name} epoch {record['epoch']}: loss {record['loss']:.4f}, "
                          f"{_scores(record, self.select)}, {record['seconds']:.1f}s"
                          + (" (best)" if state.best_epoch == record["epoch"] else ""))

    def _judge(self, state: "StageState", record: dict) -> None:
        score = (record[self.select], -record["val_loss"])
        if state.best_score is None or score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, record["epoch"], 0
            state.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            state.bad_epochs += 1

    def after_stage(self, state: "StageState") -> None:
        if state.best_weights:
            self.model.load_state_dict(state.best_weights)


def run_stage(stage: Stage, model: nn.Module, *, device: torch.device, reporter: Reporter,
              state: "StageState | None" = None, hooks: Iterable[Hook] = (), trainer: nn.Module | None = None,
              total: Callable[[float], float] = float) -> "StageState":
    """Train `model` (its parameters with requires_grad) for up to `stage.epochs`, validating after every
    epoch and keeping the best one (the first two hooks), then the given hooks. A state with batch > 0
    continues that epoch exactly: its batches so far are drawn again (same order, same augmentation)
    without training, then the random state is restored. Under torchrun, `trainer` is the
    DistributedDataParallel wrapper the training batches go through (each rank sees its share), and
    `total` sums a number over the ranks for the epoch's record."""
    hooks = [Validation(stage, model, device), KeepBest(stage, model, reporter), *hooks]
    if state is None:
        state = StageState()
        for h in hooks:
            h.before_stage(state)
    precision, epochs = Precision(device), stage.epochs
    while state.epoch < epochs and not (stage.patience is not None and state.bad_epochs >= stage.patience):
        last = state.history[-1]["seconds"] if state.history and state.history[-1]["epoch"] > 0 else 0.0
        if not all(h.before_epoch(stage, state, last) for h in hooks):
            break
        started = stage.clock()
        set_train_mode(model, bn_train=stage.bn_train)
        loss_sum, seen = _train_epoch(stage, trainer or model, state, precision, device, reporter, hooks, epochs)
        images = int(total(seen))
        record = {"stage": stage.name, "epoch": state.epoch + 1, "loss": total(loss_sum) / max(images, 1),
                  "images": images}
        for h in hooks:
            h.end_epoch(record)
        record.update(lr=stage.optimizer.param_groups[0]["lr"], seconds=round(stage.clock() - started, 3))
        state.history.append(record)
        state.epoch = record["epoch"]
        for h in hooks:
            epochs = h.after_epoch(state) or epochs
    for h in hooks:
        h.after_stage(state)
    return state


def _train_epoch(stage: Stage, net: nn.Module, state: "StageState", precision: Precision, device: torch.device,
                 reporter: Reporter, hooks: list[Hook], epochs: int) -> tuple[float, int]:
    """One epoch's training batches (those of an interrupted epoch drawn again untrained) -> (summed loss,
    images)."""
    epoch, skip, saved_rng = state.epoch, state.batch, state.rng
    torch.manual_seed(epoch_seed(stage.seed, epoch))  # augmentation drawn in this process
    loss_sum, seen = (state.loss_total, state.seen) if skip else (0.0, 0)
    criterion = stage.objective.criterion(device, stage.label_smoothing)
    with reporter.bar(f"{stage.name} epoch {epoch + 1}/{epochs}", stage.n_batches) as advance:
        for i, (x, y) in enumerate(stage.train_batches(epoch)):
            if i < skip:  # done before the interruption: drawn again so that what follows is the same
                if i == skip - 1 and saved_rng is not None:
                    torch.set_rng_state(saved_rng)
                advance(1)
                continue
            x, y = to_device(x, device), to_device(y, device)
            with precision.autocast():
                loss = criterion(net(x).float(), y)
            precision.step(loss, stage.optimizer, stage.clip_grad)
            stage.scheduler.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            advance(1, info=f"loss {loss_sum / seen:.3f}")
            for h in hooks:
                h.after_batch(state, i + 1, loss_sum, seen)
    state.batch, state.loss_total, state.seen, state.rng = 0, 0.0, 0, None
    return loss_sum, seen


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and augmentation: the same for a resumed run as for one that never
    stopped."""
    return seed * 1000 + epoch


def _scores(record: dict, select: str) -> str:
    if "val_accuracy" not in record:  # multi-label
        return f"val {select.removeprefix('val_').replace('map', 'mAP').replace('_', ' ')} {record[select]:.4f}"
    text = f"val accuracy {record['val_accuracy']:.4f}"
    if select != "val_accuracy":
        text += f", {select.removeprefix('val_').replace('_', ' ')} {record[select]:.4f}"
    return text
