"""The classifier heads that sit on pooled backbone features."""

from __future__ import annotations

import torch
from torch import nn

from ..config import HeadConfig
from ..errors import ConfigError


class Dropout(nn.Dropout):
    """nn.Dropout with its mask drawn as random bytes, four from each 32-bit random number: on CPU 0.7 ms
    against 2.7 ms for Bernoulli sampling of a 256 x 1280 batch (benchmarks/step_speed.py), which was most
    of the time of head training on cached features. The probability is applied in steps of 1/256."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        cut = round(self.p * 256)
        if cut >= 256:
            return torch.zeros_like(x)
        n = x.numel()
        draws = torch.randint(-2**31, 2**31, ((n + 3) // 4,), dtype=torch.int32, device=x.device)
        keep = draws.view(torch.uint8)[:n].view(x.shape) >= cut
        return x * keep * (256 / (256 - cut))


def make_head(cfg: HeadConfig, in_features: int, n_classes: int) -> nn.Sequential:
    if cfg.kind in ("linear", "logistic"):  # a logistic head is a linear layer fitted another way
        return nn.Sequential(Dropout(cfg.dropout), nn.Linear(in_features, n_classes))
    if cfg.kind == "mlp":
        # The seed recipe's top model: Flatten -> Dense(256, relu) -> Dropout(0.5) -> Dense(softmax).
        # Pooled features are already flat; the softmax is in the loss.
        return nn.Sequential(nn.Linear(in_features, cfg.hidden), nn.ReLU(), Dropout(cfg.dropout),
                             nn.Linear(cfg.hidden, n_classes))
    raise ConfigError(f"Unknown head kind {cfg.kind!r}: expected logistic, linear or mlp.")


def n_outputs(head: nn.Module) -> int:
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features


class Classifier(nn.Module):
    """Backbone trunk + head: images in, logits out. Keys are `backbone.*`, `head.*` and `offsets`: the
    per-class decision offsets (decide.py) added to the head's logits, part of the model so that every
    runtime (PyTorch, the ONNX graph, the server) decides the same way. Zero until a run fits them."""

    def __init__(self, backbone: nn.Module, head: nn.Module, offsets: torch.Tensor | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("offsets", torch.zeros(n_outputs(head)) if offsets is None else offsets)

    def forward(self, x):
        return self.head(self.backbone(x)) + self.offsets


class EachView(nn.Module):
    """Runs a model on [B, C, H, W] as it is, and on [B, V, C, H, W] (several views of each image, for
    test-time augmentation) view by view -> [B, V, K]. Holds no weights of its own."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        if x.dim() == 5:
            b, v = x.shape[:2]
            return self.model(x.flatten(0, 1)).view(b, v, -1)
        return self.model(x)
