"""Defects found by trying to break imgtune, each pinned where a user would meet it: memory bounded by
the output of a resize, files that are not regular files, one process per run folder, CSV rows that
repeat or name odd splits, and a resume given other data."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import run_watched, write_class_folders
from PIL import Image

from imgtune import ImageClassifier
from imgtune.cli import main
from imgtune.data.scan import labelled_files, scan
from imgtune.errors import DataError
from imgtune.runs.folder import RunFolder


def _python(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_a_picture_one_pixel_wide_costs_what_a_small_one_does(tmp_path, trained_run):
    """A 474-byte 1 x 100,000 PNG used to be scaled to 96 x 9,600,000 pixels (gigabytes) before the
    centre crop: the peak memory of a fresh process grows by a few MB, not by GB, and it is predicted."""
    r = _python("""
        import resource
        from PIL import Image
        from imgtune.data.transforms import DataConfig, TTAViews, eval_transform, train_transform
        cfg = DataConfig(96, (0.5,) * 3, (0.5,) * 3)
        steps = [eval_transform(cfg), TTAViews(cfg), train_transform(cfg, "seed"), train_transform(cfg, "light")]
        for t in steps:
            t(Image.new("RGB", (200, 100)))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for size in ((1, 100_000), (100_000, 1)):
            for t in steps:
                t(Image.new("RGB", size))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 100, f"peak RSS grew by {float(r.stdout):.0f} MiB"
    run, _, _ = trained_run
    Image.new("RGB", (1, 100_000), (220, 40, 40)).save(tmp_path / "thin.png")
    rows = ImageClassifier.load(run, quiet=True).predict(str(tmp_path / "thin.png"))
    assert len(rows) == 1 and 0 < rows[0]["probability"] <= 1


def test_a_named_pipe_among_the_images_is_skipped_without_opening_it(tmp_path, trained_run, capsys):
    """A FIFO blocks whoever opens it; train, inspect and predict list it as skipped and go on. Each
    command runs in a thread of this process: should one open the pipe and block, the test opens the
    pipe's other end to free it, and fails, instead of stalling the suite."""
    import threading

    run = trained_run[0]
    data = write_class_folders(tmp_path / "photos", 6, seed=3)
    pipe = data / "circle" / "pipe.png"
    os.mkfifo(pipe)
    m = scan(data)
    assert any(p.endswith("pipe.png") and "named pipe" in r for p, r in m.skipped)
    assert all(not it.path.endswith("pipe.png") for it in m.items)
    for args in (["predict", run, data, "--output", tmp_path / "p.csv", "--quiet"],
                 ["inspect", data, "--out", tmp_path / "audit"],
                 ["predict", run, pipe, data / "square", "--output", tmp_path / "q.csv"]):
        code = []
        t = threading.Thread(target=lambda: code.append(main(list(map(str, args)))), daemon=True)
        t.start()
        t.join(600)  # a guard against a hang, not a speed test
        if t.is_alive():
            with open(pipe, "wb"):  # the blocked reader gets end-of-file
                pass
            pytest.fail(f"{args[0]} opened the named pipe and blocked")
        assert code == [0], (args, capsys.readouterr().err)
    err = capsys.readouterr().err
    assert "pipe.png" not in (tmp_path / "p.csv").read_text()
    assert "named pipe" in (tmp_path / "q.csv").read_text() + err


def test_a_second_train_into_a_run_folder_in_use_gets_one_line(tmp_path):
    data = write_class_folders(tmp_path / "photos", 4, seed=4)
    run = RunFolder(tmp_path / "run")
    with run.locked():  # as a first train holds it
        r = run_watched([sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run.path)])
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"is being trained into by process {os.getpid()}" in r.stderr
        assert not run.split.exists()  # nothing of the second run was written
    with run.locked():  # released when the first one ends
        pass


def test_csv_rows_that_repeat_a_file_are_merged_and_never_cross_splits(tmp_path):
    data = write_class_folders(tmp_path / "photos", 10, seed=5)
    rows = [f"{cls}/{f.name},{cls}" for cls in ("circle", "square", "triangle")
            for f in sorted((data / cls).iterdir())]
    (data / "twice.csv").write_text("path,label\n" + "\n".join(rows + rows) + "\n")
    m = scan(data / "twice.csv")
    assert len(m.items) == len(rows) == len({it.path for it in m.items})
    merged = [r for _, r in m.skipped if "listed again" in r]
    assert len(merged) == len(rows) and "merged into row 2" in merged[0]


def test_csv_split_values_are_read_the_same_by_train_and_evaluate(tmp_path):
    data = write_class_folders(tmp_path / "photos", 6, seed=7)
    rows = []
    for cls in ("circle", "square", "triangle"):
        for i, f in enumerate(sorted((data / cls).iterdir())):
            rows.append(f"{cls}/{f.name},{cls},{['Train', 'TRAIN', 'train', 'Validation', 'Test', 'test'][i]}")
    (data / "s.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    m = scan(data / "s.csv")
    assert m.counts() == {"train": 9, "val": 3, "test": 6}
    test = labelled_files(data / "s.csv", ["circle", "square", "triangle"])
    assert len(test.items) == 6
    (data / "bad.csv").write_text("path,label,split\n" + "\n".join(rows[:3]) + f"\n{rows[3].rsplit(',', 1)[0]},holdout\n")
    for read in (lambda: scan(data / "bad.csv"), lambda: labelled_files(data / "bad.csv", ["circle"])):
        with pytest.raises(DataError, match="row 5: unknown split 'holdout'"):
            read()


def test_resume_refuses_other_data(tmp_path, capsys):
    data = write_class_folders(tmp_path / "photos", 6, seed=8)
    args = ["--out", str(tmp_path / "run"), "--image-size", "32", "--epochs", "0", "--cache-dir",
            str(tmp_path / "cache"), "--quiet"]
    assert main(["train", str(data), *args]) == 0
    other = write_class_folders(tmp_path / "other", 3, seed=9, classes=("circle", "square"))
    assert main(["train", str(other), *args, "--resume"]) == 2
    assert "settings differ from the interrupted run (data)" in capsys.readouterr().err
    (data / "star").mkdir()
    Image.new("RGB", (40, 40)).save(data / "star" / "a.png")
    Image.new("RGB", (40, 40), (9, 9, 9)).save(data / "star" / "b.png")
    assert main(["train", str(data), *args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "now has classes" in err and "'star'" in err


def _tampered(run, tmp_path, name, edit):
    import json
    import shutil

    copy = tmp_path / name
    shutil.copytree(run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    edit(cfg, copy)
    (copy / "config.json").write_text(json.dumps(cfg))
    return copy


def _nan_weights(cfg, copy):
    from safetensors.torch import load_file, save_file

    state = load_file(copy / "model.safetensors")
    key = next(k for k in state if k.startswith("head.") and k.endswith("weight"))
    state[key] = state[key] * float("nan")
    save_file(state, copy / "model.safetensors")


@pytest.mark.parametrize("name, edit, expected", [
    ("std zero", lambda c, _: c["data_config"].update(std=[0, 0, 0]), "data_config.std"),
    ("two means", lambda c, _: c["data_config"].update(mean=[0.5, 0.5]), "data_config.mean"),
    ("interpolation", lambda c, _: c["data_config"].update(interpolation="sinc"), "data_config.interpolation"),
    ("seed text", lambda c, _: c.update(seed="abc"), "seed must be"),
    ("tiny temperature", lambda c, _: c.update(temperature=1e-320), "temperature"),
    ("NaN temperature", lambda c, _: c.update(temperature=float("nan")), "temperature"),
    ("classes reordered", lambda c, _: c.update(classes=c["classes"][::-1]), "in that order"),
    ("classes twice", lambda c, _: c.update(classes=[c["classes"][0]] * 3), "more than once"),
    ("NaN weights", _nan_weights, "non-finite"),
])
def test_a_tampered_run_folder_is_refused_in_one_line(trained_run, tmp_path, capsys, name, edit, expected):
    run, data, _ = trained_run
    copy = _tampered(run, tmp_path, name.replace(" ", "_"), edit)
    image = sorted((data / "circle").iterdir())[0]
    assert main(["predict", str(copy), str(image), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_an_onnx_file_exported_at_another_size_is_refused_at_load(trained_run, tmp_path, capsys):
    run, data, _ = trained_run
    copy = _tampered(run, tmp_path, "run", lambda c, _: None)
    assert main(["export", str(copy), "--quiet"]) == 0
    copy = _tampered(copy, tmp_path, "resized", lambda c, _: c["data_config"].update(image_size=48))
    image = sorted((data / "circle").iterdir())[0]
    assert main(["predict", str(copy), str(image), "--runtime", "onnx", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes input of shape" in err and "export it again" in err, err


def test_sigterm_during_export_leaves_no_temporary_files(trained_run, tmp_path):
    """Stopped while the ONNX file is being checked (its temporary copy exists), export removes what it
    had written, as on Ctrl-C, and exits 143. The SIGTERM is sent by the process to itself at the moment
    the check opens the temporary copy, so where it lands does not depend on the machine's speed."""
    run, _, _ = trained_run
    copy = _tampered(run, tmp_path, "run", lambda c, _: None)
    before = set(os.listdir(copy))
    r = _python(f"""
        import os, signal, sys
        import imgtune.deploy.export as export_lib
        from imgtune.cli import main
        real = export_lib.OnnxModule

        def checked(path, **kw):  # the parity check of the temporary file: terminate here
            assert os.path.basename(str(path)).startswith(".model.onnx.")
            os.kill(os.getpid(), signal.SIGTERM)
            return real(path, **kw)

        export_lib.OnnxModule = checked
        sys.exit(main(["export", {str(copy)!r}, "--quantize", "int8"]))
    """)
    assert r.returncode == 143 and "terminated; no partial files were left" in r.stderr, r.stderr
    assert set(os.listdir(copy)) == before and "Traceback" not in r.stderr


def _asgi_post(app, content_type: bytes, receive, *, chunked: bool = False) -> tuple[int, bytes]:
    """POST /predict straight to the ASGI app -> (status, body), its request body from `receive`."""
    import asyncio

    answer = []

    async def send(message):
        answer.append(message)

    headers = [(b"content-type", content_type)] + ([(b"transfer-encoding", b"chunked")] if chunked else [])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in answer if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in answer if m["type"] == "http.response.body")


def test_a_chunked_upload_is_stopped_at_the_request_cap(trained_run):
    """No Content-Length, the body in 64 KiB chunks: the app reads up to the cap and answers 413; the
    rest is never read (before, it was spooled to disk in full, then refused)."""
    from imgtune.deploy.serve import create_app

    cap, chunk, total = 1 << 20, 1 << 16, 40 << 20
    app = create_app(ImageClassifier.load(trained_run[0], quiet=True), max_request_bytes=cap)
    head = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    sent = 0

    async def receive():
        nonlocal sent
        body = head if sent == 0 else b"\0" * chunk
        sent += len(body)
        return {"type": "http.request", "body": body, "more_body": sent < total}

    status, body = _asgi_post(app, b"multipart/form-data; boundary=xyz", receive, chunked=True)
    assert status == 413 and b"over the limit of 1,048,576" in body, (status, body)
    assert sent <= cap + 2 * chunk


def test_a_malformed_multipart_body_is_answered_with_an_error_field(trained_run):
    from imgtune.deploy.serve import create_app

    app = create_app(ImageClassifier.load(trained_run[0], quiet=True))

    async def receive():
        return {"type": "http.request", "body": b"--xyz\r\nno headers and no end", "more_body": False}

    status, raw = _asgi_post(app, b"multipart/form-data; boundary=xyz", receive)
    body = json.loads(raw)
    assert 400 <= status < 500 and "error" in body and "detail" not in body, (status, body)


@pytest.mark.parametrize("image, expected", [
    (np.zeros((3, 20, 20), np.uint8), "looks like CxHxW"),
    (np.zeros((0, 0, 3), np.uint8), "empty array"),
    (np.zeros((20, 20, 3), np.float32), "uint8 array"),
    ({"not": "an image"}, "received dict"),
])
def test_odd_arrays_get_one_clear_message(trained_run, image, expected):
    clf = ImageClassifier.load(trained_run[0], quiet=True)
    with pytest.raises(DataError, match=expected):
        clf.predict(image)


def test_grey_arrays_with_one_channel_and_a_list_given_to_fit(trained_run, tmp_path):
    clf = ImageClassifier.load(trained_run[0], quiet=True)
    grey = np.full((20, 20, 1), 128, np.uint8)
    assert clf.predict(grey)[0]["label"] == clf.predict(grey[..., 0])[0]["label"]
    with pytest.raises(DataError, match="fit takes a folder"):
        ImageClassifier(image_size=32, quiet=True).fit([str(trained_run[1])], out=tmp_path / "run")


def test_runtime_onnx_refuses_another_runs_model_onnx_in_one_line(trained_run, tmp_path, capsys):
    """model.onnx copied in from another run (same classes and size, other weights): --runtime onnx
    used to run it silently; now it is refused as --runtime auto would see it, stale."""
    import shutil

    run, data, cache = trained_run
    other = tmp_path / "other"
    assert main(["train", str(data), "--out", str(other), "--image-size", "32", "--epochs", "0", "--seed", "7",
                 "--cache-dir", str(cache), "--quiet"]) == 0
    assert main(["export", str(other), "--quiet"]) == 0
    copy = _tampered(run, tmp_path, "run", lambda c, _: None)
    shutil.copyfile(other / "model.onnx", copy / "model.onnx")
    image = sorted((data / "circle").iterdir())[0]
    assert main(["predict", str(copy), str(image), "--runtime", "onnx", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not exported from this run's weights" in err, err


@pytest.mark.parametrize("command", ["evaluate", "suggest"])
def test_an_output_that_cannot_be_written_fails_before_the_work(tmp_path, trained_run, command):
    """The output's folder is checked first: one line, exit 2, and no evaluation or ranking done (it
    once did all the work and failed at the last write)."""
    run, data, _ = trained_run
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    out = tmp_path / "plain.txt" / ("m.json" if command == "evaluate" else "s.csv")
    args = [str(run), str(data)] + (["--json", str(out)] if command == "evaluate" else ["--output", str(out)])
    done = run_watched([sys.executable, "-m", "imgtune", command, *args, "--device", "cpu"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "Cannot write" in err[0] and "plain.txt" in err[0], done.stderr
    assert done.stdout == ""
