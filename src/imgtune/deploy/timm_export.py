"""`imgtune export --format timm`: the run as a folder timm loads offline, in timm's own hub layout.

    DIR/config.json        architecture, num_classes, label_names, pretrained_cfg (timm's keys), and
                           under "imgtune" what timm's model cannot hold: the calibration temperature(s),
                           the multi-label thresholds, the task
    DIR/model.safetensors  a state dict under timm's key names: `timm.create_model(architecture,
                           num_classes=K)` loads it with strict=True
    DIR/README.md          a Hugging Face model card built from the run's config.json and metrics.json

imgtune's network is timm's model with its classifier removed (`reset_classifier(0)`) followed by its own
head and per-class decision offsets, so the mapping is exact for a linear head: the head's weight becomes
timm's classifier weight and head bias + offsets its bias (the offsets are a constant added to the
logits, which is what a bias is). An MLP head has a hidden layer and a ReLU after the pooling, which
timm's single linear classifier cannot hold: such a run is refused, with the ONNX export as the way out.

As the ONNX export does, the folder is kept only after timm itself, reading the written files, reproduces
imgtune's logits on the run's validation images."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..atomic import _fsync_dir, write_bytes_atomic, write_json_atomic, write_text_atomic
from ..errors import ImgtuneError, ParameterError
from ..infer.multilabel import sigmoid
from ..progress import Reporter
from ..runs.folder import RunFolder
from ..runs.trained import fitted_state
from .export import AGREEMENT_MIN, MAX_ABS_DIFF, _split_files, _tensors
from .model_card import model_card

FILES = ("config.json", "model.safetensors", "README.md")  # what an export folder holds, and nothing else
PARITY_IMAGES = 256  # validation images the logits are compared on, at most

# pretrained_cfg fields that describe timm's own published weights (where they live, their tag, licence
# and test-time settings), not these: left out of the exported config
_NOT_OURS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag", "license",
             "description", "origin_url", "notes", "label_offset", "label_descriptions", "test_input_size",
             "test_crop_pct", "test_pool_size", "min_input_size")


def export_timm(model, output: str | os.PathLike | None = None, *, reporter: Reporter | None = None) -> dict:
    """Write the timm folder for `model` (a TrainedModel, or an ImageClassifier's) to `output` (default
    RUN/timm). Returns what was written and the logit check: {"output", "files", "architecture",
    "classifier", "parity_images", "max_abs_logit_diff", "agreement"}."""
    import timm
    from safetensors.torch import save

    m = fitted_state(model)
    run = RunFolder(m.run_dir)
    out = Path(output) if output else run.path / "timm"
    check_output(out)
    if m.runtime != "torch":
        raise ImgtuneError(f"Export for timm needs the PyTorch weights; the model was loaded with the {m.runtime} "
                           "runtime. Load it with runtime='torch'.")
    net = m.model.float().cpu().eval()
    arch = net.backbone.pretrained_cfg.get("architecture") if hasattr(net.backbone, "pretrained_cfg") else None
    if not arch:
        raise ImgtuneError(f"The backbone {m.backbone!r} does not say which timm model it is "
                           "(no pretrained_cfg['architecture']); only timm backbones export for timm.")
    k = len(m.classes)
    target, cls_name = _timm_twin(net, m, arch)
    cfg_doc = timm_config(m, target, arch, cls_name)
    val, _, train = _split_files(run, m.task)
    paths = [p for p, _ in val][:PARITY_IMAGES] or [p for p, _ in train][:64]
    x, _ = _tensors(paths, m.data_config)
    if not len(x):
        raise ImgtuneError("No validation image of this run could be read to check the export against imgtune; "
                           "the run's data has moved or gone.")
    tensors = {n: t.detach().cpu().contiguous().clone() for n, t in target.state_dict().items()}
    rep = reporter or Reporter(quiet=True)
    result = {"output": str(out), "files": list(FILES), "architecture": arch, "classifier": cls_name}

    def build(folder: Path) -> None:
        write_bytes_atomic(folder / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        with rep.bar("timm on validation images", 1) as advance:
            # timm reads the written file through its own pretrained-weights path, as a user's code would
            loaded = timm.create_model(arch, pretrained=True, num_classes=k, pretrained_cfg_overlay={
                "file": str(folder / "model.safetensors"), "num_classes": k}).eval()
            a, b = _logits(net, x), _logits(loaded, x)
            advance(1)
        result.update(parity_images=len(x), max_abs_logit_diff=float(np.abs(a - b).max()),
                      agreement=_agreement(m, a, b))
        if result["max_abs_logit_diff"] > MAX_ABS_DIFF or result["agreement"] < AGREEMENT_MIN:
            raise ImgtuneError(f"timm's {arch} does not reproduce imgtune's logits on {len(x)} validation images "
                               f"(max |logit difference| {result['max_abs_logit_diff']:.2e}, agreement "
                               f"{result['agreement']:.2%}); nothing was written.")
        cfg_doc["imgtune"]["logit_check"] = {k_: result[k_] for k_ in ("parity_images", "max_abs_logit_diff")}
        write_json_atomic(folder / "config.json", cfg_doc)
        write_text_atomic(folder / "README.md", model_card(
            run.read_config(), _read_metrics(run), timm_config=cfg_doc, folder=out.absolute(),
            split_counts=split_counts(run, m.classes, m.task), name=run.path.name))

    write_folder_atomic(out, build)
    return result


def _timm_twin(net, m, arch: str):
    """timm's `arch` with the run's classes and imgtune's weights in it -> (model, its classifier's name);
    refused in one line where they do not fit."""
    import timm

    linear = _linear_head(net.head, m.head_config.kind)
    k = len(m.classes)
    target = timm.create_model(arch, pretrained=False, num_classes=k).eval()
    cls_name, cls_module = _classifier(target, arch)
    state = timm_state_dict(net, linear, cls_name, cls_module)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[:2])[:300]
        raise ImgtuneError(f"imgtune's weights do not fit timm's {arch} with {k} classes ({first}); nothing was "
                           "written. Export --format onnx instead.") from None
    return target, cls_name


def check_output(out: Path) -> None:
    """A new folder, an empty one, or a previous export (only its three files): anything else is refused
    before any work, as the export replaces the folder whole."""
    if out.exists() and not out.is_dir():
        raise ParameterError("output", f"{{name}} {str(out)!r} is a file: the timm export is a folder "
                                       f"({', '.join(FILES)}). Give a new folder, or a previous export's.")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in FILES)
        if other:
            raise ParameterError("output", f"{{name}} {str(out)!r} holds other files than a timm export "
                                           f"({', '.join(other[:3])}{' ...' if len(other) > 3 else ''}); the "
                                           "export replaces the folder whole. Give a new or empty folder.")


def write_folder_atomic(out: Path, build) -> None:
    """`build(tmp)` fills a new folder beside `out`, which then takes its place: a crash leaves the old
    folder (or none) or the new one, never a mixture. A previous `out` is moved aside first and removed
    after (a crash between the two renames leaves it as .NAME.*.old beside `out`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_folder(out, "tmp")
    old = None
    try:
        build(tmp)
        if out.exists():
            old = _new_folder(out, "old")
            os.replace(out, old)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _new_folder(out: Path, kind: str) -> Path:
    """A new, empty folder beside `out` with the permissions mkdir gives (tempfile's are 0700, which the
    renamed export would keep)."""
    while True:
        path = out.parent / f".{out.name}.{secrets.token_hex(6)}.{kind}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _linear_head(head: nn.Module, kind: str) -> nn.Linear:
    """The head's one linear layer; dropout is nothing at inference. Anything more has no place in timm's
    classifier."""
    layers = [mod for mod in (head if isinstance(head, nn.Sequential) else [head]) if not isinstance(mod, nn.Dropout)]
    if len(layers) == 1 and isinstance(layers[0], nn.Linear):
        return layers[0]
    shape = " -> ".join(type(mod).__name__ for mod in layers)
    raise ImgtuneError(f"The run's {kind} head ({shape}) has a hidden layer and a non-linearity after the pooling, "
                       "which timm's single linear classifier cannot hold, so no timm model reproduces it. "
                       "Export --format onnx instead, or train with the logistic or linear head.")


def _classifier(model: nn.Module, arch: str) -> tuple[str, nn.Module]:
    """The name and module of timm's classifier layer (`classifier` for EfficientNet, `fc` for ResNet,
    `head.fc` for ConvNeXt)."""
    c = model.get_classifier()
    names = {id(mod): n for n, mod in model.named_modules()}
    if not isinstance(c, (nn.Linear, nn.Conv2d)) or id(c) not in names:
        raise ImgtuneError(f"timm's {arch} has a classifier imgtune cannot fill ({type(c).__name__}): expected "
                           "one linear layer. Export --format onnx instead.")
    return names[id(c)], c


def timm_state_dict(net: nn.Module, linear: nn.Linear, cls_name: str, cls_module: nn.Module) -> dict:
    """imgtune's Classifier -> timm's keys: the backbone's own (it is timm's model without its classifier),
    then the head's weight as the classifier's and head bias + decision offsets as its bias."""
    state = {n: t.detach().clone() for n, t in net.backbone.state_dict().items()}
    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else torch.zeros(w.shape[0])
    state[f"{cls_name}.weight"] = w.reshape(cls_module.weight.shape).clone()  # a 1x1 conv takes [K, C, 1, 1]
    state[f"{cls_name}.bias"] = (b + net.offsets.detach()).reshape(cls_module.bias.shape).clone()
    return state


def timm_config(m, model: nn.Module, arch: str, cls_name: str) -> dict:
    """config.json in timm's hub layout (as timm's save_for_hf writes it), the preprocessing imgtune's
    (the weights' mean and std, shorter side to the input size then a centre crop: crop_pct 1), and what
    timm cannot hold under "imgtune"."""
    import timm
    from timm.models import PretrainedCfg

    d, k = m.data_config, len(m.classes)
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    pretrained = {n: v for n, v in model.pretrained_cfg.items() if n not in _NOT_OURS and n in known}
    size = [3, d.image_size, d.image_size]
    if list(pretrained.get("input_size", size)) != size:
        pretrained["pool_size"] = None  # as timm's save_for_hf does for another input size
    pretrained.update(architecture=arch, custom_load=False, input_size=size, interpolation=d.interpolation,
                      crop_pct=1.0, crop_mode="center", mean=list(d.mean), std=list(d.std), num_classes=k,
                      label_names=list(m.classes), classifier=cls_name)
    pretrained = {n: v for n, v in pretrained.items() if v is not None or n in ("pool_size", "first_conv", "classifier")}
    multi = m.task == "multi"
    offsets = [float(v) for v in m.model.offsets]
    info = {
        "version": __version__, "timm": timm.__version__, "backbone": m.backbone, "task": m.task,
        "output": "sigmoid" if multi else "softmax", "temperature": m.temperature, "metric": m.metric,
        "decision_offsets": offsets, "offsets_in_classifier_bias": True,
        "how_to_read": ("probabilities = sigmoid(logits / temperature), a temperature per label; an image carries "
                        "each label whose probability reaches its threshold") if multi else
                       ("decision = argmax(logits) (the decision offsets are already in the classifier's bias); "
                        "calibrated probabilities = softmax(logits / temperature)"),
    }
    if multi:
        info["thresholds"] = m.thresholds
    return {"architecture": arch, "num_classes": k, "num_features": int(model.num_features),
            **({"global_pool": model.global_pool.pool_type} if isinstance(
                getattr(getattr(model, "global_pool", None), "pool_type", None), str) else {}),
            "label_names": list(m.classes), "pretrained_cfg": pretrained, "imgtune": info}


def _logits(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([net(torch.from_numpy(x[i:i + 32])).numpy() for i in range(0, len(x), 32)])


def _agreement(m, a: np.ndarray, b: np.ndarray) -> float:
    """Share of images given the same answer: the class, or (multi-label) the label set."""
    if m.task != "multi":
        return float(np.mean(a.argmax(1) == b.argmax(1)))
    t, thr = np.asarray(m.temperature), np.asarray(m.thresholds)
    return float(np.mean(np.all((sigmoid(a / t) >= thr) == (sigmoid(b / t) >= thr), axis=1)))


def _read_metrics(run: RunFolder) -> dict | None:
    try:
        doc = json.loads(run.metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def split_counts(run: RunFolder, classes: list[str], task: str) -> dict[str, dict] | None:
    """{split: {"images": n, "classes": {class: images}}} from the run's split.csv (a multi-label image
    counts once for each of its labels); None without one."""
    if not run.split.is_file():
        return None
    counts: dict[str, dict] = {}
    with open(run.split, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for row in csv.DictReader(f):
            split = counts.setdefault(row.get("split") or "train", {"images": 0, "classes": dict.fromkeys(classes, 0)})
            split["images"] += 1
            for c in (row.get("labels") or "").split(";") if task == "multi" else [row.get("label")]:
                if c in split["classes"]:
                    split["classes"][c] += 1
    return counts
