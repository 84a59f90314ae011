"""Running an exported model with ONNX Runtime, behind the same interface as the PyTorch model: a module
that takes a normalised image batch and returns logits, so predict, evaluate and TTA work unchanged.

An ONNX file is checked before ONNX Runtime opens it: tensors stored as external data must live in the
model's own folder (a crafted `location` such as ../../etc/passwd is refused)."""

from __future__ import annotations

import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import RunFolderError, require

METADATA_KEY = "imgtune"


def require_onnx():
    """(onnx, onnxruntime), or one MissingDependency naming the extra."""
    return tuple(require(("onnx", "onnxruntime"), packages="the onnx and onnxruntime packages", extra="onnx",
                         feature="ONNX support"))


def read_checked(path: str | os.PathLike):
    """Load an ONNX file's graph (without external tensors) and refuse external data outside its folder."""
    onnx, _ = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{str(path)!r} is missing: run `imgtune export RUN` first.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError; any failure means "not a model"
        raise RunFolderError(f"{str(path)!r} is not a valid ONNX file ({type(e).__name__}); it may be "
                             "truncated or tampered with. Export it again.") from None
    folder = path.resolve().parent
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            target = (folder / location).resolve()
            if os.path.isabs(location) or folder not in target.parents:
                raise RunFolderError(f"{str(path)!r} stores tensor {tensor.name!r} in {location!r}, outside its "
                                     "own folder: refused.")
    return model


def trace(model: nn.Module, image_size: int, outputs: tuple[str, ...] = ("logits",)) -> bytes:
    """`model` as ONNX (opset 17) with a dynamic batch axis: input "images" [B, 3, S, S], one output
    per name (the module returns a tuple when there are several)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, 3, image_size, image_size),), buf, dynamo=False,
                          input_names=["images"], output_names=list(outputs), opset_version=17,
                          dynamic_axes={"images": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
    return buf.getvalue()


def metadata(model) -> dict:
    props = {p.key: p.value for p in model.metadata_props}
    try:
        return json.loads(props[METADATA_KEY])
    except (KeyError, ValueError):
        return {}


class OnnxModule(nn.Module):
    """An ONNX Runtime session as a module: [B, 3, H, W] float tensor -> [B, K] logits."""

    runs_without_gil = True  # ONNX Runtime releases the GIL: decoding can share the process

    def __init__(self, path: str | os.PathLike, *, per_core: bool = False):
        super().__init__()
        model = read_checked(path)
        self.metadata = metadata(model)
        _, ort = require_onnx()
        options = ort.SessionOptions()
        self.parts = max(1, torch.get_num_threads()) if per_core else 1
        if per_core:
            # Throughput: each core runs a single-threaded copy of the graph on its share of the batch.
            # As fast as one run on all cores, and a core busy with something else (decoding the next
            # batch) delays only its own share instead of stalling every operator of the others.
            options.intra_op_num_threads = 1
            self.workers = ThreadPoolExecutor(self.parts, thread_name_prefix="onnx")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RunFolderError(f"ONNX Runtime cannot open {str(path)!r}: {str(e).splitlines()[0][:300]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [self.session.get_outputs()[0].name]  # logits; a multi-label file also has probabilities

    def run(self, x: np.ndarray) -> np.ndarray:
        """The logits (the first output) of a batch."""
        return self.session.run(self.outputs, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().numpy()
        if self.parts == 1 or len(x) < 2:
            return torch.from_numpy(self.run(x))
        shares = np.array_split(x, min(self.parts, len(x)))  # no empty share when cores outnumber images
        return torch.from_numpy(np.concatenate(list(self.workers.map(self.run, shares))))
