"""`imgtune review RUN`: a page on this machine that walks a person through what the run flagged
(diagnose/flagged.py), one image at a time, and saves each decision at once to RUN/corrections.csv
(data/corrections.py), written whole and atomically, so that closing the browser or stopping the server
loses nothing and opening it again continues where it stopped. The CSV may be edited by hand too: it is
read back at every start.

    GET  /               the page (self-contained: no network)
    GET  /items          the flagged images, the classes and every decision so far (JSON)
    GET  /image/N        image N as a JPEG of at most 320 pixels
    GET  /cam/N          Grad-CAM of image N for the suggested class (PNG), where one is suggested
    POST /decide         {"index": N, "action": "keep"|"relabel"|"exclude", "label": ..., "reason": ...}

Decisions name images by their index in the flagged list, so the page can decide on nothing else."""

from __future__ import annotations

import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .data.corrections import ACTIONS, Correction, decided, latest, read_corrections, write_corrections
from .data.images import BadImage, load_rgb
from .diagnose.flagged import flagged
from .errors import ConfigError, DataError
from .runs.folder import RunFolder

THUMBNAIL = 320
REQUEST_TIMEOUT = 10  # seconds a request may take to arrive; the server waits for requests in flight when it stops


class Review:
    """The state behind the page: the run, its flagged images, the decisions, and a lock that makes each
    decision and its write one step."""

    def __init__(self, run: str | os.PathLike):
        self.run = RunFolder(run)
        if not self.run.config.exists():
            raise DataError(f"{str(self.run.path)!r} is not a run folder (no config.json).")
        config = json.loads(self.run.config.read_text())
        if config.get("task") == "multi":
            raise DataError(f"{str(self.run.path)!r} is a multi-label run: review and corrections take "
                            "single-label runs (one class per image).")
        self.classes = config["classes"]
        self.items = flagged(self.run)
        self.decisions: dict[str, Correction] = latest(read_corrections(self.run.corrections)) \
            if self.run.corrections.exists() else {}
        self.lock = threading.Lock()
        self._model = None

    def state(self) -> dict:
        rows = []
        for i, it in enumerate(self.items):
            d = self.decisions.get(it["path"])
            rows.append({**it, "index": i, "name": os.path.basename(it["path"]),
                         "decision": None if d is None else {"action": d.action, "label": d.label, "reason": d.reason}})
        return {"run": str(self.run.path), "classes": self.classes, "items": rows,
                "corrections": str(self.run.corrections)}

    def decide(self, index: int, action: str, label: str = "", reason: str = "") -> Correction:
        if not 0 <= index < len(self.items):
            raise ValueError(f"no flagged image {index}")
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        if action == "relabel" and label not in self.classes:
            raise ValueError(f"label must be one of the run's classes {self.classes}")
        c = decided(self.items[index]["path"], action, label, reason)
        with self.lock:
            self.decisions.pop(c.path, None)  # a changed mind goes to the end, as the latest decision
            self.decisions[c.path] = c
            write_corrections(self.run.corrections, self.decisions)
        return c

    def thumbnail(self, index: int) -> bytes:
        img = load_rgb(self.items[index]["path"], draft_size=THUMBNAIL)
        img.thumbnail((THUMBNAIL, THUMBNAIL))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=88)
        return buf.getvalue()

    def load_model(self) -> None:
        """The run's network, for the Grad-CAM maps: loaded once, before serving, in the main thread (an
        import still running in a request's thread when Ctrl-C ends the process can hang its exit)."""
        from .runs.trained import load_run

        if self._model is None and any(it.get("suggested") in self.classes for it in self.items):
            self._model = load_run(self.run.path, device="cpu")

    def cam(self, index: int) -> bytes | None:
        """The Grad-CAM overlay for the suggested class; None where nothing is suggested."""
        from .infer.explain import overlays, png_bytes

        item = self.items[index]
        if item.get("suggested") not in self.classes:
            return None
        self.load_model()
        img = load_rgb(item["path"])
        with self.lock:  # one backward pass at a time through the one model
            return png_bytes(overlays(self._model, [img], [self.classes.index(item["suggested"])])[0])


def list_items(review: Review) -> str:
    """What --list prints: one line per flagged image, with its decision where there is one."""
    state = review.state()
    lines = [f"{len(state['items']):,} flagged images in {state['run']} "
             f"({sum(r['decision'] is not None for r in state['items']):,} decided, in {state['corrections']}):"]
    for r in state["items"]:
        d = r["decision"]
        decision = "" if d is None else f"  [decided: {d['action']}{' ' + d['label'] if d['label'] else ''}]"
        suggested = f", suggested {r['suggested']}" if r["suggested"] else ""
        confidence = f" ({r['confidence']:.2f})" if r["confidence"] is not None else ""
        lines.append(f"{r['index'] + 1:>4}. {r['kind']:<9} {r['path']}  given {r['label']}{suggested}{confidence}"
                     f"{decision}\n      {r['why']}")
    return "\n".join(lines)


def make_handler(review: Review, page: str):
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT  # a client that stalls mid-request does not hold the server's stop

        def log_message(self, *args):  # quiet: the console is the person's
            pass

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, doc) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json")

        def _index(self, prefix: str) -> int | None:
            tail = self.path[len(prefix):]
            return int(tail) if tail.isdigit() and int(tail) < len(review.items) else None

        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path in ("/", "/index.html"):
                return self._send(200, page.encode(), "text/html; charset=utf-8")
            if self.path == "/items":
                return self._json(200, review.state())
            for prefix, make, kind in (("/image/", review.thumbnail, "image/jpeg"), ("/cam/", review.cam, "image/png")):
                if self.path.startswith(prefix):
                    i = self._index(prefix)
                    if i is None:
                        return self._json(404, {"error": "no such flagged image"})
                    try:
                        body = make(i)
                    except BadImage as e:
                        return self._json(422, {"error": str(e)})
                    if body is None:
                        return self._json(404, {"error": "nothing suggested for this image"})
                    return self._send(200, body, kind)
            return self._json(404, {"error": f"no page {self.path}"})

        def do_POST(self):  # noqa: N802
            if self.path != "/decide":
                return self._json(404, {"error": f"no page {self.path}"})
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= 65536:
                    raise ValueError("a JSON body of at most 64 KB is expected")
                body = json.loads(self.rfile.read(length))
                c = review.decide(int(body["index"]), str(body["action"]), str(body.get("label") or ""),
                                  str(body.get("reason") or ""))
            except (ValueError, KeyError, TypeError) as e:
                return self._json(400, {"error": str(e)})
            return self._json(200, {"path": c.path, "action": c.action, "label": c.label,
                                    "decided": len(review.decisions)})

    return Handler


class QuietServer(ThreadingHTTPServer):
    """A thread per request; a browser that drops a request (moving on before an image arrived) is not
    an error to print. server_close waits for the requests in flight: a thread left drawing a Grad-CAM
    map in PyTorch while the interpreter exits aborts the process ("terminate called without an active
    exception", seen on a busy machine). Every request reads and answers in one go (HTTP/1.0, a socket
    timeout of REQUEST_TIMEOUT seconds), so that wait is short."""

    daemon_threads = False

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def serve_review(run: str | os.PathLike, host: str = "127.0.0.1", port: int = 8001, *, ready=print) -> None:
    """Serve the review page until interrupted; `ready` hears the URL once the port is bound."""
    from .report.review_page import build_review_page

    review = Review(run)
    review.load_model()
    try:
        server = QuietServer((host, port), make_handler(review, build_review_page()))
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port.") from None
    url = f"http://{host}:{server.server_address[1]}/"
    decided_now = sum(it["path"] in review.decisions for it in review.items)
    ready(f"Reviewing {len(review.items):,} flagged images of {review.run.path} ({decided_now:,} already decided) "
          f"on {url}\nEach decision is saved at once to {review.run.corrections}; Ctrl-C stops. Then: imgtune "
          f"retrain {review.run.path}")
    try:
        server.serve_forever()
    finally:
        server.server_close()

