"""`imgtune export`: the trained model as ONNX, checked against PyTorch before it is kept.

The file carries what a consumer needs in its metadata (classes, image size, normalisation, calibration
temperature) and is written only after ONNX Runtime reproduces the PyTorch logits on the run's
validation images. Optionally an int8 copy (ONNX Runtime static quantisation, calibrated on training
images) with its accuracy and speed against fp32 on the validation split."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..atomic import write_atomic
from ..data.datasets import ImageFiles
from ..data.scan import find_images
from ..data.transforms import eval_transform
from ..errors import ImgtuneError
from ..infer.multilabel import sigmoid
from ..model.forward import run_network
from ..model.onnx_module import METADATA_KEY, OnnxModule, require_onnx, trace
from ..progress import Reporter
from ..runs.folder import RunFolder
from ..runs.trained import fitted_state

AGREEMENT_MIN = 0.999  # top-1 agreement with PyTorch
MAX_ABS_DIFF = 1e-4  # largest |logit difference| allowed in fp32
INT8_DROP_MAX = 0.01  # accuracy the int8 model may lose on validation before export warns


def export_onnx(model, output: str | os.PathLike | None = None, *, quantize: str | None = None,
                reporter: Reporter | None = None, parity_images: int | None = None) -> dict:
    """Write the run's model.onnx (or `output`) for `model` (a TrainedModel, or an ImageClassifier's) and,
    with quantize="int8", model.int8.onnx beside it. Returns the figures that were checked: parity with
    PyTorch on the run's validation images (an evenly spaced `parity_images` of them where given). The
    file records the digest of the run's model.safetensors it was made from (weights_digest)."""
    onnx, _ = require_onnx()
    rep = reporter or Reporter(quiet=True)
    m = fitted_state(model)
    run = RunFolder(m.run_dir)
    output = Path(output) if output else run.path / "model.onnx"
    val, test, train = _split_files(run, m.task)
    cfg = m.data_config
    model = m.model.float().cpu().eval()
    multi = m.task == "multi"
    graph = onnx.load_from_string(trace(WithProbabilities(model, m.temperature) if multi else model, cfg.image_size,
                                        ("logits", "probabilities") if multi else ("logits",)))
    info = _metadata(m, weights_digest(run))
    meta = graph.metadata_props.add()
    meta.key, meta.value = METADATA_KEY, json.dumps(info)
    graph.producer_name = "imgtune"

    paths = [p for p, _ in val] or [p for p, _ in train][:64]
    if parity_images is not None and len(paths) > parity_images:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, parity_images).round().astype(int)]
    result = {"output": str(output), "parity_images": 0}

    def write_checked(tmp: str) -> None:
        Path(tmp).write_bytes(graph.SerializeToString())
        reference = _logits(model, paths, cfg, rep, "PyTorch on validation images")
        exported = _logits(OnnxModule(tmp), paths, cfg, rep, "ONNX Runtime on validation images")
        keys = sorted(set(reference) & set(exported))
        if not keys:
            raise ImgtuneError("No validation image of this run could be read to check the export against "
                               "PyTorch; the run's data has moved or gone.")
        a = np.stack([reference[k] for k in keys])
        b = np.stack([exported[k] for k in keys])
        if multi:  # the share of images given the same label set
            thr, t = np.asarray(m.thresholds), np.asarray(m.temperature)
            agree = np.mean(np.all((sigmoid(a / t) >= thr) == (sigmoid(b / t) >= thr), axis=1))
        else:
            agree = np.mean(a.argmax(1) == b.argmax(1))
        result.update(parity_images=len(keys), top1_agreement=float(agree), max_abs_logit_diff=float(np.abs(a - b).max()))
        if result["top1_agreement"] < AGREEMENT_MIN or result["max_abs_logit_diff"] > MAX_ABS_DIFF:
            raise ImgtuneError(f"The ONNX model does not match PyTorch on {len(keys)} validation images "
                               f"(top-1 agreement {result['top1_agreement']:.4%}, max |logit difference| "
                               f"{result['max_abs_logit_diff']:.2e}); nothing was written.")

    write_atomic(output, write_checked)
    if quantize == "int8":
        # scored on the test split where the run has one: a head refitted on train+val has seen validation
        held = ("test", test) if test else ("validation", val)
        result["int8"] = _quantize(output, held, train, cfg, rep, _decider(m))
    elif quantize is not None:
        raise ImgtuneError(f"Unknown quantisation {quantize!r}: expected int8.")
    return result


def _metadata(m, weights_sha256: str | None) -> dict:
    """What the ONNX file says of itself (its imgtune metadata): classes, preprocessing, decisions, outputs,
    and the digest of the weights it was made from."""
    cfg = m.data_config
    info = {"classes": m.classes, "image_size": cfg.image_size, "mean": list(cfg.mean), "std": list(cfg.std),
            "interpolation": cfg.interpolation, "temperature": m.temperature, "backbone": m.backbone,
            "offsets": [float(v) for v in m.model.offsets], "metric": m.metric,
            "input": "RGB, resized (shorter side) and centre-cropped to image_size, scaled to 0..1, "
                     "then (x - mean) / std; NCHW float32",
            "output": "logits with the decision offsets already added (the graph adds them): the decision is "
                      "argmax(logits), the probabilities softmax(logits / temperature)",
            "imgtune": __version__, "weights_sha256": weights_sha256}
    if m.task == "multi":
        info.update(task="multi", thresholds=m.thresholds, offsets=None,
                    output="two outputs: logits, and probabilities = sigmoid(logits / temperature), a temperature "
                           "per label; an image carries each label whose probability reaches its threshold")
    return info


def weights_digest(run: RunFolder) -> str | None:
    """SHA-256 of the run's model.safetensors (None where it has none): what an ONNX copy was made from."""
    if not run.weights.is_file():
        return None
    h = hashlib.sha256()
    with open(run.weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class WithProbabilities(torch.nn.Module):
    """A multi-label model with its calibrated probabilities as a second output."""

    def __init__(self, model: torch.nn.Module, temperature: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def forward(self, x):
        z = self.model(x)
        return z, torch.sigmoid(z / self.temperature)


def _split_files(run: RunFolder, task: str) -> tuple[list[tuple[str, object]], ...]:
    """(validation, test, training) files of the run as (path, target), from its split.csv; a target is a
    class index, or a 0/1 row for a multi-label run."""
    if not run.split.is_file():
        return [], [], []
    m = find_images(run.split, task=task)
    return tuple([(it.path, y) for it, y in zip(m.split(s), m.targets(m.split(s)))] for s in ("val", "test", "train"))


def _decider(m):
    """logits -> what is compared with the targets: the class, or the label set as a 0/1 row."""
    if m.task != "multi":
        return lambda z: z.argmax(1)
    t, thr = np.asarray(m.temperature), np.asarray(m.thresholds)
    return lambda z: (sigmoid(z / t) >= thr).astype(np.float32)


def _logits(net, paths: list[str], cfg, rep: Reporter, description: str) -> dict[str, np.ndarray]:
    outputs, _ = run_network(net, ImageFiles(paths, None, eval_transform(cfg), cfg.image_size),
                             device=torch.device("cpu"), reporter=rep, description=description)
    return {paths[i]: v for i, v in outputs.items()}


def _quantize(fp32: Path, held: tuple[str, list], train, cfg, rep: Reporter, decide) -> dict:
    """Static int8 quantisation (QDQ, per channel, symmetric), calibrated on up to 256 training images;
    accuracy (of a multi-label model: the share of label sets exactly right) and speed of both models on
    `held` (the split's name and its files)."""
    split, val = held
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = [p for p, _ in train[:: max(1, len(train) // 256)]][:256] or [p for p, _ in val]
    tensors, _ = _tensors(calib, cfg)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": tensors[i:i + 16]} for i in range(0, len(tensors), 16)])

        def get_next(self):
            return next(self.batches, None)

    out = fp32.with_suffix(".int8.onnx")
    with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with rep.bar("Quantising to int8", 1) as advance:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            staged = Path(tmp) / "int8.onnx"
            # Symmetric signed int8 for activations and weights: with the asymmetric uint8 default,
            # EfficientNet-Lite lost 3.4 points of validation accuracy on Fashion-MNIST; this lost none.
            quantize_static(str(prepared), str(staged), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
            advance(1)
        write_atomic(out, lambda t: Path(t).write_bytes(staged.read_bytes()))
    x, kept = _tensors([p for p, _ in val], cfg)
    labels = np.array([val[i][1] for i in kept])
    figures = {"output": str(out), "calibration_images": len(tensors), "split": split, "split_images": len(labels)}
    for name, path in (("fp32", fp32), ("int8", out)):
        net = OnnxModule(path)
        started = time.perf_counter()
        with torch.inference_mode():
            pred = np.concatenate([decide(net(torch.from_numpy(x[i:i + 32])).numpy())
                                   for i in range(0, len(x), 32)]) if len(x) else np.zeros(0)
        figures[f"{name}_seconds"] = time.perf_counter() - started
        right = np.all(pred == labels, axis=1) if labels.ndim == 2 else pred == labels
        figures[f"{name}_accuracy"] = float(np.mean(right)) if len(labels) else None
    if len(labels):
        figures["accuracy_drop"] = figures["fp32_accuracy"] - figures["int8_accuracy"]
        figures["speedup"] = figures["fp32_seconds"] / max(figures["int8_seconds"], 1e-9)
        figures["within_limit"] = figures["accuracy_drop"] <= INT8_DROP_MAX
    figures["bytes"] = {"fp32": fp32.stat().st_size, "int8": out.stat().st_size}
    return figures


def _tensors(paths: list[str], cfg) -> tuple[np.ndarray, list[int]]:
    """Preprocessed images as one float32 array, and the indices of the paths they came from (unreadable
    files are left out)."""
    outputs, _ = run_network(torch.nn.Identity(), ImageFiles(paths, None, eval_transform(cfg), cfg.image_size),
                             device=torch.device("cpu"))
    kept = sorted(outputs)
    if not kept:
        return np.zeros((0, 3, cfg.image_size, cfg.image_size), np.float32), []
    return np.stack([outputs[i] for i in kept]).astype(np.float32), kept
