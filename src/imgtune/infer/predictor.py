"""A trained model's answers: calibrated probabilities, labels and metrics for image files, PIL images
and arrays. Reads a runs.trained.TrainedModel and changes nothing in it."""

from __future__ import annotations

import os

import numpy as np
import torch

from .. import metrics as metrics_lib
from ..data.datasets import ImageFiles
from ..data.images import to_rgb
from ..data.scan import image_files
from ..data.transforms import TTAViews, eval_transform
from ..errors import ConfigError, DataError, ParameterError
from ..model.forward import network_batches, run_network
from ..model.heads import EachView
from ..progress import Reporter
from ..runs.trained import with_torch
from . import explain, multilabel
from .calibration import softmax

UNKNOWN = "unknown"  # the label of an image below --min-confidence


class Predictions(list):
    """One dict per image (see `predict`), with `skipped`: [(path, reason)] for the files left out."""

    def __init__(self, rows, skipped):
        super().__init__(rows)
        self.skipped = skipped


def is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def infer(m, paths: list[str], reporter: Reporter, *, tta: bool = False, network=None
          ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Image files -> (logits [N, K], or [N, V, K] with `tta`; the paths they belong to;
    [(bad path, reason)]). `network` stands in for the model when it computes the same logits faster."""
    cfg = m.data_config
    transform = TTAViews(cfg) if tta else eval_transform(cfg)
    outputs, bad = run_network(EachView(network or m.model), ImageFiles(paths, None, transform, cfg.image_size),
                               device=m.device, reporter=reporter, description="Predicting")
    order = sorted(outputs)
    shape = (0, len(TTAViews.names), len(m.classes)) if tta else (0, len(m.classes))
    logits = np.stack([outputs[i] for i in order]) if order else np.zeros(shape)
    return logits, [paths[i] for i in order], sorted(bad.items())


def logits_for(m, items, reporter: Reporter, *, tta: bool = False, network=None
               ) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """Labelled items -> (logits, labels, paths) of those that decoded, and [(bad path, reason)]."""
    logits, kept, failed = infer(m, [it.path for it in items], reporter, tta=tta, network=network)
    return logits, targets_of(m, items, kept), kept, failed


def targets_of(m, items, paths: list[str]) -> np.ndarray:
    """The labels of `paths` among `items`: class indices [N], or 0/1 rows [N, K] for a multi-label model."""
    by_path = {it.path: it for it in items}
    if m.task != "multi":
        return np.array([by_path[p].label for p in paths], dtype=int)
    y = np.zeros((len(paths), len(m.classes)), np.float32)
    for i, p in enumerate(paths):
        y[i, list(by_path[p].labels)] = 1
    return y


def probabilities(logits: np.ndarray, temperature, multi: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, K] or per view [N, V, K] -> (calibrated probabilities averaged over the views, those
    of the first, plain view alone): softmax(logits / T), or with `multi` (multi-label) a sigmoid per
    label, sigmoid(logits / T_label)."""
    views = logits if logits.ndim == 3 else logits[:, None]
    p = multilabel.sigmoid(views / np.asarray(temperature)) if multi else softmax(views, temperature)
    return p.mean(axis=1), p[:, 0]


def calibrated(m, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`probabilities` as the model `m` reads its logits."""
    return probabilities(logits, m.temperature, m.task == "multi")


def metrics_of(m, logits: np.ndarray, y: np.ndarray, paths: list[str]) -> dict:
    """The metrics.json document of logits (per view with TTA) against labels (0/1 rows: multi-label)."""
    if m.task == "multi":
        return {**multilabel.evaluate(y, calibrated(m, logits)[0], m.thresholds, m.classes, paths=paths),
                "temperature": m.temperature}
    probs, single = probabilities(logits, m.temperature)
    views = logits if logits.ndim == 3 else logits[:, None]
    doc = metrics_lib.evaluate(y, probs, m.classes, paths=paths, uncalibrated=softmax(views).mean(axis=1),
                               single_view=single if logits.ndim == 3 else None)
    if doc.get("misclassified"):  # the report's gallery shows where each looked: gradients, so PyTorch
        twin = with_torch(m)
        if twin is not None:
            explain.explain_misclassified(twin, doc["misclassified"])
    return {**doc, "temperature": m.temperature}


def predict(m, inputs, *, top_k: int = 5, tta: bool = False, min_confidence: float | None = None,
            reporter: Reporter | None = None) -> Predictions:
    """Paths (files or folders), PIL images or HxWxC uint8 arrays -> one dict per image, in the order
    given (a folder's files in sorted order): {"path", "label", "probability", "top_k": [(label,
    probability), ...]}, calibrated. With `min_confidence`, an image whose top probability is below it
    is labelled "unknown" (its top_k still lists the classes). A multi-label model answers
    {"path", "labels", "probabilities"} (label_set_row). For more files than fit in memory: `stream`."""
    inputs = as_inputs(inputs)
    found = stream(m, [x for x in inputs if is_path(x)], top_k=top_k, tta=tta, min_confidence=min_confidence,
                   reporter=reporter)
    answers = [(i, r) for origins, rows in found.batches() for i, r in zip(origins, rows)]
    return assembled(m, inputs, answers, found.skipped, top_k=top_k, tta=tta, min_confidence=min_confidence)


def as_inputs(inputs) -> list:
    """What predict takes (one input or a list of them) as a list."""
    return [inputs] if is_path(inputs) or not isinstance(inputs, (list, tuple)) else list(inputs)


def assembled(m, inputs: list, answers: list[tuple[int, dict]], skipped, *, top_k: int = 5, tta: bool = False,
              min_confidence: float | None = None) -> Predictions:
    """The answers for the files found under the path inputs ((index among the paths, row), in the
    files' order) and those for the in-memory inputs, answered now -> the rows in the order of `inputs`."""
    _check_confidence(min_confidence)
    _check_top_k(top_k)
    per_path = [[] for x in inputs if is_path(x)]  # a file or a folder may give no rows, or many
    for i, r in answers:
        per_path[i].append(r)
    images = [x for x in inputs if not is_path(x)]
    image_rows, file_rows = iter(_image_rows(m, images, top_k, tta, min_confidence) if images else []), iter(per_path)
    out = []
    for i, x in enumerate(inputs):
        out += next(file_rows) if is_path(x) else [{**next(image_rows), "path": f"<image {i}>"}]
    return Predictions(out, skipped)


class stream:
    """Predictions for image files (folders searched recursively), made and handed out one batch at a
    time in the files' order, so that memory stays flat however many there are: iterate for lists of
    rows (as `predict` gives them). `share=(rank, world)` takes this process's contiguous share of the
    files (torchrun). `n_files` counts the files of the share; `skipped` lists [(path, reason)] and fills
    as the batches go by."""

    def __init__(self, m, paths: list, *, top_k: int = 5, tta: bool = False, min_confidence: float | None = None,
                 reporter: Reporter | None = None, share: tuple[int, int] = (0, 1)):
        _check_confidence(min_confidence)
        _check_top_k(top_k)
        self.m, self.top_k, self.tta, self.min_confidence = m, top_k, tta, min_confidence
        self.reporter = reporter or Reporter(quiet=True)
        self.files, self._origin, self.skipped = [], [], []
        for i, p in enumerate(paths):
            files, missing = image_files([p])  # each folder is walked once
            self.files += files
            self._origin += [i] * len(files)
            self.skipped += missing
        rank, world = share
        lo, hi = len(self.files) * rank // world, len(self.files) * (rank + 1) // world
        self.files, self._origin = self.files[lo:hi], self._origin[lo:hi]
        self.n_files = len(self.files)

    def __iter__(self):
        for _, rows in self.batches():
            yield rows

    def batches(self):
        """Yields (for each row, the index of the path given it was found under; the rows) per batch."""
        m = self.m
        transform = TTAViews(m.data_config) if self.tta else eval_transform(m.data_config)
        images = ImageFiles(self.files, None, transform, m.data_config.image_size)
        for ids, logits, failed in network_batches(EachView(m.model), images, device=m.device, reporter=self.reporter,
                                                   description="Predicting"):
            self.skipped += sorted(failed.items())
            if ids:
                yield [self._origin[i] for i in ids], answer_rows(m, [self.files[i] for i in ids],
                                                                  calibrated(m, logits)[0], self.top_k,
                                                                  self.min_confidence)


def answer_rows(m, paths: list[str], probs: np.ndarray, top_k: int, min_confidence: float | None) -> list[dict]:
    """Calibrated probabilities [N, K] -> one answer per image (see `predict`)."""
    if m.task == "multi":
        return [label_set_row(m, path, p) for path, p in zip(paths, probs)]
    k = max(1, min(top_k, len(m.classes)))
    out = []
    for path, p in zip(paths, probs):
        order = np.argsort(-p, kind="stable")[:k]
        unknown = min_confidence is not None and p[order[0]] < min_confidence
        out.append({"path": path, "label": UNKNOWN if unknown else m.classes[order[0]],
                    "probability": float(p[order[0]]), "top_k": [(m.classes[j], float(p[j])) for j in order]})
    return out


def _check_top_k(top_k) -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ParameterError("top_k", f"must be a whole number, 1 or more; received {top_k!r}.")


def _check_confidence(min_confidence: float | None) -> None:
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ConfigError(f"min_confidence must be from 0 to 1; received {min_confidence}.")


def label_set_row(m, path: str, p: np.ndarray) -> dict:
    """A multi-label model's answer for one image: {"path", "labels": the labels whose calibrated
    probability reaches their threshold, "probabilities": {label: probability} for every label}."""
    return {"path": path, "labels": [c for c, pj, t in zip(m.classes, p, m.thresholds) if pj >= t],
            "probabilities": {c: float(pj) for c, pj in zip(m.classes, p)}}


def _image_rows(m, images: list, top_k: int, tta: bool, min_confidence: float | None) -> list[dict]:
    """In-memory images (PIL or arrays) -> their answers, paths left for the caller to name."""
    tf = model_input(m, tta)
    return answer_inputs(m, torch.stack([tf(as_pil(im)) for im in images]), top_k, min_confidence)


def model_input(m, tta: bool = False):
    """The transform from a decoded RGB image to what `answer_inputs` takes: [C, S, S], or [V, C, S, S]
    with `tta` (its view 0 the plain one)."""
    return TTAViews(m.data_config) if tta else eval_transform(m.data_config)


def answer_inputs(m, batch: torch.Tensor, top_k: int, min_confidence: float | None) -> list[dict]:
    """A batch of transformed images ([B, C, S, S], or [B, V, C, S, S] with test-time views) -> their
    answers, paths left for the caller to name."""
    with torch.inference_mode():
        probs = calibrated(m, EachView(m.model)(batch.to(m.device)).cpu().numpy())[0]
    return answer_rows(m, [""] * len(batch), probs, top_k, min_confidence)


def as_pil(image):
    """A PIL image, or an HxW / HxWxC (C = 1, 3 or 4) uint8 array -> an RGB PIL image; anything else is
    one clear DataError."""
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
