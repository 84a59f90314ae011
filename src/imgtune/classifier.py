"""ImageClassifier: the one object a user holds. fit -> evaluate / predict -> save / load.

This is the only orchestrator: it runs scan -> features -> head -> fine-tune -> evaluate and keeps the
run folder up to date after every step, so an interrupted `fit` continues with `resume=True`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from . import __version__, distributed
from . import engine as rt
from .atomic import write_json_atomic
from .cache.features import FeatureCache, default_cache_dir, extract_features, run_network
from .config import HeadConfig, Recipe, get_recipe, with_overrides
from .data.builtin import resolve as resolve_data
from .data.datasets import ImageFiles
from .data.images import to_rgb
from .data.scan import Manifest, find_images, image_files, labelled_files, require_usable, scan
from .data.transforms import DataConfig, TTAViews, eval_transform, train_transform
from .errors import ConfigError, DataError, RunFolderError
from .infer import metrics as metrics_lib
from .infer.calibration import softmax
from .model.backbones import architecture, create_backbone, param_groups
from .model.frozen import fast_frozen
from .model.heads import Classifier, EachView, make_head
from .model.trunk import Tail, TrunkViews, split_stage
from .progress import Reporter
from .report.page import write_report
from .report.tensorboard import TensorBoardLog
from .runs.folder import RunFolder, load_tensors_and_meta, save_tensors
from .train import budget as budget_lib
from .train import resolution
from .train.baselines import baseline_lines
from .train.decide import Decision, decide, decision_line, paired_gain, score, scores
from .train.loop import (
    Objective,
    StageState,
    collect_logits,
    load_optimizer_tensors,
    make_optimizer,
    make_scheduler,
    optimizer_tensors,
    run_stage,
    set_schedule_length,
    start_loss,
    validate,
)
from .train.selection import HeadChoice, fit_head, load_into, select_head
from .train.selection import logits as selection_logits

UNKNOWN = "unknown"  # the label of an image below --min-confidence


# Fine-tuning's second epoch (after its warm-up) still trained this much above the loss the head started
# from: not the dip of the first epoch, from which training recovers (Fashion-MNIST, lr 1e-4: 0.258 ->
# 0.296 -> 0.239), but a model pushed off its solution (clip art, body lr 1e-3: 0.80 -> 1.23).
DIVERGED = 1.05


class _Diverged(Exception):
    """Fine-tuning's first epoch trained above the loss the head started from."""

    def __init__(self, loss: float):
        super().__init__(loss)
        self.loss = loss


class ImageClassifier:
    """Transfer learning from a folder of labelled images.

    >>> clf = ImageClassifier(epochs=3).fit("photos/", out="runs/p1")
    >>> clf.evaluate("photos/test")["per_class"]
    >>> clf.predict(["new/cat.jpg"])
    """

    def __init__(self, backbone: str = "efficientnet_lite0", *, recipe: str = "default",
                 image_size: int | None = None, epochs: int | None = None, head_epochs: int | None = None,
                 batch_size: int | None = None, cached_views: int | None = None, metric: str | None = None,
                 augment: str | None = None, seed: int = 0,
                 device: str = "auto", weights: str | None = None,
                 cache_dir: str | None = None, quiet: bool = False, checkpoint_every: float = 60.0,
                 time_limit: "float | str | budget_lib.TimeLimit | None" = None):
        self.backbone = backbone
        self.recipe = recipe
        self.image_size = image_size
        self.epochs = epochs
        self.head_epochs = head_epochs
        self.batch_size = batch_size
        self.cached_views = cached_views
        self.metric = metric  # accuracy, balanced_accuracy or macro_f1 (None: the recipe's)
        self.augment = augment  # fine-tuning's augmentation policy (None: the recipe's)
        self.seed = seed
        self.device = device
        self.weights = weights
        self.cache_dir = cache_dir
        self.quiet = quiet
        self.checkpoint_every = checkpoint_every  # seconds between checkpoints inside a fine-tune epoch
        # seconds the whole fit may take ('10m' or a budget.TimeLimit with its own clock and rates too);
        # fine-tune epochs are planned to fit in it
        self.time_limit = time_limit

    # ------------------------------------------------------------------------------------- fit
    def fit(self, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
            resume: bool = False, tensorboard: bool = False) -> "ImageClassifier":
        """Train on `data` into the run folder `out`; `resume` continues an interrupted run there, and
        `tensorboard` writes per-epoch scalars to out/tensorboard/."""
        if not _is_path(data):
            raise DataError(f"fit takes a folder of class folders, a CSV file or builtin:NAME; received "
                            f"{type(data).__name__}. For a list of labelled files, write them to a CSV with "
                            "columns path,label.")
        limit = budget_lib.TimeLimit.of(self.time_limit)
        clock = limit.clock if limit else time.perf_counter  # what the budget is counted on
        started = clock()
        recipe = with_overrides(get_recipe(self.recipe), epochs=self.epochs, head_epochs=self.head_epochs,
                                batch_size=self.batch_size, cached_views=self.cached_views, metric=self.metric,
                                augment=self.augment)
        if self.image_size is not None:
            DataConfig(self.image_size, (0, 0, 0), (1, 1, 1))  # validates the value before any work
        ranks, device = distributed.start(self.device)  # one process, or this rank's under torchrun
        self.ranks_ = ranks
        if limit is not None and ranks.active:
            raise ConfigError("--time-limit is for one process; under torchrun give --epochs instead.")
        rt.setup(self.seed)
        rep = Reporter(self.quiet or not ranks.main)
        run = RunFolder(out if out is not None else tempfile.mkdtemp(prefix="imgtune-run-"))
        if not str(data).startswith("builtin:"):
            _refuse_run_inside_data(run, data)
        with run.locked() if ranks.main else contextlib.nullcontext():  # one training process per run folder
            return self._fit_into(run, data, resume=resume, tensorboard=tensorboard, recipe=recipe, limit=limit,
                                  started=started, ranks=ranks, device=device, rep=rep)

    def _fit_into(self, run: RunFolder, data, *, resume: bool, tensorboard: bool, recipe: Recipe,
                  limit: "budget_lib.TimeLimit | None", started: float, ranks, device, rep: Reporter
                  ) -> "ImageClassifier":
        """fit, with the run folder locked: scan, features, head, fine-tuning, decisions, evaluation."""
        clock = limit.clock if limit else time.perf_counter
        times: dict[str, float] = {}
        if resume and not run.split.exists():
            raise RunFolderError(f"--resume: {str(run.path)!r} holds no run to continue (no split.csv); "
                                 "start it without --resume.")
        if not resume and run.has_run():
            raise RunFolderError(f"{str(run.path)!r} already holds a run: pass --resume to continue it, or "
                                 "choose another --out.")
        settings = {"backbone": self.backbone, "recipe": recipe.to_dict(), "image_size": self.image_size,
                    "seed": self.seed, "weights": self.weights,
                    "time_limit": None if limit is None else limit.seconds}  # as the user gave it
        cache_root = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        source = resolve_data(str(data), cache_root)
        settings["data"] = _data_identity(source)
        if resume:
            _check_same_settings(run, settings)

        # scan: the split is written once and reused on resume, so a continued run sees the same files
        manifest = scan(run.split if resume else source, seed=self.seed)
        if resume:
            _check_same_classes(manifest, source, self.seed)
        if limit is not None and limit.deadline(started) <= clock():
            raise ConfigError(f"--time-limit {limit.seconds:g}s was spent before training could start "
                              f"({clock() - started:.1f} s of start-up): give a longer limit.")
        if not resume and ranks.main:
            manifest.write_csv(run.split)
            write_json_atomic(run.checkpoints / "settings.json", settings)
        ranks.barrier()
        backbone = create_backbone(self.backbone, weights=self.weights, image_size=self.image_size)
        rep.say(manifest.summary())
        if self.image_size is None:  # auto: a larger input where the images are large and it pays
            backbone = self._auto_image_size(backbone, manifest, recipe.metric, run, cache_root, device, rep)

        # features
        t = time.perf_counter()
        paths = [it.path for it in manifest.items]
        views = self._trunk_views(recipe, backbone, cache_root, ranks)
        cache = FeatureCache(cache_root, backbone)

        def fast(net: torch.nn.Module, part: str):  # built the first time an image needs it
            return functools.cache(lambda: fast_frozen(net, backbone.data_config.image_size, device=device,
                                                       cache_root=cache_root, key_info={**cache.key_info,
                                                                                        "part": part}))

        hooks = {"network": fast(backbone.model, "features")}
        if views:  # one pass fills both caches; the augmented views run the trunk alone
            hooks = {"network": fast(views.extractor, f"trunk{views.stage}+features"), "keep": views.keep_features}
            views.runner = fast(views.trunk, f"trunk{views.stage}")
        feats, bad, n_new, digests = extract_features(backbone, paths, cache, device=device, reporter=rep,
                                                      ranks=ranks, **hooks)
        del hooks  # the extraction network and its memory
        manifest = manifest.without(bad)
        if ranks.main:
            run.write_skipped(manifest.skipped)
        require_usable(manifest)
        rep.say(f"Features: {n_new:,} extracted, {len(paths) - n_new - len(bad):,} from the cache"
                + (f"; {len(manifest.skipped):,} files skipped, listed in {run.skipped}" if manifest.skipped else ""))
        times["features"] = time.perf_counter() - t
        deadline = None if limit is None else limit.deadline(started)
        extract_rate = n_new / times["features"] if n_new >= 64 else None  # images/s, decoding included
        if limit is not None and limit.rates is not None:
            extract_rate = limit.rates.forward
        row = {p: i for i, p in enumerate(paths)}
        split_feats = {s: (feats[[row[it.path] for it in manifest.split(s)]],
                           np.array([it.label for it in manifest.split(s)], dtype=int))
                       for s in ("train", "val", "test")}
        n_classes = len(manifest.classes)

        # head on cached features
        t = time.perf_counter()
        tb = TensorBoardLog(run.path / "tensorboard") if tensorboard and ranks.main else None
        log_epoch = tb.epoch if tb else (lambda record, step: None)
        if recipe.head.kind == "logistic":
            choice, head_history = self._logistic_head(recipe, split_feats, n_classes, run, rep, log_epoch)
            head = make_head(recipe.head, backbone.num_features, n_classes)
            load_into(head[-1], choice.train_head)
            objective = Objective(recipe.metric, choice.class_weights, choice.decision.offsets_log_prob
                                  if recipe.offsets else None)
        else:
            head_stop = None if deadline is None else clock() + 0.1 * (deadline - clock())  # a tenth at most
            choice, objective = None, Objective(recipe.metric, None, None)
            head, head_history = self._sgd_head(recipe, split_feats, backbone.num_features, n_classes, run, rep,
                                                device, objective, log_epoch, head_stop, clock)
        times["head"] = time.perf_counter() - t
        model = rt.prepare(Classifier(backbone.model, head.to(device)), device)

        # fine-tune the last blocks on images; kept only where it beats the head on validation
        t = time.perf_counter()
        ft_history: list[dict] = []
        finetune = {"kept": False, "reason": "not asked for (--epochs 0)"}
        if recipe.finetune.epochs > 0:
            digest_of = dict(zip(paths, digests))
            budget = None if deadline is None else (deadline, extract_rate, limit)
            ft_history, finetune = self._finetune_stage(recipe, model, manifest, backbone.data_config, run, rep,
                                                        device, head_history, objective, log_epoch, views,
                                                        digest_of, budget, choice)
        if tb:
            tb.close()
        times["finetune"] = time.perf_counter() - t
        if not ranks.main:  # rank 0 alone decides, evaluates and writes the run
            return self

        tuned = finetune["kept"]
        if not tuned and choice is not None:  # the head alone: the one fitted on train+val
            load_into(model.head[-1], choice.all_head)
        self.classes_ = list(manifest.classes)
        self.model_ = model.eval()
        self.data_config_ = backbone.data_config
        self.head_config_ = recipe.head
        self.metric_ = recipe.metric
        self.run_dir_ = run.path
        self.device_ = device
        self.history_ = head_history + ft_history

        evaluator = model  # the frozen trunk is unchanged by fine-tuning: its fast copy serves evaluation
        if views is not None and tuned:
            evaluator = Classifier(torch.nn.Sequential(views.runner(), Tail(model.backbone, views.stage)),
                                   model.head, model.offsets).eval()

        def split_logits(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
            items = manifest.split(name)
            if tuned:
                return self._logits_for(items, rep, network=evaluator)
            x, y = split_feats[name]  # the backbone is unchanged: its cached features are exact
            with torch.inference_mode():
                z = model.head.eval()(torch.from_numpy(x).to(device)) + model.offsets
            return z.cpu().numpy(), y, [it.path for it in items]

        # decide (offsets for the metric, temperature), then evaluate on test (val when there is no test split)
        t = time.perf_counter()
        val_logits, val_y, val_paths = split_logits("val")
        decision = self._decide(recipe, choice, tuned, val_logits, val_y)
        with torch.no_grad():
            model.offsets.copy_(torch.as_tensor(decision.offsets, dtype=model.offsets.dtype))
        val_logits = decision.adjusted(val_logits)
        self.temperature_ = decision.temperature
        calibration = {"temperature": self.temperature_, "fitted_on": decision.fitted_on,
                       "val_ece_before": metrics_lib.expected_calibration_error(val_y, softmax(val_logits)),
                       "val_ece_after": metrics_lib.expected_calibration_error(
                           val_y, softmax(val_logits, self.temperature_)),
                       "val_rejection": metrics_lib.rejection_table(val_y, softmax(val_logits, self.temperature_))}
        rep.say(decision_line(decision, self.classes_))
        split = "test" if manifest.split("test") else "val"
        logits, y, kept = (val_logits, val_y, val_paths) if split == "val" else split_logits(split)
        self.metrics_ = {**self._metrics(logits, y, kept), "split": split}
        self.metrics_["baselines"] = self._baselines(choice, split_feats, split, n_classes, kept, manifest)
        for line in baseline_lines(self.metrics_):
            rep.say(line)
        times["evaluate"] = time.perf_counter() - t
        times["total"] = time.perf_counter() - started
        self.fit_info_ = {"weights": backbone.weights_id, "recipe": recipe.to_dict(), "data": manifest.source,
                          "counts": manifest.counts(), "skipped": len(manifest.skipped),
                          "class_counts": {c: int(n) for c, n in zip(manifest.classes, np.bincount(
                              [it.label for it in manifest.items], minlength=n_classes))},
                          "head_selection": choice.to_dict() if choice is not None else None,
                          "finetune": finetune, "decision": decision.to_dict(),
                          "calibration": calibration,
                          "seconds": {k: round(v, 2) for k, v in times.items()}}
        self.save(run.path)
        write_report(run.path, self.metrics_, run.report)
        return self

    def _auto_image_size(self, backbone, manifest: Manifest, metric: str, run: RunFolder, cache_root: Path, device,
                         rep: Reporter):
        """The backbone at its default input, or at a larger one where most images are large enough and
        the cross-validated head on a sample of the training images is better there than the noise of
        the comparison (resolution.py). Decided once: a resumed run reads checkpoints/image_size.json."""
        stored = run.checkpoints / "image_size.json"
        default = backbone.data_config.image_size
        if stored.exists():
            size = int(json.loads(stored.read_text())["image_size"])
        else:
            train = manifest.split("train")
            short = resolution.median_short_side([it.path for it in train], seed=self.seed)
            large = resolution.larger_size(default, short)
            size, how = default, (f"the images' median shorter side is {short:.0f} px" if short else "no image size read")
            if large is not None:
                labels = np.array([it.label for it in train])
                pick = resolution.sample(labels, self.seed)
                paths = [train[i].path for i in pick]
                feats = {}
                for name, s in (("small", default), ("large", large)):
                    bb = dataclasses.replace(backbone, data_config=dataclasses.replace(backbone.data_config,
                                                                                       image_size=s))
                    cache = FeatureCache(cache_root, bb)
                    net = functools.partial(fast_frozen, bb.model, s, device=device, cache_root=cache_root,
                                            key_info={**cache.key_info, "part": "features"})
                    f, bad, _, _ = extract_features(bb, paths, cache, device=device, reporter=rep, network=net)
                    feats[name] = f
                ok = ~(np.isnan(feats["small"]).any(1) | np.isnan(feats["large"]).any(1))
                r = resolution.compare(feats["small"][ok], feats["large"][ok], labels[pick][ok],
                                       len(manifest.classes), metric=metric, seed=self.seed)
                name = metric.replace("_", " ")
                how += (f"; on {r['images']} training images the cross-validated head's {name} was {r['small']:.4f} "
                        f"at {default} px and {r['large']:.4f} at {large} px ({r['gain'] * 100:+.1f} points, noise "
                        f"+-{r['noise'] * 100:.1f}; a larger input must win by {resolution.MARGIN:g}x the noise)")
                size = large if r["pays"] else default
            rep.say(f"Image size: {size} px ({how}).")
            if self.ranks_.main:
                write_json_atomic(stored, {"image_size": size, "why": how})
        if size == default:
            return backbone
        return dataclasses.replace(backbone, data_config=dataclasses.replace(backbone.data_config, image_size=size))

    def _logistic_head(self, recipe: Recipe, split_feats, n_classes: int, run: RunFolder, rep: Reporter, log_epoch
                       ) -> tuple[HeadChoice, list[dict]]:
        """The head as a model selection on the cached features (selection.py), with the decisions its
        out-of-fold predictions fit; checkpointed, so a resumed run does not redo it."""
        ckpt = run.checkpoints / "head.safetensors"
        if ckpt.exists():  # finished in an earlier, interrupted run
            tensors, meta = load_tensors_and_meta(ckpt)
            choice = HeadChoice.from_saved(tensors, meta)
            rep.say("Head: restored from the interrupted run's checkpoint.")
            return choice, meta["history"]
        (x, y), (xv, yv) = split_feats["train"], split_feats["val"]
        started = time.perf_counter()
        choice = select_head(x, y, xv, yv, n_classes, metric=recipe.metric, folds=recipe.head.folds, seed=self.seed)
        choice.decision = decide(choice.selection.oof_logits, choice.oof_labels, recipe.metric,
                                 fitted_on=f"out-of-fold predictions of {len(choice.oof_labels):,} train+val images",
                                 offsets=recipe.offsets)
        rep.say(choice.describe())
        val = torch.from_numpy(selection_logits(xv, choice.train_head))
        record = {"stage": "head", "epoch": 1, "loss": choice.train_loss, "images": len(y),
                  **validate(torch.nn.Identity(), [(val, torch.from_numpy(yv))], torch.device("cpu"),
                             Objective(recipe.metric, None, choice.decision.offsets_log_prob).decider()),
                  "lr": 0.0, "seconds": round(time.perf_counter() - started, 3)}
        history = [record]
        log_epoch(record, 1)
        if self.ranks_.main:
            tensors, meta = choice.to_saved()
            save_tensors(ckpt, tensors, {**meta, "history": history})
            run.write_history(history)
        return choice, history

    def _sgd_head(self, recipe: Recipe, split_feats, n_features: int, n_classes: int, run: RunFolder,
                  rep: Reporter, device, objective: "Objective", log_epoch, stop_at: float | None = None,
                  clock=time.perf_counter) -> tuple[torch.nn.Module, list[dict]]:
        """A head trained by epochs on the train split (the seed recipe's), best epoch on validation."""
        cfg = recipe.head
        torch.manual_seed(self.seed)  # the same head whether or not extraction drew random numbers
        head = make_head(cfg, n_features, n_classes).to(device)
        ckpt = run.checkpoints / "head.safetensors"
        if ckpt.exists():  # finished in an earlier, interrupted run
            tensors, meta = load_tensors_and_meta(ckpt)
            head.load_state_dict(tensors)
            rep.say("Head: restored from the interrupted run's checkpoint.")
            return head, meta["history"]
        x, y = (torch.from_numpy(v) for v in split_feats["train"])
        xv, yv = (torch.from_numpy(v) for v in split_feats["val"])
        bs = cfg.batch_size
        n_batches = (len(y) + bs - 1) // bs
        ranks = self.ranks_
        if ranks.active:  # each rank trains on its share of every batch, the batch size rounded to a multiple
            bs = max(ranks.world, bs - bs % ranks.world)
            n_batches = (len(y) + bs - 1) // bs

        def train_batches(epoch: int):
            order = torch.randperm(len(y), generator=rt.generator(self.seed * 1000 + epoch))
            if ranks.active:  # padded with the first images so that every rank has as many as the others
                order = torch.cat([order, order[:(-len(order)) % ranks.world]])
            for i in range(0, len(order), bs):
                idx = order[i:i + bs][ranks.rank::ranks.world]
                yield x[idx], y[idx]

        def val_batches():
            return [(xv[i:i + 4096], yv[i:i + 4096]) for i in range(0, len(yv), 4096)]

        optimizer = make_optimizer(cfg.optimizer, [{"params": list(head.parameters()), "lr": cfg.lr}],
                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = make_scheduler(cfg.schedule, optimizer, cfg.epochs * n_batches)
        quiet_epochs = Reporter(quiet=True)  # head epochs take milliseconds: one summary line instead
        state = run_stage("head", head, train_batches=train_batches, n_batches=n_batches, val_batches=val_batches,
                          trainer=distributed.wrap(head, ranks, device), total=ranks.total,
                          optimizer=optimizer, scheduler=scheduler, epochs=cfg.epochs, patience=cfg.patience,
                          label_smoothing=cfg.label_smoothing, seed=self.seed, device=device,
                          reporter=quiet_epochs, class_weights=objective.tensor(device), select=objective.select,
                          on_epoch=lambda st: log_epoch(st.history[-1], st.epoch), stop_at=stop_at, clock=clock)
        if state.history:
            best = state.history[state.best_epoch - 1]
            rep.say(f"Head: {len(state.history)} epochs, best val {objective.name} {best[objective.select]:.4f} "
                    f"(epoch {state.best_epoch}).")
        if ranks.main:
            save_tensors(ckpt, head.state_dict(), {"history": state.history})
            run.write_history(state.history)
        return head, state.history

    def _decide(self, recipe: Recipe, choice: "HeadChoice | None", tuned: bool, val_logits: np.ndarray,
                val_y: np.ndarray) -> Decision:
        """The offsets and temperature of the model that is kept. The head alone: those fitted on its
        out-of-fold predictions over train+val. A fine-tuned model: the head's offsets (in calibrated
        units), its own temperature on validation."""
        if choice is not None and not tuned:
            return choice.decision
        if choice is not None:
            return decide(val_logits, val_y, recipe.metric, offsets_log_prob=choice.decision.offsets_log_prob,
                          fitted_on=f"validation ({len(val_y):,} images); offsets from the head's out-of-fold "
                                    "predictions")
        return decide(val_logits, val_y, recipe.metric, offsets=False,
                      fitted_on=f"validation ({len(val_y):,} images); no offsets (the {recipe.name} recipe)")

    def _baselines(self, choice: "HeadChoice | None", split_feats, split: str, n_classes: int,
                   kept: list[str], manifest: Manifest) -> dict:
        """The majority class and the logistic-regression probe on the same split and cached features."""
        (x, y), (xv, yv) = split_feats["train"], split_feats["val"]
        xe, ye = split_feats[split]
        keep = set(kept)
        rows = [i for i, it in enumerate(manifest.split(split)) if it.path in keep]
        xe, ye = xe[rows], ye[rows]
        majority = int(np.bincount(y, minlength=n_classes).argmax())
        out = {"majority": {"class": self.classes_[majority],
                            **scores(ye, np.full(len(ye), majority), n_classes)}}
        if choice is None:  # no selection ran: cross-validate the probe's C now (seconds)
            choice = select_head(x, y, xv, yv, n_classes, metric="accuracy", seed=self.seed, weightings=("none",))
        probe = choice.probe()
        head = fit_head(np.concatenate([x, xv]), np.concatenate([y, yv]), n_classes, probe)
        out["logistic_probe"] = {"c": probe.c, **scores(ye, selection_logits(xe, head).argmax(1), n_classes)}
        return out

    def _trunk_views(self, recipe: Recipe, backbone, cache_root: Path, ranks) -> TrunkViews | None:
        """The cache of frozen-trunk outputs fine-tuning will train from, when the recipe asks for it and
        the backbone splits there."""
        cfg = recipe.finetune
        if cfg.epochs == 0 or cfg.cached_views == 0:
            return None
        stage = split_stage(backbone.model, _unfrozen(backbone.model, cfg.unfreeze, self.backbone))
        if stage is None:
            return None
        return TrunkViews(cache_root, backbone, stage, augment=cfg.augment, seed=self.seed)

    def _finetune_stage(self, recipe: Recipe, model: Classifier, manifest: Manifest, data_config: DataConfig,
                        run: RunFolder, rep: Reporter, device, head_history: list[dict],
                        objective: Objective, log_epoch, views: TrunkViews | None = None,
                        digest_of: dict[str, str] | None = None,
                        budget: "tuple[float, float | None, budget_lib.TimeLimit] | None" = None,
                        choice: "HeadChoice | None" = None) -> tuple[list[dict], dict]:
        """Fine-tune the last block groups and the head -> (history, what was kept and why).

        Guarded twice: when the training loss after warm-up (the second epoch) stays above the loss the
        head started from on the augmented training batches, the stage restarts once from the head
        at a tenth of the learning rate; and the fine-tuned weights are kept only where they beat the
        head on validation by more than the bootstrap noise of the validation split."""
        cfg = recipe.finetune
        unfrozen = _unfrozen(model.backbone, cfg.unfreeze, self.backbone)
        for n, p in model.backbone.named_parameters():
            p.requires_grad = n in unfrozen
        for p in model.head.parameters():
            p.requires_grad = True
        body = [p for n, p in model.backbone.named_parameters() if n in unfrozen]
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the head on the pretrained body
        train_items, val_items = manifest.split("train"), manifest.split("val")
        ranks = self.ranks_
        bs = max(1, cfg.batch_size // ranks.world)  # per rank: the global batch stays what the recipe says
        per_rank = -(-len(train_items) // ranks.world)  # DistributedSampler pads the last share
        n_batches = (per_rank + bs - 1) // bs
        if ranks.active and per_rank * ranks.world > len(train_items):
            rep.say(f"Fine-tune: {ranks.world} processes, {bs} images per process per batch; each epoch "
                    f"repeats {per_rank * ranks.world - len(train_items)} image(s) per epoch to share them evenly.")
        stop_at, replan, clock, fresh = None, None, time.perf_counter, False
        if budget is not None:
            clock = budget[2].clock
            cfg, stop_at, fresh = self._plan(cfg, budget, run, model, views, manifest, digest_of, bs, data_config,
                                             rep)
            if cfg.epochs == 0:
                rep.say("Fine-tune: skipped, no time left for an epoch within the time limit.")
                return [], {"kept": False, "reason": "no time left for an epoch within the time limit"}
        workers = rt.loader_workers()
        train_set = ImageFiles([it.path for it in train_items], [it.label for it in train_items],
                               train_transform(data_config, cfg.augment), data_config.image_size)
        val_set = ImageFiles([it.path for it in val_items], [it.label for it in val_items],
                             eval_transform(data_config), data_config.image_size)

        def batches(dataset, *, shuffle: bool, epoch: int = 0):
            sampler = None
            if shuffle and ranks.active:  # each rank its share of one seeded permutation per epoch
                sampler = DistributedSampler(dataset, ranks.world, ranks.rank, shuffle=True, seed=self.seed)
                sampler.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=bs, shuffle=shuffle and sampler is None, sampler=sampler,
                                num_workers=workers, generator=rt.generator(self.seed * 1000 + epoch),
                                pin_memory=device.type == "cuda")
            for x, y, _, reasons in loader:
                if any(reasons):  # the file changed since it was checked; leave it out of this batch
                    keep = [not r for r in reasons]
                    x, y = x[keep], y[keep]
                if len(y):
                    yield x, y

        trained = model  # what the epochs run: the whole classifier on images, or its tail on cached views
        train_batches = lambda e: batches(train_set, shuffle=True, epoch=e)
        val_batches = lambda: batches(val_set, shuffle=False)
        if views is not None:
            trained = Classifier(Tail(model.backbone, views.stage), model.head, model.offsets)
            train_batches, val_batches = self._cached_batches(views, cfg, train_items, val_items, digest_of, bs,
                                                              device, rep)
        ckpt = run.checkpoints / "finetune.safetensors"
        saved = load_tensors_and_meta(ckpt) if ckpt.exists() else None
        guard = saved[1].get("guard") if saved else None
        if guard is None:  # the loss the head starts from, on the first augmented batches of epoch 1
            guard = {"start_loss": start_loss(trained, train_batches(0), device, objective, cfg),
                     "lr_scale": 1.0}
        n_body = sum(p.numel() for p in body)
        how = (f"{cfg.augment} augmentation, {cfg.cached_views} cached view(s) per image and the plain one"
               if views is not None else f"{cfg.augment} augmentation")
        rep.say(f"Fine-tune: training the last {cfg.unfreeze} block group(s) ({n_body:,} parameters) and the "
                f"head on {len(train_items):,} images, {how}, up to {cfg.epochs} epochs; the head starts at "
                f"training loss {guard['start_loss']:.4f}.")
        while True:
            scale = guard["lr_scale"]
            # a fresh optimizer over exactly the parameters this stage trains
            optimizer = make_optimizer(cfg.optimizer, [{"params": body, "lr": cfg.lr * scale},
                                                       {"params": list(model.head.parameters()),
                                                        "lr": cfg.head_lr * scale}],
                                       momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            scheduler = make_scheduler(cfg.schedule, optimizer, cfg.epochs * n_batches, warmup=cfg.warmup)
            if fresh:
                replan = self._replanner(run, stop_at, n_batches, rep, lambda: scheduler, clock)
            state = None
            if saved is not None:
                tensors, meta = saved
                model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
                load_optimizer_tensors(optimizer, tensors, meta["optimizer"])
                scheduler.load_state_dict(meta["scheduler"])
                state = StageState.from_meta(meta["state"], {k[5:]: v for k, v in tensors.items()
                                                             if k.startswith("best.")}, tensors.get("rng"))
                where = f"batch {state.batch} of epoch {state.epoch + 1}" if state.batch else f"epoch {state.epoch}"
                rep.say(f"Fine-tune: continuing after {where} of the interrupted run.")
                saved = None

            def save_checkpoint(st: StageState) -> None:
                opt_tensors, opt_meta = optimizer_tensors(optimizer)
                tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
                           **{f"best.{k}": v for k, v in st.best_weights.items()}, **opt_tensors,
                           **({"rng": st.rng} if st.batch and st.rng is not None else {})}
                save_tensors(ckpt, tensors, {"state": st.meta(), "optimizer": opt_meta,
                                             "scheduler": scheduler.state_dict(), "guard": guard})

            def checkpoint(st: StageState) -> None:
                if ranks.main:
                    save_checkpoint(st)
                    run.write_history(head_history + st.history)
                    log_epoch(st.history[-1], len(head_history) + st.epoch)
                last = st.history[-1]  # after warm-up: the second epoch (the first of a one-epoch stage)
                if last["epoch"] == min(2, cfg.epochs) and scale == 1.0 and \
                        not last["loss"] <= DIVERGED * guard["start_loss"]:  # a NaN loss has diverged too
                    raise _Diverged(last["loss"])

            try:
                state = run_stage("fine-tune", trained, train_batches=train_batches,
                                  n_batches=n_batches, val_batches=val_batches,
                                  optimizer=optimizer, scheduler=scheduler, epochs=cfg.epochs, patience=cfg.patience,
                                  label_smoothing=cfg.label_smoothing, seed=self.seed, device=device, reporter=rep,
                                  state=state, on_epoch=checkpoint, bn_train=cfg.bn_train, baseline=True,
                                  class_weights=objective.tensor(device), select=objective.select,
                                  on_batch=None if ranks.active else save_checkpoint,
                                  checkpoint_every=self.checkpoint_every,
                                  trainer=distributed.wrap(trained, ranks, device), total=ranks.total,
                                  stop_at=stop_at, replan=replan, clock=clock, decider=objective.decider(),
                                  clip_grad=cfg.clip_grad)
                break
            except _Diverged as e:
                if ranks.main:
                    ckpt.unlink(missing_ok=True)  # a resume from here starts over, and diverges the same way
                rep.say(f"Fine-tune: after warm-up the training loss is still {e.loss:.4f}, above the head's "
                        f"{guard['start_loss']:.4f}: restarting from the head at a tenth of the learning rate.")
                model.load_state_dict(start)
                guard = {**guard, "lr_scale": 0.1, "diverged_loss": e.loss}
        for p in model.parameters():
            p.requires_grad = False
        outcome = self._keep_or_not(model, trained, start, state, val_batches, device, objective, rep)
        if guard["lr_scale"] != 1.0:
            outcome["restarted"] = {"loss_after_warmup": guard.get("diverged_loss"),
                                    "start_loss": guard["start_loss"], "lr_scale": guard["lr_scale"]}
        return state.history, outcome

    def _keep_or_not(self, model: Classifier, trained, start: dict, state: StageState, val_batches, device,
                     objective: Objective, rep: Reporter) -> dict:
        """Keep the fine-tuned weights only where they beat the head on validation by more than the
        noise of the validation split (a paired bootstrap of the metric); otherwise restore the head."""
        tuned_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        z_ft, y = collect_logits(trained, val_batches(), device)
        model.load_state_dict(start)
        z_head, _ = collect_logits(trained, val_batches(), device)
        decider = objective.decider() or (lambda z, _: z.argmax(1))
        p_ft, p_head = decider(z_ft, y), decider(z_head, y)
        k = z_ft.shape[1]
        gain, se = paired_gain(y, p_ft, p_head, objective.metric, k, seed=self.seed)
        ft_score = score(y, p_ft, objective.metric, k)
        head_score = score(y, p_head, objective.metric, k)
        kept = state.best_epoch > 0 and gain > se
        name = objective.name
        if kept:
            model.load_state_dict(tuned_weights)
            why = (f"{ft_score:.4f} validation {name} (epoch {state.best_epoch}) against the head's {head_score:.4f}: "
                   f"{gain * 100:+.1f} points, more than the noise of {len(y):,} validation images "
                   f"(+-{se * 100:.1f}); kept the fine-tuned model")
        elif state.best_epoch == 0:
            why = f"no epoch beat the head's {head_score:.4f} validation {name}; kept the head"
        else:
            why = (f"{ft_score:.4f} validation {name} (epoch {state.best_epoch}) against the head's {head_score:.4f}: "
                   f"{gain * 100:+.1f} points, within the noise of {len(y):,} validation images "
                   f"(+-{se * 100:.1f}); kept the head")
        rep.say(f"Fine-tuning: {why}.")
        return {"kept": kept, "reason": why, "best_epoch": state.best_epoch, "val_finetuned": ft_score,
                "val_head": head_score, "gain": gain, "noise": se, "metric": objective.metric}

    def _plan(self, cfg, budget, run: RunFolder, model: Classifier, views: TrunkViews | None, manifest: Manifest,
              digest_of, bs: int, data_config: DataConfig, rep: Reporter):
        """--time-limit: (the fine-tune settings with the epochs that fit, the time to stop starting epochs).
        The plan is kept in checkpoints/plan.json, so a resumed run trains the epochs it planned."""
        deadline, rate, limit = budget
        train, val = manifest.split("train"), manifest.split("val")
        n_eval = len(val) + len(manifest.split("test"))
        stored = run.checkpoints / "plan.json"
        fresh = not stored.exists()
        if not fresh:
            plan = budget_lib.Plan(**json.loads(stored.read_text()))
        else:
            size = data_config.image_size
            if views is not None:
                probe, example = Classifier(Tail(model.backbone, views.stage), model.head), (bs, *views.shape)
                todo = len(views.missing([digest_of[it.path] for it in train], range(cfg.cached_views + 1)))
                todo += len(views.missing([digest_of[it.path] for it in val], range(1)))
                fast = views.runner()
            else:
                probe, example, todo, fast = model, (bs, 3, size, size), 0, model
            device = next(model.parameters()).device
            if limit.rates is not None:  # given (tests): nothing is measured
                rate, step = limit.rates.forward, limit.rates.step
            else:
                rate = rate or budget_lib.forward_rate(fast, torch.zeros(32, 3, size, size, device=device))
                step = budget_lib.step_rate(probe, torch.zeros(example, device=device), bn_train=cfg.bn_train)
            plan = budget_lib.plan_epochs(deadline - limit.clock(), n_train=len(train), n_val=len(val),
                                          n_eval=n_eval, views_to_compute=todo, forward_rate=rate, step_rate=step)
            write_json_atomic(stored, dataclasses.asdict(plan))
        rep.say(plan.describe())
        return dataclasses.replace(cfg, epochs=plan.epochs), deadline - plan.evaluate_seconds, fresh

    @staticmethod
    def _replanner(run: RunFolder, stop_at: float, n_batches: int, rep: Reporter, scheduler, clock):
        """After the first epoch, the epochs that fit by its measured duration: the schedule is stretched
        or shortened to match, and the plan saved for --resume."""
        def replan(st: StageState) -> int | None:
            if st.epoch != 1:
                return None
            seconds = st.history[-1]["seconds"]
            epochs = 1 + budget_lib.epochs_that_fit(stop_at - clock(), seconds)
            set_schedule_length(scheduler(), epochs * n_batches)
            stored = run.checkpoints / "plan.json"
            write_json_atomic(stored, {**json.loads(stored.read_text()), "epochs": epochs, "epoch_seconds": seconds})
            rep.say(f"Time limit: the first epoch took {seconds:.1f} s; {epochs} epoch(s) in all.")
            return epochs
        return replan

    def _cached_batches(self, views: TrunkViews, cfg, train_items, val_items, digest_of: dict[str, str], bs: int,
                        device, rep: Reporter):
        """(train_batches(epoch), val_batches()) over cached trunk outputs. Each image has the plain view
        and `cfg.cached_views` augmented ones; its own seeded permutation of them decides which one each
        epoch uses, so every view is seen once per cycle."""
        n_views = cfg.cached_views + 1
        tp, td = [it.path for it in train_items], [digest_of[it.path] for it in train_items]
        vp, vd = [it.path for it in val_items], [digest_of[it.path] for it in val_items]
        ranks = self.ranks_
        views.store.refresh()  # every rank plans from the same shards, then shares the work out
        todo_train, todo_val = views.missing(td, range(n_views)), views.missing(vd, range(1))
        ranks.barrier()
        views.fill(tp, td, todo_train, device=device, reporter=rep, share=(ranks.rank, ranks.world))
        views.fill(vp, vd, todo_val, device=device, reporter=rep, share=(ranks.rank, ranks.world))
        ranks.barrier()
        views.store.refresh()  # the shards the other ranks wrote
        y = torch.tensor([it.label for it in train_items], dtype=torch.long)
        yv = torch.tensor([it.label for it in val_items], dtype=torch.long)
        g = rt.generator(self.seed)
        cycle = torch.stack([torch.randperm(n_views, generator=g) for _ in train_items]) if train_items else None
        xv = views.rows(vp, vd, [0] * len(vp), device=device, reporter=rep)

        def train_batches(epoch: int):
            x = views.rows(tp, td, cycle[:, epoch % n_views].tolist(), device=device, reporter=rep)
            order = torch.randperm(len(y), generator=rt.generator(self.seed * 1000 + epoch))
            if ranks.active:  # padded with the first images so that every rank has as many as the others
                order = torch.cat([order, order[:(-len(order)) % ranks.world]])
            for i in range(0, len(order), bs * ranks.world):
                idx = order[i:i + bs * ranks.world][ranks.rank::ranks.world]
                yield x[idx].float(), y[idx]

        def val_batches():
            for i in range(0, len(yv), 256):
                yield xv[i:i + 256].float(), yv[i:i + 256]

        return train_batches, val_batches

    # -------------------------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors (+ metrics and history when known) to `path`."""
        self._require_fitted()
        if getattr(self, "runtime_", "torch") != "torch":
            raise RunFolderError("A classifier loaded with an ONNX runtime cannot be saved as a run; load it "
                                 "with the torch runtime.")
        run = RunFolder(path)
        run.save_weights(self.model_.state_dict(), self.classes_)
        run.write_config({
            **getattr(self, "fit_info_", {}), "backbone": self.backbone, "classes": self.classes_,
            "data_config": self.data_config_.to_dict(), "head": dataclasses.asdict(self.head_config_),
            "seed": self.seed, "temperature": self.temperature_,
            "versions": {"imgtune": __version__, "torch": torch.__version__, "timm": _timm_version(),
                         "python": platform.python_version()}})
        if getattr(self, "metrics_", None):
            run.write_metrics(self.metrics_)
        if getattr(self, "history_", None):
            run.write_history(self.history_)
        return run.path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto", quiet: bool = False,
             runtime: str = "torch") -> "ImageClassifier":
        """A run folder -> a ready classifier. Only JSON, safetensors and (with runtime="onnx" or
        "onnx-int8") ONNX are read; nothing is unpickled."""
        run = RunFolder(path)
        cfg = run.read_config()
        try:
            classes, data_config, seed = _checked_config(cfg)
            head_cfg = HeadConfig(**cfg["head"])
            name = str(cfg["backbone"])
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise RunFolderError(f"{str(run.config)!r} is incomplete or malformed ({type(e).__name__}: {e}).") from None
        if runtime == "torch":
            model = _torch_model(run, name, head_cfg, classes)
        elif runtime in ("onnx", "onnx-int8"):
            model = _onnx_model(run, runtime, classes, data_config.image_size)
            device = "cpu"
        else:
            raise ConfigError(f"Unknown runtime {runtime!r}: expected torch, onnx or onnx-int8.")
        clf = cls(name, seed=seed, device=device, quiet=quiet)
        clf.classes_ = classes
        clf.data_config_ = data_config
        clf.head_config_ = head_cfg
        clf.metric_ = str((cfg.get("recipe") or {}).get("metric", "accuracy"))
        clf.device_ = rt.resolve_device(device)
        clf.model_ = model.to(clf.device_).eval()
        clf.run_dir_ = run.path
        try:
            clf.temperature_ = float(cfg.get("temperature", 1.0))
        except (TypeError, ValueError):
            clf.temperature_ = float("nan")
        if not MIN_TEMPERATURE <= clf.temperature_ <= MAX_TEMPERATURE:  # NaN fails too
            raise RunFolderError(f"{str(run.config)!r} has temperature {cfg.get('temperature')!r}: expected a "
                                 f"number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}.")
        clf.fit_info_ = {k: cfg[k] for k in ("weights", "recipe", "data", "counts", "class_counts", "skipped",
                                             "head_selection", "finetune", "decision", "calibration", "seconds")
                         if k in cfg}
        clf.runtime_ = runtime
        return clf

    # ---------------------------------------------------------------------- evaluate / predict
    def evaluate(self, data: str | os.PathLike, *, tta: bool = False) -> dict:
        """metrics.json for every labelled image under `data` (its test split when it has one). With `tta`,
        each image's prediction averages flipped and zoomed views, and "tta" says what that gained."""
        self._require_fitted()
        manifest = labelled_files(data, self.classes_)
        bad: list[tuple[str, str]] = []
        logits, y, kept = self._logits_for(manifest.items, Reporter(self.quiet), tta=tta, bad=bad)
        skipped = manifest.skipped + bad
        if not len(y):
            raise DataError(f"None of the {len(manifest.items)} images in {manifest.source!r} could be decoded.")
        return {**self._metrics(logits, y, kept), "source": manifest.source,
                "skipped": [{"path": p, "reason": r} for p, r in skipped]}

    def _metrics(self, logits: np.ndarray, y: np.ndarray, paths: list[str]) -> dict:
        probs, single = self._probabilities(logits)
        views = logits if logits.ndim == 3 else logits[:, None]
        return {**metrics_lib.evaluate(y, probs, self.classes_, paths=paths,
                                       uncalibrated=softmax(views).mean(axis=1),
                                       single_view=single if logits.ndim == 3 else None),
                "temperature": self.temperature_}

    def _probabilities(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits [N, K] or per view [N, V, K] -> (calibrated probabilities averaged over the views,
        those of the first, plain view alone)."""
        views = logits if logits.ndim == 3 else logits[:, None]
        p = softmax(views, self.temperature_)
        return p.mean(axis=1), p[:, 0]

    def predict(self, inputs, *, top_k: int = 5, tta: bool = False,
                min_confidence: float | None = None) -> list[dict]:
        """Paths (files or folders), PIL images or HxWxC uint8 arrays -> one dict per image:
        {"path", "label", "probability", "top_k": [(label, probability), ...]}, with calibrated
        probabilities. With `min_confidence`, an image whose top probability is below it is labelled
        "unknown" (its top_k still lists the classes). Files that cannot be decoded are left out and
        listed in `self.skipped_`."""
        if min_confidence is not None and not 0 <= min_confidence <= 1:
            raise ConfigError(f"--min-confidence must be from 0 to 1; received {min_confidence}.")
        self._require_fitted()
        if _is_path(inputs) or not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        groups: list[list[str] | None] = []  # per input: its image files, or None for an in-memory image
        skipped: list[tuple[str, str]] = []
        for x in inputs:
            if _is_path(x):
                files, missing = image_files([x])  # each folder is walked once
                groups.append(files)
                skipped += missing
            else:
                groups.append(None)
        logits, kept, bad = self._infer([f for g in groups if g for f in g], Reporter(self.quiet), tta=tta)
        by_path = dict(zip(kept, self._probabilities(logits)[0]))
        images = [x for x, g in zip(inputs, groups) if g is None]
        if images:
            tf = TTAViews(self.data_config_) if tta else eval_transform(self.data_config_)
            batch = torch.stack([tf(_as_pil(im)) for im in images]).to(self.device_)
            with torch.inference_mode():
                image_probs = iter(self._probabilities(EachView(self.model_)(batch).cpu().numpy())[0])
        rows = []  # in the order given; a folder contributes its files in sorted order
        for i, g in enumerate(groups):
            if g is None:
                rows.append((f"<image {i}>", next(image_probs)))
            else:
                rows += [(f, by_path[f]) for f in g if f in by_path]
        self.skipped_ = skipped + bad
        k = max(1, min(top_k, len(self.classes_)))
        out = []
        for path, p in rows:
            order = np.argsort(-p, kind="stable")[:k]
            unknown = min_confidence is not None and p[order[0]] < min_confidence
            out.append({"path": path, "label": UNKNOWN if unknown else self.classes_[order[0]],
                        "probability": float(p[order[0]]),
                        "top_k": [(self.classes_[j], float(p[j])) for j in order]})
        return out

    def _logits_for(self, items, rep: Reporter, *, tta: bool = False, bad: list | None = None, network=None
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Labelled items -> (logits, labels, paths) for those that decoded; the others are added to `bad`."""
        logits, kept, failed = self._infer([it.path for it in items], rep, tta=tta, network=network)
        if bad is not None:
            bad += failed
        label = {it.path: it.label for it in items}
        return logits, np.array([label[p] for p in kept], dtype=int), kept

    def _infer(self, paths: list[str], rep: Reporter, *, tta: bool = False, network=None
               ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """Image files -> (logits [N, K], or [N, V, K] with `tta`; the paths they belong to;
        [(bad path, reason)]). `network` stands in for the model when it computes the same logits faster."""
        transform = TTAViews(self.data_config_) if tta else eval_transform(self.data_config_)
        outputs, bad = run_network(EachView(network or self.model_), paths, transform, self.data_config_.image_size,
                                   device=self.device_, reporter=rep, description="Predicting")
        order = sorted(outputs)
        shape = (0, len(TTAViews.names), len(self.classes_)) if tta else (0, len(self.classes_))
        logits = np.stack([outputs[i] for i in order]) if order else np.zeros(shape)
        return logits, [paths[i] for i in order], sorted(bad.items())

    def _require_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RunFolderError("This ImageClassifier is not trained yet: call fit(...) or ImageClassifier.load(RUN).")


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
    from .model.onnx_module import OnnxModule

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


def _unfrozen(backbone: torch.nn.Module, unfreeze: int, name: str) -> set[str]:
    """Names of the backbone parameters in its last `unfreeze` block groups."""
    groups = param_groups(backbone)
    if not 1 <= unfreeze <= len(groups):
        raise ConfigError(f"unfreeze must be 1 to {len(groups)} for {name}; received {unfreeze}.")
    return {n for g in groups[-unfreeze:] for n in g}


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def _refuse_run_inside_data(run: RunFolder, data) -> None:
    """A run folder inside a folder of class folders would be read as a class by the next train."""
    root = Path(str(data)).resolve()
    if root.is_dir() and run.path.resolve().is_relative_to(root):
        raise RunFolderError(f"--out {str(run.path)!r} is inside the data folder {str(data)!r}: the next "
                             "train on that data would read the run as a class. Choose an --out outside it.")


def _data_identity(source: str) -> str:
    """What a resumed run checks it is given the same data by: the data's absolute path."""
    return str(Path(source).resolve())


def _check_same_classes(manifest: Manifest, source: str, seed: int) -> None:
    """--resume with the same DATA: its classes now must be the run's (the split is the run's own)."""
    try:
        now = find_images(source, seed=seed).classes
    except DataError as e:
        raise DataError(f"--resume: the data cannot be read as it was when the run started: {e}") from None
    if now != manifest.classes:
        raise ConfigError(f"--resume: {source!r} now has classes {now}, the interrupted run {manifest.classes}; "
                          "resume with the data the run started on, or start a new --out.")


def _check_same_settings(run: RunFolder, settings: dict) -> None:
    """A resumed run must train as the interrupted one did, or its checkpoints mean something else."""
    path = run.checkpoints / "settings.json"
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        raise RunFolderError(f"--resume: {str(path)!r} is missing or unreadable; start a new run.") from None
    now = json.loads(json.dumps(settings))  # tuples become lists, as they were when saved
    # "data" is compared where the interrupted run recorded it (runs from before it did not)
    diff = [k for k in now if before.get(k) != now[k] and (k != "data" or k in before)]
    if diff:
        raise ConfigError(f"--resume: settings differ from the interrupted run ({', '.join(diff)}); "
                          "resume with the same flags, or start a new --out.")


def _as_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return to_rgb(image)
    try:
        arr = np.asarray(image)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.dtype == object:
        raise DataError(f"Expected a path, a PIL image or an HxW / HxWxC uint8 array; received "
                        f"{type(image).__name__}.")
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        raise DataError(f"Expected channels last (HxWxC); received shape {arr.shape}, which looks like CxHxW: "
                        "pass array.transpose(1, 2, 0).")
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise DataError(f"Expected an HxW or HxWxC (C = 1, 3 or 4) uint8 array; received dtype {arr.dtype}, "
                        f"shape {arr.shape}.")
    if arr.size == 0:
        raise DataError(f"Expected an image with pixels; received an empty array of shape {arr.shape}.")
    if arr.ndim == 3 and arr.shape[-1] == 1:  # one channel: grey
        arr = arr[..., 0]
    return to_rgb(Image.fromarray(arr))


def _timm_version() -> str:
    import timm

    return timm.__version__
