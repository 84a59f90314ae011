"""`imgtune serve`: a trained run behind an HTTP API (FastAPI + uvicorn).

    POST /predict   multipart form, field `file` (repeat it for several images) -> top-k labels as JSON;
                    with ?explain=1 each answer also carries a Grad-CAM overlay (base64 PNG, torch runtime)
    GET  /health    {"status": "ok"}
    GET  /metadata  classes, backbone, image size, temperature, runtime, the run's test metrics
    GET  /docs      the OpenAPI page

Bad uploads (empty, not an image, too large, a decompression bomb) get a 4xx JSON answer that says
why; the server keeps serving. Decoding uses the same code, with the same limits, as training."""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time.

import base64
import contextlib
import json
import os
from dataclasses import dataclass

from ..data.images import BadImage, decode_rgb
from ..errors import ConfigError, require
from ..infer.explain import NO_GRADIENTS, explained_class, overlays, png_bytes
from ..infer.predictor import predict as predict_images
from ..runs.trained import fitted_state, load_run

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # per image
MAX_REQUEST_BYTES = 100 * 1024 * 1024  # per request body, counted as it arrives (RequestCap)
MAX_FILES = 64
EXPLAIN_DOC = ("1: add to each answer \"explain\", a Grad-CAM overlay (base64 PNG at the model's input size) "
               "of where the network looked for the predicted class (multi-label: the highest-probability "
               "label). Needs the torch runtime: 400 on ONNX.")


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
               max_bytes: int = MAX_UPLOAD_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES):
    """A FastAPI app around a trained model (a TrainedModel, or an ImageClassifier's)."""
    _require()
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    m = fitted_state(model)
    app = FastAPI(title="imgtune", version=str(m.fit_info.get("weights", "")) or "1",
                  description=f"Image classifier over {len(m.classes)} {'labels (multi-label)' if m.task == 'multi' else 'classes'}: "
                              f"{', '.join(m.classes)}.")
    app.add_middleware(RequestCap, limit=max_request_bytes)
    summary = _metrics_summary(m.run_dir)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc):  # a missing or misnamed form field, or a bad ?explain= value
        in_query = any(tuple(e.get("loc", ()))[:1] == ("query",) for e in exc.errors())
        return JSONResponse(status_code=422, content={
            "error": "expected explain=0 or explain=1" if in_query else
                     "expected a multipart form with one or more images in the field 'file'",
            "detail": json.loads(json.dumps(exc.errors(), default=str))})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata")
    def meta() -> dict:
        return {"classes": m.classes, "backbone": m.backbone, "image_size": m.data_config.image_size,
                "temperature": m.temperature, "runtime": m.runtime, "task": m.task,
                **({"thresholds": m.thresholds} if m.task == "multi" else {}),
                "top_k": top_k, "min_confidence": min_confidence, "tta": tta, "max_upload_bytes": max_bytes,
                "metrics": summary}

    @app.post("/predict")
    def predict(file: list[UploadFile] = File(..., description="one or more image files"),
                explain: bool = Query(False, description=EXPLAIN_DOC)) -> dict:
        """Top-k labels with calibrated probabilities for each uploaded image (a multi-label model: the
        label set and every label's probability). With `explain=1`, each answer also has "explain": a
        Grad-CAM overlay as a base64 PNG at the model's input size, for the predicted class (multi-label:
        the highest-probability label); 400 on an ONNX runtime, which has no gradients."""
        if explain and m.runtime != "torch":
            raise HTTPException(400, {"error": f"explain=1 needs the torch runtime: {NO_GRADIENTS}; serve with "
                                               f"--runtime torch (this server runs {m.runtime})"})
        if len(file) > MAX_FILES:
            raise HTTPException(413, {"error": f"at most {MAX_FILES} images per request; received {len(file)}"})
        images = []
        for upload in file:
            data = upload.file.read(max_bytes + 1)
            name = upload.filename or "upload"
            if len(data) > max_bytes:
                raise HTTPException(413, {"error": f"{name}: larger than the limit of {max_bytes:,} bytes",
                                          "file": name})
            try:
                images.append(decode_rgb(data, draft_size=m.data_config.image_size))
            except BadImage as e:
                status = 400 if not data else 415 if "not a recognised" in str(e) else 422
                raise HTTPException(status, {"error": f"{name}: {e}", "file": name}) from None
        rows = predict_images(m, images, top_k=top_k, tta=tta, min_confidence=min_confidence)
        if m.task == "multi":  # the label set, and every label's calibrated probability
            answers = [{"file": upload.filename, "labels": r["labels"], "probabilities": r["probabilities"]}
                       for upload, r in zip(file, rows)]
        else:
            answers = [{"file": upload.filename, "label": r["label"], "probability": r["probability"],
                        "top_k": [{"label": lab, "probability": p} for lab, p in r["top_k"]]}
                       for upload, r in zip(file, rows)]
        if explain:
            for a, image in zip(answers, overlays(m, images, [explained_class(m, r) for r in rows])):
                a["explain"] = base64.b64encode(png_bytes(image)).decode("ascii")
        return {"predictions": answers}

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own, and the multipart parser's (malformed forms)
    async def http_error(request, exc):  # {"error": ...} at the top level, not under "detail"
        body = exc.detail if isinstance(exc.detail, dict) else {"error": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content=body)

    return app


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
                      tta=settings["tta"], max_bytes=settings["max_bytes"])


@dataclass(frozen=True)
class ServeSettings:
    """How `imgtune serve` listens and answers (the flags of the same names)."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    device: str = "auto"
    runtime: str = "torch"
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
    handed = {"run": run, "device": o.device, "runtime": o.runtime, "top_k": o.top_k,
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
