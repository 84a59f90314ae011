"""What the server does with the images of a request: the limits, the middleware that caps a request's
body, and the uploads decoded, shrunk and answered a batch at a time (memory flat in the number of files,
whatever their size)."""

import base64
import json

import torch

from ..data.images import MAX_PIXELS, BadImage, decode_rgb, decoded_pixels
from ..devices import release_free_memory
from ..infer.explain import explained_class, overlays_of_inputs, png_bytes
from ..infer.predictor import answer_inputs, model_input

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # per image
MAX_REQUEST_BYTES = 100 * 1024 * 1024  # per request body, counted as it arrives (RequestCap)
MAX_FILES = 64
# decoded pixels per request, from the images' headers: four of the largest images decoding takes
# (data.images.MAX_PIXELS). Images are decoded one at a time and shrunk at once, so memory does not grow
# with this; it bounds the work a small upload of large blank PNGs can ask for.
MAX_REQUEST_PIXELS = 4 * MAX_PIXELS
BATCH = 16  # images decoded, shrunk and predicted together


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


def answer_uploads(m, uploads, *, top_k: int, min_confidence: float | None, tta: bool, max_bytes: int,
                   explain_with=None) -> list[dict]:
    """One answer per upload, in order: a batch at a time, each image shrunk to the model's input as soon
    as it is decoded. `explain_with` (a torch TrainedModel) adds each answer's Grad-CAM overlay."""
    transform, answers = model_input(m, tta), []
    for start in range(0, len(uploads), BATCH):
        chunk = uploads[start:start + BATCH]
        x = torch.stack([transform(decoded_upload(upload, max_bytes, m.data_config.image_size)) for upload in chunk])
        rows = answer_inputs(m, x, top_k, min_confidence)
        if m.task == "multi":  # the label set, and every label's calibrated probability
            found = [{"file": upload.filename, "labels": r["labels"], "probabilities": r["probabilities"]}
                     for upload, r in zip(chunk, rows)]
        else:
            found = [{"file": upload.filename, "label": r["label"], "probability": r["probability"],
                      "top_k": [{"label": lab, "probability": p} for lab, p in r["top_k"]]}
                     for upload, r in zip(chunk, rows)]
        if explain_with is not None:
            drawn = overlays_of_inputs(explain_with, x[:, 0] if tta else x, [explained_class(m, r) for r in rows])
            for a, image in zip(found, drawn):
                a["explain"] = base64.b64encode(png_bytes(image)).decode("ascii")
        answers += found
        del x
        release_free_memory()
    return answers


def decoded_upload(upload, max_bytes: int, draft_size: int):
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


def check_pixels(uploads, draft_size: int) -> None:
    """413 before anything is decoded when the request's images would decode to more than
    MAX_REQUEST_PIXELS in all (read from their headers): a few kilobytes of PNG can declare gigabytes."""
    from fastapi import HTTPException

    total = sum(decoded_pixels(upload.file, draft_size=draft_size) for upload in uploads)
    if total > MAX_REQUEST_PIXELS:
        raise HTTPException(413, {"error": f"the {len(uploads)} images of this request decode to {total:,} pixels "
                                           f"in all, over the limit of {MAX_REQUEST_PIXELS:,} per request; send "
                                           "fewer images per request, or smaller ones"})
