"""The data audit behind `imgtune inspect`: what is in a data set and what is wrong with it, found by
reading every file once. Nothing here writes, moves or changes an input file.

Looks for: images per class and split, class imbalance, unreadable files (with the reason), odd files
(wrong extension, unusual modes, animations; and, from the pixels, very dark, very light, low-information
and blurry images and odd aspect ratios: data/quality.py), tiny images, exact duplicates (SHA-256 of
the bytes) and near duplicates (perceptual hash) within and across splits (leakage between train and
test), and, given a trained run, images whose label looks wrong to a head that never saw them
(out-of-fold probabilities on the run's cached features, then confident learning).

Multi-label data (a set of labels per file, possibly empty) is counted once per label of an image, and
gets a section of its own: labels per image, rare labels and which labels come together.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data import quality
from .data.images import MAX_PIXELS, BadImage, decode_rgb, read_bytes
from .data.manifest import Manifest
from .data.near_duplicates import NEAR_DISTANCE, near_pairs, phash_int
from .data.scan import find_images
from .progress import Reporter

RARE_IMAGES = 10  # a label on fewer images than this is rare (multi-label data)
RARE_SHARE = 0.01  # ... or on under this share of the usable images
TOP_PAIRS = 20  # label pairs listed by co-occurrence
_EXTENSION_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF",
                      ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM"}


@dataclass
class FileFacts:
    path: str
    label: str
    split: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    problem: str = ""  # why the file cannot be used; "" when it can
    odd: tuple[tuple[str, str], ...] = ()  # (kind, reason): file oddities, then quality.RULES that fired
    quality: dict = field(default_factory=dict)  # quality.measure: the numbers the quality rules read
    phash: int | None = None
    label_ids: tuple[int, ...] = ()  # multi-label data: the indices of the file's labels (label: their names)


def audit(source: str | os.PathLike, *, classifier=None, run_split: str | os.PathLike | None = None,
          min_side: int = 32, near_distance: int = NEAR_DISTANCE, reporter: Reporter | None = None,
          cache_dir=None) -> dict:
    """Everything `inspect` reports, as one JSON-able document.

    `classifier` (a fitted ImageClassifier) adds likely label errors, found out of fold on its backbone's
    cached features (in `cache_dir`, default the user's feature cache); `run_split` (a run's split.csv)
    tells which split each file was in when the data did not name its splits.
    """
    return audit_manifest(find_images(source), classifier=classifier, run_split=run_split, min_side=min_side,
                          near_distance=near_distance, reporter=reporter, cache_dir=cache_dir)


def audit_manifest(manifest: Manifest, *, classifier=None, run_split: str | os.PathLike | None = None,
                   min_side: int = 32, near_distance: int = NEAR_DISTANCE,
                   reporter: Reporter | None = None, cache_dir=None) -> dict:
    """`audit` of the files a scan found: single-label (one class per file) or multi-label
    (`manifest.task == "multi"`), which adds a "multilabel" section and skips the label-error check."""
    reporter = reporter or Reporter(quiet=True)
    multi = getattr(manifest, "task", "single") == "multi"
    splits = _splits(manifest, run_split)
    facts = []
    with reporter.bar("Checking files", len(manifest.items)) as advance:
        for it in manifest.items:
            facts.append(_look_at(it.path, _label_text(manifest, it, multi), splits.get(it.path, "all")))
            if multi:
                facts[-1].label_ids = tuple(sorted(set(it.labels)))
            advance()
    usable = [f for f in facts if not f.problem]
    counts = _label_counts(usable, manifest.classes, multi)
    reference = counts.get("train") or {c: sum(per.get(c, 0) for per in counts.values()) for c in manifest.classes}
    doc = {
        "source": manifest.source,
        "classes": manifest.classes,
        "n_files": len(manifest.items) + len(manifest.skipped),
        "n_usable": len(usable),
        "splits_from": ("the data's own split folders or CSV column" if manifest.splits_given
                        else "the run's split.csv" if splits else "none: the whole data set is one split"),
        "counts": {s: counts[s] for s in sorted(counts, key=_split_order)},
        "imbalance_ratio": (max(reference.values()) / min(reference.values())
                            if reference and min(reference.values()) > 0 else None),
        "empty_classes": [c for c in manifest.classes if not any(per.get(c) for per in counts.values())],
        "unreadable": [{"path": f.path, "reason": f.problem} for f in facts if f.problem]
                      + [{"path": p, "reason": r} for p, r in manifest.skipped],
        "odd": [{"path": f.path, "reasons": [r for _, r in f.odd], "kinds": [k for k, _ in f.odd],
                 "measures": f.quality} for f in usable if f.odd],
        "quality_rules": [rule.as_dict() for rule in quality.RULES],
        "tiny": [{"path": f.path, "width": f.width, "height": f.height} for f in usable
                 if min(f.width, f.height) < min_side],
        "min_side": min_side,
        "exact_duplicates": _describe(_exact_groups(usable), usable),
        "near_duplicates": _describe(_near_groups(usable, near_distance), usable),
        "near_distance": near_distance,
    }
    # leakage: the same picture in train and in val or test, where it flatters the score
    doc["leakage"] = {kind: sum("train" in g["splits"] and len(set(g["splits"])) > 1 for g in doc[kind])
                      for kind in ("exact_duplicates", "near_duplicates")}
    if multi:
        doc["task"] = "multi"
        doc["multilabel"] = _multilabel(usable, manifest.classes)
        if classifier is not None:
            doc["label_issues_skipped"] = ("Likely label errors are looked for in single-label data only: a "
                                           "multi-label file's labels are not one class that a classifier "
                                           "can find unlikely.")
    elif classifier is not None:
        found = _label_issues(classifier, usable, cache_dir, reporter)
        doc["label_issues"], doc["label_issues_method"] = found["rows"], found["method"]
        doc["label_issues_judged"] = found["judged"]
    return doc


def _label_text(manifest: Manifest, it, multi: bool) -> str:
    """A file's label as the document shows it: its class, or (multi-label) its label names joined by ";"
    in label order, "" for none (as the CSV writes them)."""
    if not multi:
        return manifest.classes[it.label]
    return ";".join(manifest.classes[j] for j in sorted(set(it.labels)))


def _label_counts(usable: list[FileFacts], classes: list[str], multi: bool) -> dict[str, dict[str, int]]:
    """Images per class (multi-label: per label, an image counted once for each of its labels) per split."""
    counts: dict[str, dict[str, int]] = {}
    for f in usable:
        per = counts.setdefault(f.split, {c: 0 for c in classes})
        if multi:
            for j in f.label_ids:
                per[classes[j]] += 1
        else:
            per[f.label] += 1
    return counts


def _multilabel(usable: list[FileFacts], classes: list[str]) -> dict:
    """The "multilabel" section: labels per image (overall and per split), rare labels, co-occurrence."""
    y = np.zeros((len(usable), len(classes)), dtype=np.int64)
    for i, f in enumerate(usable):
        y[i, list(f.label_ids)] = 1
    split_of = np.array([f.split for f in usable], dtype=object)
    in_split = {s: split_of == s for s in sorted(set(split_of.tolist()), key=_split_order)}
    return {"cardinality": _cardinality(y), "by_split": {s: _cardinality(y[m]) for s, m in in_split.items()},
            "rare_labels": _rare_labels(y, classes, in_split),
            "rare_rule": {"min_images": RARE_IMAGES, "min_share": RARE_SHARE},
            "cooccurrence": _cooccurrence(y, classes)}


def _cardinality(y: np.ndarray) -> dict:
    """Labels per image of the 0/1 rows `y`: the mean, the most, and how many images carry 0, 1, 2, 3+."""
    per_image = y.sum(axis=1)
    return {"images": len(y), "mean": float(per_image.mean()) if len(y) else 0.0,
            "max": int(per_image.max()) if len(y) else 0,
            "images_with": {"0": int((per_image == 0).sum()), "1": int((per_image == 1).sum()),
                            "2": int((per_image == 2).sum()), "3+": int((per_image >= 3).sum())}}


def _rare_labels(y: np.ndarray, classes: list[str], in_split: dict[str, np.ndarray]) -> list[dict]:
    """Labels on fewer than RARE_IMAGES images or under RARE_SHARE of them, rarest first, with their count
    per split (`in_split`: a mask of the rows of y per split; a label absent from val or test cannot be
    measured there)."""
    n = len(y)
    totals = y.sum(axis=0)
    per_split = {s: y[m].sum(axis=0) for s, m in in_split.items()}
    out = []
    for j in sorted(range(len(classes)), key=lambda j: (int(totals[j]), classes[j])):
        images, share = int(totals[j]), (float(totals[j]) / n if n else 0.0)
        if images < RARE_IMAGES or share < RARE_SHARE:
            out.append({"label": classes[j], "images": images, "share": share,
                        "by_split": {s: int(v[j]) for s, v in per_split.items()}})
    return out


def _cooccurrence(y: np.ndarray, classes: list[str]) -> dict:
    """Images carrying both labels (K x K; the diagonal: the label's images), the conditional rates
    P(column | row) = counts[r][c] / counts[r][r] (None for a label on no image), and the TOP_PAIRS pairs
    of distinct labels seen together most often."""
    counts = y.T @ y
    k = len(classes)
    conditional = [[float(counts[r, c] / counts[r, r]) if counts[r, r] else None for c in range(k)]
                   for r in range(k)]
    pairs = [(int(counts[a, b]), a, b) for a in range(k) for b in range(a + 1, k) if counts[a, b]]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    top = [{"a": classes[a], "b": classes[b], "images": n, "p_b_given_a": conditional[a][b],
            "p_a_given_b": conditional[b][a]} for n, a, b in pairs[:TOP_PAIRS]]
    return {"counts": counts.astype(int).tolist(), "conditional": conditional, "top_pairs": top,
            "pairs_seen": len(pairs)}


def _split_order(split: str) -> int:
    return ("train", "val", "test", "all").index(split) if split in ("train", "val", "test", "all") else 9


def _splits(manifest: Manifest, run_split) -> dict[str, str]:
    if manifest.splits_given:
        return {it.path: it.split for it in manifest.items}
    if run_split and Path(run_split).is_file():
        with open(run_split, newline="", encoding="utf-8", errors="surrogateescape") as f:
            given = {row["path"]: row["split"] for row in csv.DictReader(f)}
        found = {it.path: given.get(os.path.abspath(it.path), given.get(it.path)) for it in manifest.items}
        if any(found.values()):
            return {p: split for p, split in found.items() if split}
    return {}


def _look_at(path: str, label: str, split: str) -> FileFacts:
    f = FileFacts(path, label, split)
    try:
        data = read_bytes(path)
        f.sha256 = hashlib.sha256(data).hexdigest()
        rgb = decode_rgb(data, draft_size=256)  # every check decode_rgb makes, on the whole file
    except BadImage as e:
        f.problem = str(e)
        return f
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))  # the file's own header: size, mode, format, frames
        f.width, f.height = img.size
        odd = _oddities(path, img)
    f.quality, found = quality.check(rgb)  # on the pixels the model will see (the decoded, drafted copy)
    f.odd = tuple(odd + found)
    f.phash = phash_int(rgb)
    return f


def _oddities(path: str, img: Image.Image) -> list[tuple[str, str]]:
    """(kind, reason) for what the file's header says is unusual; what its pixels say is quality.check's."""
    out = []
    expected = _EXTENSION_FORMATS.get(os.path.splitext(path)[1].lower())
    if expected and img.format and img.format != expected and not (expected == "PPM" and img.format == "PPM"):
        out.append(("extension", f"named {os.path.splitext(path)[1]} but is a {img.format} file"))
    if img.mode not in ("RGB", "L"):
        detail = {"CMYK": "CMYK colours (print)", "I;16": "16-bit greys", "I": "32-bit integers",
                  "F": "floating-point pixels", "P": "a palette", "1": "1-bit black and white",
                  "RGBA": "an alpha channel", "LA": "an alpha channel"}.get(img.mode, img.mode)
        out.append(("mode", f"mode {img.mode} ({detail})"))
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        out.append(("frames", f"animated or multi-page ({frames} frames; the first is used)"))
    w, h = img.size
    if w * h > MAX_PIXELS // 4:
        out.append(("very_large", f"very large ({w}x{h}); decoded at reduced size"))
    return out


def _exact_groups(files: list[FileFacts]) -> list[list[int]]:
    by_hash: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_hash.setdefault(f.sha256, []).append(i)
    return [g for g in by_hash.values() if len(g) > 1]


def _near_groups(files: list[FileFacts], max_distance: int) -> list[list[int]]:
    """Groups of images within `max_distance` bits of the perceptual hash of the group's first image,
    exact copies of one another excluded. Groups form around a leader rather than by chaining, so a run
    of similar pictures (A near B near C ...) does not merge into one long group of things that do not
    look alike."""
    idx = [i for i, f in enumerate(files) if f.phash is not None]
    if len(idx) < 2:
        return []
    hashes = np.array([files[i].phash for i in idx], dtype=np.uint64)
    neighbours: dict[int, set[int]] = {}
    for a, b in near_pairs(hashes, max_distance):
        if files[idx[a]].sha256 != files[idx[b]].sha256:
            neighbours.setdefault(a, set()).add(b)
            neighbours.setdefault(b, set()).add(a)
    taken: set[int] = set()
    groups = []
    for a in sorted(neighbours, key=lambda k: (-len(neighbours[k]), k)):  # best-connected leaders first
        if a in taken:
            continue
        members = [a] + sorted(b for b in neighbours[a] if b not in taken)
        if len(members) > 1:
            taken.update(members)
            groups.append([idx[k] for k in members])
    return groups


def _describe(groups: list[list[int]], files: list[FileFacts]) -> list[dict]:
    out = []
    for g in sorted(groups, key=lambda g: (-len(g), files[g[0]].path)):
        labels = [files[i].label for i in g]
        splits = [files[i].split for i in g]
        out.append({"paths": [files[i].path for i in g], "labels": labels, "splits": splits,
                    "conflicting_labels": len(set(labels)) > 1, "across_splits": len(set(splits)) > 1})
    return out


def _label_issues(classifier, files: list[FileFacts], cache_dir=None, reporter: Reporter | None = None) -> dict:
    """Images whose given label looks wrong, each judged out of fold: the run's head fitted on the
    other folds of these images' cached features (diagnose/label_errors.py) -> {"method", "judged",
    "rows": least likely label first}. Files of classes the run does not know are not judged."""
    from .cache.features import frozen_features
    from .diagnose.label_errors import FOLDS, find_label_issues, label_issue_rows, out_of_fold_probabilities
    from .model.linear import head_candidate

    trained = classifier.trained_
    index = {c: i for i, c in enumerate(trained.classes)}
    known = [f for f in files if f.label in index]
    feats, _, _ = frozen_features(trained, [f.path for f in known], cache_dir=cache_dir, reporter=reporter)
    ok = ~np.isnan(feats).any(axis=1)
    known, feats = [f for f, k in zip(known, ok) if k], feats[ok]
    y = np.array([index[f.label] for f in known], dtype=int)
    if len(known) < 2 or len(np.unique(y)) < 2:
        return {"method": "none: fewer than two classes with images", "judged": len(known), "rows": []}
    with (reporter or Reporter(quiet=True)).bar("Label errors (out-of-fold heads)", FOLDS) as advance:
        probs, _ = out_of_fold_probabilities(feats, y, len(trained.classes), candidate=head_candidate(trained),
                                             advance=advance)
    rows, method = find_label_issues(probs, y)
    return {"method": method, "judged": len(known),
            "rows": label_issue_rows(probs, y, rows, [f.path for f in known], trained.classes,
                                     [f.split for f in known])}
