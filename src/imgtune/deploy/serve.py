"""`imgtune serve`: a trained run behind an HTTP API (FastAPI + uvicorn).

    POST /predict   multipart form, field `file` (repeat it for several images) -> top-k labels as JSON;
                    with ?explain=1 each answer also carries a Grad-CAM overlay (base64 PNG, drawn on PyTorch)
    GET  /health    {"status": "ok"}
    GET  /metadata  classes, backbone, image size, temperature, runtime, the run's test metrics
    GET  /          a page of its own (web_page.py): drop images on it, see their labels and probabilities
    GET  /report    the run's report.html
    GET  /docs      the OpenAPI page; /openapi.json lists every status each endpoint answers, with its model

Bad uploads (empty, not an image, too large, a decompression bomb) get a 4xx JSON answer that says
why; the server keeps serving. Decoding uses the same code, with the same limits, as training."""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time.

import base64
import contextlib
import functools
import json
import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import torch

from ..data.images import MAX_PIXELS, BadImage, decode_rgb, decoded_pixels
from ..engine import release_free_memory
from ..errors import ConfigError, require
from ..infer.explain import NO_GRADIENTS, explained_class, overlays_of_inputs, png_bytes
from ..infer.predictor import answer_inputs, model_input
from ..runs.trained import fitted_state, load_run, with_torch
from .runtime import choose_runtime
from .web_page import page

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # per image
MAX_REQUEST_BYTES = 100 * 1024 * 1024  # per request body, counted as it arrives (RequestCap)
MAX_FILES = 64
# decoded pixels per request, from the images' headers: four of the largest images decoding takes
# (data.images.MAX_PIXELS). Images are decoded one at a time and shrunk at once, so memory does not grow
# with this; it bounds the work a small upload of large blank PNGs can ask for.
MAX_REQUEST_PIXELS = 4 * MAX_PIXELS
BATCH = 16  # images decoded, shrunk and predicted together
EXPLAIN_DOC = ("1: add to each answer \"explain\", a Grad-CAM overlay (base64 PNG at the model's input size) "
               "of where the network looked for the predicted class (multi-label: the highest-probability "
               "label). Drawn on PyTorch (under --runtime auto, the run's PyTorch copy); 400 on a server forced to "
               "--runtime onnx.")


def _require():
    # python_multipart: FastAPI's form parser
    require(("fastapi", "python_multipart", "uvicorn"), packages="FastAPI, uvicorn and python-multipart",
            extra="serve", feature="imgtune serve")


class RequestCap:
    """ASGI middleware: a request body over `limit` bytes is answered 413 without reading the rest. A
    declared Content-Length over it is refused before anything is read; a chunked body is counted as it
    arrives and stopped at the limit (it is never spooled to disk in full): whatever the app then does
    with the cut-off body, the client gets the 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(send, f"request of {int(length):,} bytes is over the limit of {self.limit:,}")
        seen, over, answered = 0, False, False

        async def counted():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def guarded(message):
            nonlocal answered
            if not over:
                answered = True
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not answered:
            await self._refuse(send, f"request body is over the limit of {self.limit:,} bytes")

    @staticmethod
    async def _refuse(send, error: str) -> None:
        body = json.dumps({"error": error}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(model, *, top_k: int = 5, min_confidence: float | None = None, tta: bool = False,
               max_bytes: int = MAX_UPLOAD_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES,
               explain_on_torch: bool = False):
    """A FastAPI app around a trained model (a TrainedModel, or an ImageClassifier's). With
    `explain_on_torch` (--runtime auto), explain=1 on an ONNX model draws its maps with the run's PyTorch
    twin, loaded on the first such request; without it, explain=1 needs the torch runtime."""
    _require()
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    m = fitted_state(model)
    s = _schemas()
    explainer = functools.cache(lambda: with_torch(m)) if explain_on_torch else None
    app = FastAPI(title="imgtune", version=str(m.fit_info.get("weights", "")) or "1",
                  description=f"Image classifier over {len(m.classes)} {'labels (multi-label)' if m.task == 'multi' else 'classes'}: "
                              f"{', '.join(m.classes)}.")
    app.add_middleware(RequestCap, limit=max_request_bytes)
    summary = _metrics_summary(m.run_dir)
    report = _report_of(m.run_dir)  # read now: a run replaced while serving must not lend the model its report
    home = page(title=f"imgtune: {os.path.basename(str(m.run_dir)) if m.run_dir else 'classifier'}",
                classes=m.classes, task=m.task, top_k=top_k, min_confidence=min_confidence,
                report=report is not None)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc):  # a missing or misnamed form field, or a bad ?explain= value
        in_query = any(tuple(e.get("loc", ()))[:1] == ("query",) for e in exc.errors())
        return JSONResponse(status_code=422, content={
            "error": "expected explain=0 or explain=1" if in_query else
                     "expected a multipart form with one or more images in the field 'file'",
            "detail": json.loads(json.dumps(exc.errors(), default=str))})

    @app.get("/", response_class=HTMLResponse, summary="A page to classify images in the browser")
    def home_page():
        """Pick or drop images; each is sent to /predict and shown with its label and probabilities."""
        return home

    @app.get("/report", response_class=HTMLResponse, summary="The run's report",
             responses={404: {"description": "the run has no report.html", "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/Error"}}}}})  # not "model": that would say text/html
    def run_report():
        """RUN/report.html of the model being served, as it was when the server started."""
        if report is None:
            raise HTTPException(404, {"error": "this run has no report.html; `imgtune evaluate RUN DATA` writes one"})
        return HTMLResponse(report)

    @app.get("/health", response_model=s.Health)
    def health():
        return {"status": "ok"}

    @app.get("/metadata", response_model=s.Metadata, response_model_exclude_unset=True)
    def meta():
        return {"classes": m.classes, "backbone": m.backbone, "image_size": m.data_config.image_size,
                "temperature": m.temperature, "runtime": m.runtime, "task": m.task,
                **({"thresholds": m.thresholds} if m.task == "multi" else {}),
                "top_k": top_k, "min_confidence": min_confidence, "tta": tta, "max_upload_bytes": max_bytes,
                "metrics": summary}

    @app.post("/predict", response_model=s.LabelSets if m.task == "multi" else s.Predictions,
              response_model_exclude_unset=True, responses={
                  400: {"model": s.Error, "description": "an empty file, a malformed form, or explain=1 on an "
                                                         "ONNX runtime"},
                  413: {"model": s.Error, "description": f"a file over {max_bytes:,} bytes, a request over "
                                                         f"{max_request_bytes:,} bytes, or images that decode to "
                                                         f"over {MAX_REQUEST_PIXELS:,} pixels in all"},
                  415: {"model": s.Error, "description": "a file that is not an image"},
                  422: {"model": s.Error, "description": f"a corrupt or truncated image, a decompression bomb, more "
                                                         f"than {MAX_FILES} files; or no field `file`, or a bad "
                                                         "`explain` (these two with `detail`)"}},
              openapi_extra=UPLOAD_ENCODING)
    def predict(file: Annotated[list[UploadFile], File(description=f"one or more image files (at most {MAX_FILES})",
                                                       json_schema_extra=UPLOAD_SCHEMA)],
                explain: Annotated[bool, Query(description=EXPLAIN_DOC)] = False):
        """Top-k labels with calibrated probabilities for each uploaded image (a multi-label model: the
        label set and every label's probability). With `explain=1`, each answer also has "explain": a
        Grad-CAM overlay as a base64 PNG at the model's input size, for the predicted class (multi-label:
        the highest-probability label); 400 on a server forced to an ONNX runtime, which has no gradients."""
        if explain and m.runtime != "torch" and (explainer is None or explainer() is None):
            raise HTTPException(400, {"error": f"explain=1 needs the torch runtime: {NO_GRADIENTS}; serve with "
                                               f"--runtime torch (this server runs {m.runtime})"})
        if len(file) > MAX_FILES:  # 422 like any other form the document calls invalid (its maxItems)
            raise HTTPException(422, {"error": f"at most {MAX_FILES} images per request; received {len(file)}"})
        _check_pixels(file, m.data_config.image_size)
        transform, answers = model_input(m, tta), []
        # a batch at a time, each image shrunk to the model's input as soon as it is decoded: memory stays
        # flat in the number of files, whatever their size
        for start in range(0, len(file), BATCH):
            chunk = file[start:start + BATCH]
            x = torch.stack([transform(_decoded(upload, max_bytes, m.data_config.image_size)) for upload in chunk])
            rows = answer_inputs(m, x, top_k, min_confidence)
            if m.task == "multi":  # the label set, and every label's calibrated probability
                found = [{"file": upload.filename, "labels": r["labels"], "probabilities": r["probabilities"]}
                         for upload, r in zip(chunk, rows)]
            else:
                found = [{"file": upload.filename, "label": r["label"], "probability": r["probability"],
                          "top_k": [{"label": lab, "probability": p} for lab, p in r["top_k"]]}
                         for upload, r in zip(chunk, rows)]
            if explain:
                drawn = overlays_of_inputs(m if m.runtime == "torch" else explainer(), x[:, 0] if tta else x,
                                           [explained_class(m, r) for r in rows])
                for a, image in zip(found, drawn):
                    a["explain"] = base64.b64encode(png_bytes(image)).decode("ascii")
            answers += found
            del x
            release_free_memory()
        return {"predictions": answers}

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own, and the multipart parser's (malformed forms)
    async def http_error(request, exc):  # {"error": ...} at the top level, not under "detail"
        body = exc.detail if isinstance(exc.detail, dict) else {"error": str(exc.detail)}
        # the headers too: a 405 carries Allow, which HTTP requires
        return JSONResponse(status_code=exc.status_code, content=body, headers=getattr(exc, "headers", None))

    return app


# `file` as OpenAPI should say it: one to MAX_FILES non-empty files (FastAPI's own schema allows none, or
# empty ones, which the server refuses), each an image (any format Pillow reads, whatever the part's
# Content-Type says: the bytes decide)
UPLOAD_SCHEMA = {"minItems": 1, "maxItems": MAX_FILES,
                 "items": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                           "minLength": 1}}
UPLOAD_ENCODING = {"requestBody": {"content": {"multipart/form-data": {"encoding": {
    "file": {"contentType": "image/*"}}}}}}


def _decoded(upload, max_bytes: int, draft_size: int):
    """An upload -> its decoded RGB image; an empty, oversized or unreadable one -> its 4xx."""
    from fastapi import HTTPException

    data = upload.file.read(max_bytes + 1)
    name = upload.filename or "upload"
    if len(data) > max_bytes:
        raise HTTPException(413, {"error": f"{name}: larger than the limit of {max_bytes:,} bytes", "file": name})
    try:
        return decode_rgb(data, draft_size=draft_size)
    except BadImage as e:
        status = 400 if not data else 415 if "not a recognised" in str(e) else 422
        raise HTTPException(status, {"error": f"{name}: {e}", "file": name}) from None


def _check_pixels(uploads, draft_size: int) -> None:
    """413 before anything is decoded when the request's images would decode to more than
    MAX_REQUEST_PIXELS in all (read from their headers): a few kilobytes of PNG can declare gigabytes."""
    from fastapi import HTTPException

    total = sum(decoded_pixels(upload.file, draft_size=draft_size) for upload in uploads)
    if total > MAX_REQUEST_PIXELS:
        raise HTTPException(413, {"error": f"the {len(uploads)} images of this request decode to {total:,} pixels "
                                           f"in all, over the limit of {MAX_REQUEST_PIXELS:,} per request; send "
                                           "fewer images per request, or smaller ones"})


@functools.cache
def _schemas() -> SimpleNamespace:
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


def _report_of(run_dir) -> bytes | None:
    """RUN/report.html's bytes (self-contained, a few MB at most), or None when there is none."""
    if not run_dir:
        return None
    try:
        with open(os.path.join(str(run_dir), "report.html"), "rb") as f:
            return f.read()
    except OSError:
        return None


def _metrics_summary(run_dir) -> dict | None:
    path = os.path.join(str(run_dir or ""), "metrics.json")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        keys = ("map", "macro_f1", "micro_f1", "subset_accuracy", "n_images", "split") if m.get("task") == "multi" \
            else ("accuracy", "macro_f1", "balanced_accuracy", "ece", "n_images", "split")
        return {k: m.get(k) for k in keys}
    except (OSError, ValueError):
        return None


def app_from_environment():
    """uvicorn's factory for --workers N: each worker process loads the run named in the environment,
    which `serve` sets for as long as the server runs."""
    settings = json.loads(os.environ["IMGTUNE_SERVE"])
    model = load_run(settings["run"], device=settings["device"], runtime=settings["runtime"])
    return create_app(model, top_k=settings["top_k"], min_confidence=settings["min_confidence"],
                      tta=settings["tta"], max_bytes=settings["max_bytes"],
                      explain_on_torch=settings["explain_on_torch"])


@dataclass(frozen=True)
class ServeSettings:
    """How `imgtune serve` listens and answers (the flags of the same names)."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    device: str = "auto"
    runtime: str = "auto"  # --runtime auto: deploy.runtime.choose_runtime
    top_k: int = 3
    min_confidence: float | None = None
    tta: bool = False
    max_bytes: int = MAX_UPLOAD_BYTES
    header_timeout: int = 10  # seconds a connection has to send a request's headers


def _check_free(host: str, port: int) -> None:
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({os.strerror(e.errno) if e.errno else e}); choose "
                          "another --port or --host.") from None


def serve(run: str, settings: ServeSettings = ServeSettings()) -> None:
    """Serve the run folder `run` until interrupted."""
    _require()
    import uvicorn

    o = settings
    runtime, why = choose_runtime(run, o.runtime, device=o.device)  # once, before any worker loads the run
    if why:
        print(why, file=sys.stderr, flush=True)
    handed = {"run": run, "device": o.device, "runtime": runtime, "explain_on_torch": o.runtime == "auto", "top_k": o.top_k,
              "min_confidence": o.min_confidence, "tta": o.tta, "max_bytes": o.max_bytes}
    with _environment("IMGTUNE_SERVE", json.dumps(handed)):  # for the worker processes' factory
        app = app_from_environment()  # loaded here first, so a bad run folder fails before the server starts
        _check_free(o.host, o.port)
        print(f"Serving {run} on http://{o.host}:{o.port} (API page: http://{o.host}:{o.port}/docs); Ctrl-C "
              "stops.", flush=True)
        server = dict(host=o.host, port=o.port, log_level="warning", timeout_keep_alive=o.header_timeout,
                      http="imgtune.deploy.serve_protocol:HeaderDeadline")
        if o.workers == 1:
            uvicorn.run(app, **server)
        else:  # each worker process builds its own app from the environment
            uvicorn.run("imgtune.deploy.serve:app_from_environment", factory=True, workers=o.workers, **server)


@contextlib.contextmanager
def _environment(name: str, value: str):
    """`name` set to `value` inside, as it was after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
