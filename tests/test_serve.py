"""`imgtune serve`: the real server on a loopback port answers good uploads, refuses bad ones with 4xx
JSON and keeps serving. Also --min-confidence and TensorBoard logs."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from conftest import make_image
from corpus import bomb_png

from imgtune import ImageClassifier
from imgtune.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, files=(), field: str = "file"):
    """POST files as multipart (or GET without files) -> (status, JSON body)."""
    if files:
        boundary = uuid.uuid4().hex
        body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                        f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                        for name, data in files) + f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    else:
        req = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _start_server(run, *flags):
    """`imgtune serve` on a free loopback port -> (process, URL). The port is free when chosen but may be
    taken before the server binds it: a server that exits saying so is started again on another one.
    Waits as long as a busy machine needs to import torch, and no longer than the process lives."""
    for _ in range(5):
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "imgtune", "serve", str(run), "--port", str(port), *flags],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if _request(url + "/health")[0] == 200:
                    return proc, url
            except OSError:
                time.sleep(0.25)
        proc.kill()
        output = proc.communicate()[0].decode()
        if "in use" not in output.lower():  # imgtune's own check, or uvicorn's bind
            pytest.fail(f"server did not start: {output[-2000:]}")
    pytest.fail("no free port found in 5 tries")


@pytest.fixture(scope="module")
def served(trained_run):
    """The server process and its URL."""
    run, _, _ = trained_run
    proc, url = _start_server(run, "--max-upload-mb", "1", "--top-k", "3")
    yield proc, url
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(served):
    return served[1]


def test_predict_endpoint_labels_uploaded_images(server):
    rng = np.random.default_rng(11)
    status, body = _request(server + "/predict", [("a.png", _png(make_image("circle", rng))),
                                                  ("b.png", _png(make_image("square", rng)))])
    assert status == 200
    labels = [p["label"] for p in body["predictions"]]
    assert labels == ["circle", "square"] and [p["file"] for p in body["predictions"]] == ["a.png", "b.png"]
    assert all(abs(sum(t["probability"] for t in p["top_k"]) - 1) < 1e-4 for p in body["predictions"])


@pytest.mark.parametrize("name,data,status", [
    ("notes.jpg", b"<html>not an image</html>", 415),
    ("empty.png", b"", 400),
    ("bomb.png", bomb_png(), 422),
    ("half.png", _png(make_image("circle", np.random.default_rng(1), size=64))[:300], 422),
    ("huge.png", b"\x89PNG" + b"\0" * (1_100_000), 413),
])
def test_bad_uploads_get_a_4xx_reason_and_the_server_keeps_serving(server, name, data, status):
    code, body = _request(server + "/predict", [(name, data)])
    assert code == status and name in body["error"]
    assert _request(server + "/health") == (200, {"status": "ok"})


def test_missing_field_metadata_and_openapi(server):
    code, body = _request(server + "/predict", [("a.png", b"x")], field="image")
    assert code == 422 and "'file'" in body["error"]
    code, meta = _request(server + "/metadata")
    assert code == 200 and meta["classes"] == ["circle", "square", "triangle"] and meta["metrics"]["accuracy"] > 0.5
    code, spec = _request(server + "/openapi.json")
    assert code == 200 and "/predict" in spec["paths"]


def test_min_confidence_labels_doubtful_images_unknown(trained_run, capsys, tmp_path):
    run, data, _ = trained_run
    clf = ImageClassifier.load(run, quiet=True)
    image = make_image("triangle", np.random.default_rng(4))
    p = clf.predict(image)[0]["probability"]
    assert clf.predict(image, min_confidence=p - 1e-9)[0]["label"] == "triangle"
    assert clf.predict(image, min_confidence=min(1.0, p + 1e-9))[0]["label"] == "unknown"
    # from the CLI: exactly the images under the threshold (here the median confidence) are "unknown"
    plain = {r["path"]: r for r in clf.predict(str(data / "circle"))}
    threshold = float(np.median([r["probability"] for r in plain.values()]))
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(data / "circle"), "--min-confidence", repr(threshold),
                 "--output", str(out), "--quiet"]) == 0
    labels = {ln.split(",")[0]: ln.split(",")[1] for ln in out.read_text().splitlines()[1:]}
    assert labels.keys() == plain.keys()
    for path, label in labels.items():
        r = plain[path]
        assert label == ("unknown" if r["probability"] < threshold else r["label"]), (r, label)
    with pytest.raises(SystemExit) as bad_flag:
        main(["predict", str(run), str(data / "circle"), "--min-confidence", "1.5"])
    assert bad_flag.value.code == 2
    assert "from 0 to 1" in capsys.readouterr().err
    assert "Rejecting unknown images" in (run / "report.html").read_text()


def test_tensorboard_scalars_can_be_read_back(tmp_path):
    from conftest import write_class_folders
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_class_folders(tmp_path / "photos", 8, seed=5)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--image-size", "32", "--epochs", "1",
                 "--cache-dir", str(tmp_path / "cache"), "--tensorboard", "--quiet"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"head/loss", "head/val_accuracy", "head/lr", "fine-tune/loss", "fine-tune/val_accuracy"} <= tags
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    head_acc = [r["val_accuracy"] for r in history if r["stage"] == "head"]
    assert [round(e.value, 5) for e in events.Scalars("head/val_accuracy")] == [round(v, 5) for v in head_acc]
    assert [e.step for e in events.Scalars("fine-tune/loss")] == [len(head_acc) + 1]


def test_a_port_in_use_is_one_line(trained_run, capsys):
    run, _, _ = trained_run
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    assert "Address already in use" in capsys.readouterr().err


def test_a_client_that_sends_its_headers_slowly_is_disconnected(trained_run):
    """One header line a second (slowloris) would hold the connection forever under uvicorn's own timers;
    with --header-timeout 1 the server closes it without answering. A server of its own, so that no other
    test's requests meet so short a deadline."""
    proc, server = _start_server(trained_run[0], "--header-timeout", "1")
    try:
        assert _slow_headers_closed(server), "the connection was still open after 60 s of slow headers"
        for _ in range(10):  # and the server still answers others (a client that itself stalled past the
            try:             # deadline between connecting and sending is closed too: try again)
                assert _request(server + "/health")[0] == 200
                break
            except OSError:
                continue
        else:
            pytest.fail("the server stopped answering after a slow client")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _slow_headers_closed(server: str) -> bool:
    """Send a request's headers one line a second -> whether the server closed the connection without
    answering."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(1)
        deadline = time.monotonic() + 60  # a guard against a hang, not a speed test
        while time.monotonic() < deadline:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                data = s.recv(1024)
            except TimeoutError:
                continue
            except OSError:  # reset: closed
                return True
            assert data == b"", f"answered before the headers were complete: {data[:200]!r}"
            return True
    return False


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (Linux: VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _blank_png(side: int) -> bytes:
    """A black side x side PNG: a few kilobytes that decode to side^2 pixels."""
    from PIL import Image

    return _png(Image.new("L", (side, side)))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from Linux's /proc")
def test_memory_is_flat_in_the_number_of_large_images_in_a_request(served):
    """Eight large images in one request cost what one does: each is shrunk to the model's input as
    soon as it is decoded. (Before, every decoded image was held until all were predicted: eight 36 MP
    images added about 1 GB.)"""
    proc, url = served
    big = _blank_png(6000)  # 36 MP: 108 MB as RGB once decoded
    assert len(big) < 200_000
    assert _request(url + "/predict", [("one.png", big)])[0] == 200
    one = _peak_rss_mib(proc.pid)
    status, body = _request(url + "/predict", [(f"{i}.png", big) for i in range(8)])
    assert status == 200 and len(body["predictions"]) == 8
    assert _peak_rss_mib(proc.pid) - one < 150, "memory grew with the number of images"


def test_a_request_whose_images_decode_to_too_many_pixels_is_refused_before_decoding(server):
    """Five 81 MP blank PNGs (under 100 KB each, each under the per-image guard) are over the request's
    pixel budget: 413 at once, naming the limit; the server keeps serving."""
    big = _blank_png(9000)
    status, body = _request(server + "/predict", [(f"{i}.png", big) for i in range(5)])
    assert status == 413 and "pixels in all" in body["error"]
    assert _request(server + "/health") == (200, {"status": "ok"})


@pytest.mark.parametrize("headers", [
    [("X-Big", "a" * 200_000)],                     # one 200 KB header
    [("X-Bad header", "no spaces allowed in a field name")],  # a malformed line
])
def test_oversized_headers_are_answered_in_json_and_the_server_keeps_serving(server, headers):
    """Headers the HTTP parser refuses (over 16 KB, or malformed) get a 400 with a JSON {"error"} like
    every other error (uvicorn answers plain text)."""
    import threading

    host, port = server.removeprefix("http://").split(":")
    request = f"GET /health HTTP/1.1\r\nHost: x\r\n{''.join(f'{k}: {v}' + chr(13) + chr(10) for k, v in headers)}\r\n"

    def send(s):
        try:
            s.sendall(request.encode())
        except OSError:  # the server answered and closed before reading it all
            pass

    answer = b""
    with socket.create_connection((host, int(port)), timeout=60) as s:
        sender = threading.Thread(target=send, args=(s,), daemon=True)
        sender.start()  # read the answer while sending: the server answers before it has read everything
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:  # the rest of what we sent was refused; the answer came first
            pass
        sender.join(60)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower(), head
    assert "headers" in json.loads(body)["error"]
    assert _request(server + "/health") == (200, {"status": "ok"})
