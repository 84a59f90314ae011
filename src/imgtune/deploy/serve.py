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

import contextlib
import functools
import json
import os
import sys
from dataclasses import dataclass
from typing import Annotated

from ..errors import ConfigError, require
from ..infer.explain import NO_GRADIENTS
from ..runs.trained import fitted_state, load_run, with_torch
from .runtime import choose_runtime
from .serve_schemas import EXPLAIN_DOC, UPLOAD_ENCODING, UPLOAD_SCHEMA, predict_responses, schemas
from .uploads import MAX_FILES, MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES, RequestCap, answer_uploads, check_pixels
from .web_page import page


def _require():
    # python_multipart: FastAPI's form parser
    require(("fastapi", "python_multipart", "uvicorn"), packages="FastAPI, uvicorn and python-multipart",
            extra="serve", feature="imgtune serve")


def create_app(model, *, top_k: int = 5, min_confidence: float | None = None, tta: bool = False,
               max_bytes: int = MAX_UPLOAD_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES,
               explain_on_torch: bool = False):
    """A FastAPI app around a trained model (a TrainedModel, or an ImageClassifier's). With
    `explain_on_torch` (--runtime auto), explain=1 on an ONNX model draws its maps with the run's PyTorch
    twin, loaded on the first such request; without it, explain=1 needs the torch runtime."""
    _require()
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    m = fitted_state(model)
    s = schemas()
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

    answer = functools.partial(answer_uploads, m, top_k=top_k, min_confidence=min_confidence, tta=tta,
                               max_bytes=max_bytes)
    _add_predict(app, m, s.LabelSets if m.task == "multi" else s.Predictions,
                 predict_responses(s.Error, max_bytes, max_request_bytes), answer, explainer)
    answer_errors_in_json(app)
    return app


def _add_predict(app, m, answers, responses: dict, answer, explainer) -> None:
    """POST /predict: `answer(uploads, explain_with=...)` (uploads.answer_uploads with the server's
    options) after the checks that need no decoding; `answers` and `responses` for the OpenAPI document."""
    from fastapi import File, HTTPException, Query, UploadFile

    @app.post("/predict", response_model=answers, response_model_exclude_unset=True, responses=responses,
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
        check_pixels(file, m.data_config.image_size)
        drawn_by = None if not explain else m if m.runtime == "torch" else explainer()
        return {"predictions": answer(file, explain_with=drawn_by)}


def answer_errors_in_json(app) -> None:
    """Every error as {"error": ...} JSON at the top level: a form or query FastAPI cannot validate (422,
    with its `detail`), and FastAPI's and the multipart parser's own HTTP errors (malformed forms, 404, 405)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc):  # a missing or misnamed form field, or a bad ?explain= value
        in_query = any(tuple(e.get("loc", ()))[:1] == ("query",) for e in exc.errors())
        return JSONResponse(status_code=422, content={
            "error": "expected explain=0 or explain=1" if in_query else
                     "expected a multipart form with one or more images in the field 'file'",
            "detail": json.loads(json.dumps(exc.errors(), default=str))})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # {"error": ...} at the top level, not under "detail"
        body = exc.detail if isinstance(exc.detail, dict) else {"error": str(exc.detail)}
        # the headers too: a 405 carries Allow, which HTTP requires
        return JSONResponse(status_code=exc.status_code, content=body, headers=getattr(exc, "headers", None))


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
