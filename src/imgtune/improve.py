"""The improvement loop after a run: retrain it with a person's corrections (reusing every cache), and
compare two runs on the same images to see, per class, whether it helped.

    retrain(RUN)                 RUN's command again, on its data, with RUN/corrections.csv applied
    compare(RUN_A, RUN_B, DATA)  both models on DATA (default: the runs' own test split, when the same)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from .errors import DataError, RunFolderError
from .runs.folder import RunFolder, latest_run_folder, next_run_folder


class DifferentImages(DataError):
    """The two runs' own test splits are not the same images with the same labels."""


def recorded(run_a: str | os.PathLike, run_b: str | os.PathLike) -> list[dict]:
    """Each run's own record of its evaluated split (metrics.json): what can be said without TEST_DATA
    when the two were judged on different images."""
    out = []
    for run in (RunFolder(run_a), RunFolder(run_b)):
        try:
            m = json.loads(run.metrics.read_text())
        except (OSError, ValueError):
            raise RunFolderError(f"{str(run.path)!r} holds no readable metrics.json.") from None
        out.append({"run": str(run.path), "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
                    "n_images": m.get("n_images"), "split": m.get("split")})
    return out


def run_settings(run: RunFolder) -> dict:
    """What the run was trained with (checkpoints/settings.json) and what it chose (config.json)."""
    try:
        settings = json.loads((run.checkpoints / "settings.json").read_text())
        config = json.loads(run.config.read_text())
    except (OSError, ValueError):
        raise RunFolderError(f"{str(run.path)!r} is not a finished run folder (its config.json and "
                             "checkpoints/settings.json are needed).") from None
    return {**settings, "chosen_backbone": config.get("backbone", settings.get("backbone")),
            "chosen_image_size": (config.get("data_config") or {}).get("image_size"),
            "chosen_augment": (config.get("augment") or {}).get("chosen"),
            "chosen_head": _chosen_head(config), "cache": config.get("cache"), "classes": config.get("classes") or [],
            "kept_finetuning": bool((config.get("finetune") or {}).get("kept"))}


def _chosen_head(config: dict) -> tuple[tuple[float, str], ...]:
    """The (C, class weighting) the run's head selection chose, and its plain logistic-regression probe's
    where that is another (the baseline every run is held against): () for a run without a selection."""
    from .train.selection import probe_of

    selection = config.get("head_selection") or {}
    chosen = selection.get("candidate")
    if not chosen:
        return ()
    pairs = [(float(chosen["c"]), str(chosen["weighting"]))]
    probe = probe_of(selection.get("table") or [])
    if probe is not None and (probe.c, probe.weighting) not in pairs:
        pairs.append((float(probe.c), probe.weighting))
    return tuple(pairs)


def retrain_epochs(recipe_epochs: int, continuing: bool = False) -> int:
    """A retrain's default fine-tune epochs: half the recipe's, a quarter where it continues from the
    run's fine-tuned model (at a tenth of the rate: train/finetune.py, CONTINUED_RATE), at least one
    where the recipe fine-tunes. The head and the cached trunk views are reused, so fine-tuning is most of
    a retrain's time."""
    return max(1, recipe_epochs // (4 if continuing else 2)) if recipe_epochs else 0


def new_classes(corrections: Path, classes: list[str]) -> list[str]:
    """The classes the corrections relabel images into that `classes` lacks."""
    from .data.corrections import latest, read_corrections

    return sorted({c.label for c in latest(read_corrections(corrections)).values()
                   if c.action == "relabel" and c.label not in classes})


def retrain(run: str | os.PathLike, out: str | os.PathLike | None = None, *,
            corrections: str | os.PathLike | None = None, allow_new_classes: bool = False, resume: bool = False,
            say=print, **settings):
    """The run's training again, into `out` (default RUN-retrain, -retrain-2, ...), with `corrections`
    (default RUN/corrections.csv) applied: the same data, seed and recipe, and what the run chose from the
    data (backbone, image size, augmentation, the head's C and class weighting and its probe's C), so every
    image keeps its split and the feature cache and trunk views (keyed by content) are reused. Where the
    run kept its fine-tuning (and the corrections add no class), fine-tuning continues from its model, whose
    blocks are adapted to these images already, for a quarter of the recipe's epochs at a tenth of its rate
    (on the digits 80 % of the accuracy the noise cost back in one epoch; BENCHMARKS.md, "A retrain
    continues at a tenth of the rate"); otherwise it starts from the head for half the recipe's epochs.
    `epochs` says otherwise; 0 fits the head alone, in seconds. Either way the stage is judged against the
    head again (train/keep.py): a run whose noisy labels made its head win may fine-tune well once they
    are corrected, and a continued model gives way to a head that beats it by more than the noise.
    `settings`: any other of ImageClassifier's parameters to change (device, cache_dir, quiet, ...; None
    keeps the run's). `say` hears what was reused. -> the fitted ImageClassifier."""
    from .classifier import ImageClassifier
    from .config import Recipe, with_overrides

    source = RunFolder(run)
    s = run_settings(source)
    recipe = Recipe.from_dict(s["recipe"])
    if s["chosen_augment"] and recipe.finetune.augment == "auto":
        recipe = with_overrides(recipe, augment=s["chosen_augment"])
    if s["chosen_head"] and recipe.head.kind == "logistic":  # their out-of-fold predictions are fitted again
        recipe = dataclasses.replace(recipe, head=dataclasses.replace(recipe.head, candidates=s["chosen_head"]))
    if s["kept_finetuning"]:  # its blocks are adapted to these images already: fine-tuning continues from them
        recipe = dataclasses.replace(recipe, finetune=dataclasses.replace(recipe.finetune,
                                                                          start_from=str(source.path.resolve())))
    corrections = Path(corrections) if corrections is not None else source.corrections
    if not corrections.is_file():
        raise DataError(f"No corrections to retrain with: {str(corrections)!r} does not exist. Make them with "
                        f"`imgtune review {source.path}`, or give --corrections FILE.csv.")
    continuing = s["kept_finetuning"] and not new_classes(corrections, s["classes"])
    params = {"recipe": recipe, "image_size": s["chosen_image_size"],
              "epochs": retrain_epochs(recipe.finetune.epochs, continuing), "seed": s["seed"], "weights": s["weights"],
              "task": s.get("data_task"), "cache_dir": s.get("cache"), "time_limit": s.get("time_limit"),
              **{k: v for k, v in settings.items() if v is not None}}
    say(f"Retrain of {source.path}: {s['chosen_backbone']} at {s['chosen_image_size']} px, augmentation "
        f"{recipe.finetune.augment}, {params['epochs']} fine-tune epochs"
        f"{' continuing from its fine-tuned model at a tenth of the rate' if continuing and params['epochs'] else ''} "
        f"(--epochs 0: the head alone, in seconds), with {corrections}.")
    if out is None:
        base = f"{source.path}-retrain"
        out = latest_run_folder(base) if resume else next_run_folder(base)
        if out is None:
            raise RunFolderError(f"--resume: no {base}* folder to continue; give --out NEW_RUN.")
    clf = ImageClassifier(s["chosen_backbone"], **params)
    return clf.fit(s["data"], out=out, resume=resume, corrections=corrections, allow_new_classes=allow_new_classes)


def compared_images(a: RunFolder, b: RunFolder, classes: list[str], data: str | None):
    """The labelled images both runs are judged on -> (paths, labels as class names, note). Without
    `data`, each run's own test split (else validation) from its split.csv: the same images with the
    same labels, or a DataError saying how they differ."""
    from .data.scan import labelled_files

    if data is not None:
        m = labelled_files(data, classes)
        return [it.path for it in m.items], [m.classes[it.label] for it in m.items], f"the images of {m.source}"
    sides = []
    for run in (a, b):
        rows = _split_rows(run)
        sides.append(rows)
    if sides[0] != sides[1]:
        only_a, only_b = set(sides[0]) - set(sides[1]), set(sides[1]) - set(sides[0])
        relabelled = sum(sides[0][p] != sides[1][p] for p in set(sides[0]) & set(sides[1]))
        raise DifferentImages(f"The two runs were evaluated on different images ({len(only_a):,} only in A's, "
                              f"{len(only_b):,} only in B's, {relabelled:,} labelled differently): give TEST_DATA "
                              "to compare them image by image.")
    paths = sorted(sides[0])
    return paths, [sides[0][p] for p in paths], "the runs' common test split"


def _split_rows(run: RunFolder) -> dict[str, str]:
    """{path: label} of the run's evaluated split (test, else val) from its split.csv."""
    rows = run.read_split()
    wanted = "test" if any(r.get("split") == "test" for r in rows) else "val"
    return {r["path"]: r["label"] for r in rows if r.get("split") == wanted}


def compare(run_a: str | os.PathLike, run_b: str | os.PathLike, data: str | None = None, *,
            device: str = "auto", quiet: bool = False) -> dict:
    """Both runs' predictions on the same labelled images -> the comparison document (infer/compare.py)
    with "a", "b" (the run folders), "images" (what they were judged on) and "seconds"."""
    import time

    from .infer import predictor
    from .infer.compare import compare as compare_predictions
    from .progress import Reporter
    from .runs.trained import load_run

    started = time.perf_counter()
    a, b = RunFolder(run_a), RunFolder(run_b)
    models = [load_run(r.path, device=device) for r in (a, b)]
    if any(m.task == "multi" for m in models):
        raise DataError("compare takes single-label runs; a multi-label run's figures are in its metrics.json.")
    classes = list(models[0].classes) + [c for c in models[1].classes if c not in models[0].classes]
    paths, labels, what = compared_images(a, b, classes, data)
    reporter = Reporter(quiet)
    preds, kept = [], None
    for m in models:
        logits, ok, _ = predictor.infer(m, paths, reporter)
        by_path = dict(zip(ok, (m.classes[j] for j in logits.argmax(1)))) if len(ok) else {}
        kept = [p for p in (kept if kept is not None else paths) if p in by_path]
        preds.append(by_path)
    if not kept:
        raise DataError(f"None of the {len(paths):,} images could be decoded.")
    label_of = dict(zip(paths, labels))
    index = {c: j for j, c in enumerate(classes)}
    y = np.array([index[label_of[p]] for p in kept])
    pa, pb = (np.array([index[p_[p]] for p in kept]) for p_ in preds)
    doc = compare_predictions(y, pa, pb, classes, kept)
    return {"a": str(a.path), "b": str(b.path), "images": what, **doc,
            "seconds": round(time.perf_counter() - started, 2)}
