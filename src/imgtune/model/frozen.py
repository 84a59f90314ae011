"""The frozen part of a backbone, made fast for feature extraction.

Nothing trains here, so the network can be rewritten for speed as long as its outputs stay the same:

- TF-ported weights pad "same" on the fly (timm's Conv2dSame pads every call, from the input's size).
  For one image size the padding is fixed: it becomes the convolution's own padding where it is
  symmetric, and a constant zero pad in front of it where it is not.
- On CPU with ONNX Runtime installed, and a job large enough to repay the export (WORTH_EXPORTING), the
  network is exported once per backbone, weights, image size and split point (kept in the cache folder)
  and run by ONNX Runtime, which folds every BatchNorm into its
  convolution and the constant pads into the convolutions' own. Its outputs are checked against PyTorch
  on a random batch before it is used; any trouble falls back to PyTorch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_bytes_atomic

MAX_DIFF = 1e-3  # largest |difference| from PyTorch accepted for the ONNX Runtime copy
# Images x pixels a fit's data must reach for the ONNX Runtime copy to repay its export (about 1 s of a
# core for each of up to three parts of the network, where ONNX Runtime saves some 25 ms per 224-pixel
# image and pass over PyTorch, and a fit passes each image through three or four times): 50 images at
# 224 px, 2,450 at 32 px. Smaller jobs run on PyTorch, with the padding fixed.
WORTH_EXPORTING = 50 * 224 * 224


def fixed_padding(net: nn.Module, image_size: int) -> nn.Module:
    """A copy of `net` whose dynamic "same"-padding convolutions have their padding fixed for
    `image_size` inputs (the same outputs at that size, no padding computed per call)."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding

    net = copy.deepcopy(net).eval()
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: sizes.__setitem__(name, args[0].shape[-2:]))
             for name, m in net.named_modules() if isinstance(m, Conv2dSame)]
    with torch.inference_mode():
        net(torch.zeros(1, 3, image_size, image_size))
    for h in hooks:
        h.remove()
    for name, (ih, iw) in sizes.items():
        old = net.get_submodule(name)
        ph = get_same_padding(ih, old.kernel_size[0], old.stride[0], old.dilation[0])
        pw = get_same_padding(iw, old.kernel_size[1], old.stride[1], old.dilation[1])
        symmetric = ph % 2 == 0 and pw % 2 == 0
        conv = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride,
                         (ph // 2, pw // 2) if symmetric else 0, old.dilation, old.groups, old.bias is not None)
        conv.load_state_dict(old.state_dict())
        new = conv if symmetric else nn.Sequential(nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), conv)
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return net


def fast_frozen(net: nn.Module, image_size: int, *, device: torch.device, cache_root: str | os.PathLike,
                key_info: dict, images: int | None = None) -> nn.Module:
    """The fastest faithful version of the frozen `net` for `image_size` inputs on `device`, for a fit
    over `images` images (None: as many as it takes to repay the ONNX Runtime copy)."""
    fixed = fixed_padding(net, image_size).to(device)
    small = images is not None and images * image_size ** 2 < WORTH_EXPORTING
    if device.type != "cpu" or small or os.environ.get("IMGTUNE_ONNX_EXTRACTION", "1") == "0":
        return fixed
    try:
        from .onnx_module import OnnxModule, trace

        structure = hashlib.sha256(repr(fixed).encode()).hexdigest()[:16]  # what the network computes
        info = {**key_info, "image_size": image_size, "torch": torch.__version__, "structure": structure}
        key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:20]
        path = Path(cache_root) / "onnx" / f"{key}.onnx"
        if not path.is_file():
            write_bytes_atomic(path, trace(fixed.cpu(), image_size, ("features",)), durable=False)
        try:
            fast = OnnxModule(path, per_core=True)
        except Exception:  # noqa: BLE001  damaged: export it again next time
            path.unlink(missing_ok=True)
            raise
        x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            if fast(x).shape != fixed(x).shape or (fast(x) - fixed(x)).abs().max().item() > MAX_DIFF:
                path.unlink(missing_ok=True)
                return fixed
        return fast
    except Exception:  # noqa: BLE001  no onnxruntime, an unexportable layer, a damaged file: PyTorch will do
        return fixed
