"""Where a prediction looks: Grad-CAM class activation maps (Selvaraju et al. 2017) on the backbone's last
feature map, and the overlays that show them (predict --explain, serve ?explain=1, the report's gallery).

Grad-CAM weights each channel of the last feature map A by the mean gradient of the class score over it
and keeps the positive part of the weighted sum: ReLU(sum_k mean(dy_c/dA_k) * A_k). The gradient is
taken with respect to A only, so the backbone runs forward once without autograd and only the pooling
and the head are differentiated: explaining costs about what predicting costs. It needs PyTorch: an ONNX
Runtime model has no gradients."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..atomic import write_bytes_atomic
from ..data.images import BadImage, load_rgb, to_rgb
from ..data.transforms import DataConfig, eval_transform
from ..errors import ConfigError, DataError

NO_GRADIENTS = "ONNX Runtime has no gradients"  # each caller adds the fix in its own words
BATCH = 16  # images per forward pass: 16 feature maps of even a 512 px input fit in little memory


def grad_cam(model, images: torch.Tensor, targets=None) -> np.ndarray:
    """Class activation maps of a heads.Classifier for a batch [B, 3, H, W] (already transformed) ->
    float32 [B, H, W], each map scaled to [0, 1] by its maximum (a map with no positive evidence stays
    all zero). `targets`: one class index per image, or one for all; default each image's predicted
    class (the head's argmax with the decision offsets, as the model decides)."""
    return _maps(model, images, [targets])[0]


def _maps(model, images: torch.Tensor, target_sets: list) -> list[np.ndarray]:
    """grad_cam for several sets of targets on the same images, from one forward pass of the backbone."""
    backbone = model.backbone
    if not hasattr(backbone, "forward_features"):
        raise ConfigError(f"Grad-CAM needs a timm backbone with forward_features; found {type(backbone).__name__}.")
    nhwc = getattr(backbone, "output_fmt", "NCHW") == "NHWC"  # swin and a few others keep channels last
    was_training = model.training
    model.eval()  # dropout off, batch-norm statistics fixed; restored below
    try:
        # inference_mode(False): a caller inside inference_mode still gets gradients here
        with torch.inference_mode(False):
            x = images.to(model.offsets.device).clone()
            with torch.no_grad():
                feats = backbone.forward_features(x)
            if feats.dim() != 4:
                raise ConfigError(f"Grad-CAM needs a spatial feature map [B, C, H, W]; {type(backbone).__name__} "
                                  f"gives shape {list(feats.shape)}.")
            feats = feats.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model.head(backbone.forward_head(feats, pre_logits=True)) + model.offsets
            out = []
            for i, targets in enumerate(target_sets):
                t = logits.argmax(1) if targets is None else torch.as_tensor(targets, device=logits.device)
                t = t.expand(len(logits)) if t.dim() == 0 else t
                score = logits.gather(1, t.long().view(-1, 1)).sum()  # images are independent: one backward
                (grad,) = torch.autograd.grad(score, feats, retain_graph=i < len(target_sets) - 1)
                a, g = (feats.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)) if nhwc else (feats, grad)
                cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach().float()
                cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                top = cam.flatten(1).amax(1).view(-1, 1, 1)
                out.append(torch.where(top > 0, cam / top.clamp_min(1e-12), 0).clamp_(0, 1).cpu().numpy())
            return out
    finally:
        model.train(was_training)


def model_view(x: torch.Tensor, cfg: DataConfig) -> Image.Image:
    """An eval-transformed image [3, S, S] back to the RGB pixels the network saw (the centre crop at its
    input size), so that a map laid over it lines up."""
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    pixels = ((x.detach().cpu().float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def overlay(rgb: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The map in matplotlib's "jet" colours (blue: nothing, red: most) laid over the image with opacity
    `alpha`. Pass the model's view of the image (model_view); any other image is resized to the map."""
    from matplotlib import colormaps  # the colour map only: no pyplot, no display backend

    h, w = cam.shape
    base = to_rgb(rgb)
    if base.size != (w, h):
        base = base.resize((w, h), Image.BILINEAR)
    heat = (colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.uint8)
    return Image.blend(base, Image.fromarray(heat), alpha)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def side_by_side(view: Image.Image, cam_true: np.ndarray, cam_pred: np.ndarray, true: str, predicted: str,
                 panel: int = 150) -> Image.Image:
    """A misclassified image's two maps, each `panel` px and captioned: where the true class's evidence
    lies, and what the model took for the class it predicted."""
    caption = 14
    out = Image.new("RGB", (2 * panel + 6, panel + caption), "white")
    d = ImageDraw.Draw(out)
    for i, (cam, text) in enumerate(((cam_true, f"true: {true}"), (cam_pred, f"predicted: {predicted}"))):
        x = i * (panel + 6)
        out.paste(overlay(view, cam).resize((panel, panel), Image.BILINEAR), (x, caption))
        d.text((x + 2, 1), text[:28], fill=(30, 123, 52) if i == 0 else (179, 38, 30))
    return out


def require_gradients(m) -> None:
    """One clear error for a model that cannot be explained (an ONNX Runtime one)."""
    if getattr(m, "runtime", "torch") != "torch" or not hasattr(m.model, "backbone"):
        raise ConfigError(f"Cannot explain predictions of a model loaded with runtime {m.runtime!r}: "
                          f"{NO_GRADIENTS}; load the run with runtime='torch'.")


def explained_class(m, row: dict) -> int:
    """The class a prediction's map is drawn for: its top class (also under --min-confidence, where the
    label may be "unknown"), or for a multi-label model its highest-probability label."""
    if "probabilities" in row:
        p = row["probabilities"]
        return max(range(len(m.classes)), key=lambda j: p[m.classes[j]])
    return m.classes.index(row["top_k"][0][0])


def overlays(m, images: list[Image.Image], targets: list[int] | None = None) -> list[Image.Image]:
    """Decoded RGB images -> one overlay each, at the model's input size, of the class `targets[i]`
    (default the predicted one)."""
    require_gradients(m)
    tf, out = eval_transform(m.data_config), []
    for start in range(0, len(images), BATCH):
        x = torch.stack([tf(to_rgb(im)) for im in images[start:start + BATCH]])
        out += overlays_of_inputs(m, x, None if targets is None else targets[start:start + BATCH])
    return out


def overlays_of_inputs(m, x: torch.Tensor, targets: list[int] | None = None) -> list[Image.Image]:
    """`overlays` of images already eval-transformed ([B, 3, S, S])."""
    require_gradients(m)
    return [overlay(model_view(xi, m.data_config), c) for xi, c in zip(x, grad_cam(m.model, x, targets))]


def unique_names(paths: list[str], suffix: str = ".png") -> list[str]:
    """One file name per input, from its stem: a repeated stem gets -2, -3, ... in input order."""
    taken, names = set(), []
    for p in paths:
        stem = Path(p).stem or "image"
        name, n = stem + suffix, 1
        while name.lower() in taken:  # case-insensitive, for file systems that are
            n += 1
            name = f"{stem}-{n}{suffix}"
        taken.add(name.lower())
        names.append(name)
    return names


def write_overlays(m, rows: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    """predict --explain: one overlay PNG per predicted file in `out_dir`, named by the file's stem, of
    the class each row answered (explained_class); each written atomically -> the files written."""
    require_gradients(m)
    out_dir, written = Path(out_dir), []
    names = unique_names([r["path"] for r in rows])
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        images = [_reread(r["path"], m.data_config.image_size) for r in chunk]
        for name, image in zip(names[start:], overlays(m, images, [explained_class(m, r) for r in chunk])):
            write_bytes_atomic(out_dir / name, png_bytes(image))
            written.append(out_dir / name)
    return written


def _reread(path: str, size: int) -> Image.Image:
    try:
        return load_rgb(path, draft_size=size)
    except BadImage as e:  # it was read a moment ago, for its prediction
        raise DataError(f"Cannot explain {path!r}: {e}.") from None


def explain_misclassified(m, wrong: list[dict]) -> None:
    """The report's gallery: adds to each misclassified row ({"path", "true", "predicted", ...}) an
    "explain" entry, the base64 PNG of its true-class and predicted-class maps side by side. Rows whose
    file can no longer be read are left without one."""
    cfg = m.data_config
    tf = eval_transform(cfg)
    readable = []
    for row in wrong:
        try:
            readable.append((row, tf(load_rgb(row["path"], draft_size=cfg.image_size))))
        except BadImage:
            continue
    for start in range(0, len(readable), BATCH):
        chunk = readable[start:start + BATCH]
        x = torch.stack([t for _, t in chunk])
        true, pred = _maps(m.model, x, [[m.classes.index(r["true"]) for r, _ in chunk],
                                        [m.classes.index(r["predicted"]) for r, _ in chunk]])
        for (row, _), xi, ct, cp in zip(chunk, x, true, pred):
            pair = side_by_side(model_view(xi, cfg), ct, cp, row["true"], row["predicted"])
            # 256 colours: a third of the bytes of full colour (24 against 68 KB for a photo), and up to 48
            # of these sit in metrics.json and the report
            row["explain"] = base64.b64encode(png_bytes(pair.quantize(256))).decode("ascii")
