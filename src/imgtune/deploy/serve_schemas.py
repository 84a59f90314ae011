"""The serve API's OpenAPI contract: the answers' pydantic models and how the upload field is described."""

import functools
from types import SimpleNamespace
from typing import Any, Literal

from .uploads import MAX_FILES, MAX_REQUEST_PIXELS

EXPLAIN_DOC = ("1: add to each answer \"explain\", a Grad-CAM overlay (base64 PNG at the model's input size) "
               "of where the network looked for the predicted class (multi-label: the highest-probability "
               "label). Drawn on PyTorch (under --runtime auto, the run's PyTorch copy); 400 on a server forced to "
               "--runtime onnx.")

# `file` as OpenAPI should say it: one to MAX_FILES non-empty files (FastAPI's own schema allows none, or
# empty ones, which the server refuses), each an image (any format Pillow reads, whatever the part's
# Content-Type says: the bytes decide)
UPLOAD_SCHEMA = {"minItems": 1, "maxItems": MAX_FILES,
                 "items": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                           "minLength": 1}}
UPLOAD_ENCODING = {"requestBody": {"content": {"multipart/form-data": {"encoding": {
    "file": {"contentType": "image/*"}}}}}}


@functools.cache
def schemas() -> SimpleNamespace:
    """The answers' pydantic models, for /docs and the OpenAPI document. Built on first use: pydantic
    comes with FastAPI, which only serving needs."""
    from pydantic import BaseModel, Field

    class Error(BaseModel):
        """Every 4xx answer."""

        error: str = Field(description="what was wrong, in one line")
        file: str | None = Field(None, description="the upload it concerns, where it concerns one")
        detail: list[dict[str, Any]] | None = Field(None, description="422 on a missing field or a bad query "
                                                                       "value: the validation errors")

    class Health(BaseModel):
        status: Literal["ok"]

    class Scored(BaseModel):
        label: str
        probability: float = Field(description="calibrated, from 0 to 1")

    class Prediction(BaseModel):
        file: str | None = Field(description="the upload's file name")
        label: str = Field(description="the most probable class, or \"unknown\" when its probability is under "
                                       "the server's --min-confidence")
        probability: float = Field(description="the most probable class's calibrated probability")
        top_k: list[Scored] = Field(description="the K most probable classes, most probable first")
        explain: str | None = Field(None, description="with explain=1: a Grad-CAM overlay, base64 PNG")

    class LabelSet(BaseModel):
        file: str | None = Field(description="the upload's file name")
        labels: list[str] = Field(description="every label whose probability reaches its threshold")
        probabilities: dict[str, float] = Field(description="every label's calibrated probability")
        explain: str | None = Field(None, description="with explain=1: a Grad-CAM overlay, base64 PNG")

    class Predictions(BaseModel):
        predictions: list[Prediction] = Field(description="one per uploaded file, in order")

    class LabelSets(BaseModel):
        predictions: list[LabelSet] = Field(description="one per uploaded file, in order")

    class Metadata(BaseModel):
        classes: list[str]
        backbone: str
        image_size: int
        temperature: float | list[float] = Field(description="the calibration temperature (one per label for "
                                                             "a multi-label model)")
        runtime: str
        task: Literal["single", "multi"]
        thresholds: list[float] | None = Field(None, description="multi-label: each label's threshold")
        top_k: int
        min_confidence: float | None
        tta: bool
        max_upload_bytes: int
        metrics: dict[str, float | int | str | None] | None = Field(description="the run's test metrics, if "
                                                                               "it has metrics.json")

    return SimpleNamespace(Error=Error, Health=Health, Predictions=Predictions, LabelSets=LabelSets,
                           Metadata=Metadata)


def predict_responses(error, max_bytes: int, max_request_bytes: int) -> dict:
    """POST /predict's error answers as the OpenAPI document lists them, each with the `error` model."""
    return {
        400: {"model": error, "description": "an empty file, a malformed form, or explain=1 on an ONNX runtime"},
        413: {"model": error, "description": f"a file over {max_bytes:,} bytes, a request over "
                                             f"{max_request_bytes:,} bytes, or images that decode to over "
                                             f"{MAX_REQUEST_PIXELS:,} pixels in all"},
        415: {"model": error, "description": "a file that is not an image"},
        422: {"model": error, "description": f"a corrupt or truncated image, a decompression bomb, more than "
                                             f"{MAX_FILES} files; or no field `file`, or a bad `explain` (these "
                                             "two with `detail`)"}}
