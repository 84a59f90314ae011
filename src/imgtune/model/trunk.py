"""The frozen trunk and the trainable tail of a backbone (cache/trunk_views.py keeps the trunk's outputs).

Fine-tuning trains only the last block groups. Everything before them is frozen (BatchNorm in eval
mode, no dropout or stochastic depth), so its output for a given input is fixed.

Applies to backbones built as stem -> `blocks` stages -> conv head (timm's EfficientNet and MobileNet
families); for others `split_stage` returns None and fine-tuning runs the whole network on images.
"""

from __future__ import annotations

import torch
from torch import nn

_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")


def split_stage(model: nn.Module, trainable: set[str]) -> int | None:
    """The first stage of `model.blocks` that holds a trainable parameter, when everything before it is
    frozen and deterministic; None when the model cannot be split there."""
    if not all(hasattr(model, a) for a in _PARTS) or not trainable:
        return None
    stages = [s for s in range(len(model.blocks)) if any(n.startswith(f"blocks.{s}.") for n in trainable)]
    top = {n for n in trainable if not n.startswith("blocks.")}
    if not stages or any(not n.startswith(("conv_head.", "bn2.")) for n in top):
        return None
    s = min(stages)
    if s == 0 or any(n.startswith(f"blocks.{t}.") for t in range(s) for n in trainable):
        return None
    trunk = Trunk(model, s)
    for m in trunk.modules():  # anything random in the trunk would make a cached output wrong
        if isinstance(m, nn.Dropout) and m.p > 0 or getattr(m, "drop_prob", 0) > 0:
            return None
    return s


class Trunk(nn.Module):
    """Images -> the activations entering stage `s` (the frozen part)."""

    def __init__(self, model: nn.Module, s: int):
        super().__init__()
        self.conv_stem, self.bn1 = model.conv_stem, model.bn1
        self.blocks = nn.Sequential(*model.blocks[:s])

    def forward(self, x):
        return self.blocks(self.bn1(self.conv_stem(x)))


class Tail(nn.Module):
    """Activations entering stage `s` -> pooled features (the part fine-tuning trains). Shares its
    modules with the backbone, so training the tail trains the backbone."""

    def __init__(self, model: nn.Module, s: int):
        super().__init__()
        self.blocks = nn.Sequential(*model.blocks[s:])
        self.conv_head, self.bn2 = model.conv_head, model.bn2
        self._forward_head = model.forward_head  # pooling (and dropout) of the backbone itself

    def forward(self, x):
        return self._forward_head(self.bn2(self.conv_head(self.blocks(x))), pre_logits=True)


class TrunkAndFeatures(nn.Module):
    """Images -> [trunk output, flattened | the backbone's pooled features]: one network for the extraction
    pass that fills both caches (`TrunkViews.keep` splits its rows)."""

    def __init__(self, trunk: Trunk, pool: Tail):
        super().__init__()
        self.trunk, self.pool = trunk, pool

    def forward(self, x):
        t = self.trunk(x)
        return torch.cat([t.flatten(1), self.pool(t)], 1)
