"""`imgtune suggest`: the unlabelled images a run would learn most from, ranked (next_images.py), with
the calibrated predictions that make them uncertain and the near-duplicates left out."""

from __future__ import annotations

import csv
import os

import numpy as np
import torch

from ..atomic import write_csv_atomic
from ..cache.features import default_cache_dir, frozen_features
from ..cache.image_hashes import perceptual_hashes
from ..data.scan import image_files
from ..errors import DataError
from ..infer.predictor import calibrated, infer
from ..progress import Reporter
from ..runs.folder import RunFolder
from .next_images import rank_for_labelling


def labelled_paths(trained) -> list[str]:
    """The images the run was trained, validated and tested on (its split.csv), as absolute paths."""
    split = RunFolder(trained.run_dir).split if trained.run_dir else None
    if split is None or not split.is_file():
        return []
    with open(split, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [os.path.abspath(row["path"]) for row in csv.DictReader(f)]


def suggest(trained, inputs: list[str], n: int, *, uncertainty: str = "margin", cache_dir=None,
            reporter: Reporter | None = None) -> dict:
    """Rank the images under `inputs` (files or folders; the run's own labelled images among them are
    left out) -> {"rows": the n chosen, best first, "duplicates": those set aside, "skipped", "n_candidates"}."""
    reporter = reporter or Reporter(quiet=True)
    files, skipped = image_files(inputs)
    labelled = labelled_paths(trained)
    known = set(labelled)
    files = [f for f in files if os.path.abspath(f) not in known]
    if not files:
        raise DataError(f"Found no unlabelled images in {' '.join(map(str, inputs))} (the run's own images are "
                        "left out).")
    everything = labelled + files
    feats, bad, digests = frozen_features(trained, everything, cache_dir=cache_dir, reporter=reporter)
    hashes, hashed = perceptual_hashes(everything, digests, cache_dir or default_cache_dir(), reporter)
    usable = ~np.isnan(feats).any(axis=1) & hashed
    lab_ok, ok = usable[:len(labelled)], usable[len(labelled):]
    lab_paths, lab, lab_hashes = ([p for p, k in zip(labelled, lab_ok) if k], feats[:len(labelled)][lab_ok],
                                  hashes[:len(labelled)][lab_ok])
    files, cand, cand_hashes = ([f for f, k in zip(files, ok) if k], feats[len(labelled):][ok],
                                hashes[len(labelled):][ok])
    skipped += [(p, r) for p, r in bad.items() if p not in known]
    if not files:
        raise DataError("None of the unlabelled images could be decoded.")
    probs = _probabilities(trained, files, cand, reporter)
    multi = trained.task == "multi"
    ranking = rank_for_labelling(_binary_margin_input(probs) if multi else probs, cand, lab, n,
                                 kind="margin" if multi else uncertainty, hashes=cand_hashes,
                                 labelled_hashes=lab_hashes)
    rows = []
    for rank, i in enumerate(ranking.chosen, 1):
        order = np.argsort(-probs[i], kind="stable")
        rows.append({"rank": rank, "path": files[i], "predicted": trained.classes[order[0]],
                     "probability": float(probs[i, order[0]]), "second": trained.classes[order[1]],
                     "probability_second": float(probs[i, order[1]]),
                     "uncertainty": float(ranking.uncertainty[i]), "distance": ranking.distance[i]})
    dupes = [{"path": files[i], "of": kind, "duplicates": files[j] if kind == "chosen" else lab_paths[j]}
             for i, (kind, j) in sorted(ranking.duplicates.items())]
    return {"rows": rows, "duplicates": dupes, "skipped": skipped, "n_candidates": len(files),
            "n_labelled": len(lab_paths), "uncertainty": "binary margin of the least sure label" if multi
            else uncertainty}


def _probabilities(trained, files: list[str], feats: np.ndarray, reporter: Reporter) -> np.ndarray:
    """Calibrated probabilities of the run's model: from the cached features where the model is the
    head on the unchanged backbone (fine-tuning not kept), else from the images."""
    tuned = (trained.fit_info.get("finetune") or {}).get("kept", True)
    if trained.runtime == "torch" and not tuned:
        model = trained.model
        with torch.inference_mode():
            z = model.head.eval()(torch.from_numpy(feats).to(trained.device)) + model.offsets
        return calibrated(trained, z.cpu().numpy())[0]
    logits, kept, _ = infer(trained, files, reporter)
    by_path = dict(zip(kept, calibrated(trained, logits)[0]))
    return np.stack([by_path[f] for f in files])


def _binary_margin_input(probs: np.ndarray) -> np.ndarray:
    """Multi-label probabilities -> two-column rows (p, 1 - p) of each image's least sure label, whose
    margin is that label's: 1 - |2p - 1|."""
    j = np.abs(probs - 0.5).argmin(axis=1)
    p = probs[np.arange(len(probs)), j]
    return np.stack([p, 1 - p], axis=1)


CSV_COLUMNS = ("rank", "path", "predicted", "probability", "second", "probability_second", "uncertainty", "distance")


def write_suggestions(result: dict, output) -> None:
    """The chosen images as CSV, best first (the columns above; distance: 1 - cosine similarity to the
    nearest labelled or earlier-chosen image)."""
    write_csv_atomic(output, CSV_COLUMNS, ([r["rank"], r["path"], r["predicted"], f"{r['probability']:.6f}",
                                            r["second"], f"{r['probability_second']:.6f}",
                                            f"{r['uncertainty']:.6f}", f"{r['distance']:.6f}"]
                                           for r in result["rows"]))
