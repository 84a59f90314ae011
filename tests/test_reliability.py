"""Nothing is lost: kill -9 in the middle of fine-tuning, a full disk during a checkpoint write."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import run_watched, write_class_folders
from safetensors import safe_open
from safetensors.torch import load_file

import imgtune.atomic as atomic
from imgtune.cli import main
from imgtune.runs.folder import load_tensors_and_meta

ARGS = ["--image-size", "32", "--epochs", "2", "--batch-size", "8", "--checkpoint-every", "0", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Data, a cache and the weights of an uninterrupted run."""
    base = tmp_path_factory.mktemp("reliability")
    data = write_class_folders(base / "photos", 12, seed=3)
    cache = base / "cache"
    assert main(["train", str(data), "--out", str(base / "full"), "--cache-dir", str(cache), *ARGS]) == 0
    return data, cache, load_file(base / "full" / "model.safetensors")


def _same(weights, run):
    other = load_file(run / "model.safetensors")
    return weights.keys() == other.keys() and all(torch.equal(weights[k], other[k]) for k in weights)


def _position(ckpt):
    try:
        with safe_open(str(ckpt), "pt") as f:
            state = json.loads(f.metadata()["imgtune"])["state"]
        return state["epoch"], state["batch"]
    except Exception:  # not written yet
        return None


def test_kill_9_mid_epoch_then_resume_gives_identical_weights(reference, tmp_path):
    """SIGKILL right after the checkpoint of batch 1 of the last epoch is on disk: the process sends it to
    itself there, so where it lands does not depend on the machine's speed, and a resume has a whole epoch
    and a half to redo."""
    data, cache, weights = reference
    run = tmp_path / "run"
    args = ["train", str(data), "--out", str(run), "--cache-dir", str(cache), *ARGS]
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, os, signal, sys
        from safetensors import safe_open
        import imgtune.runs.folder as run_lib
        from imgtune.cli import main
        real = run_lib.write_bytes_atomic

        def write_then_die(path, data, **kw):
            real(path, data, **kw)
            if str(path).endswith("finetune.safetensors"):
                with safe_open(str(path), "pt") as f:
                    state = json.loads(f.metadata()["imgtune"])["state"]
                if (state["epoch"], state["batch"]) == (1, 1):
                    os.kill(os.getpid(), signal.SIGKILL)

        run_lib.write_bytes_atomic = write_then_die
        sys.exit(main({args!r}))
    """)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, f"not killed at epoch 1, batch 1: {killed.stderr[-2000:]}"
    assert _position(run / "checkpoints" / "finetune.safetensors") == (1, 1)
    assert not (run / "model.safetensors").exists()
    r = run_watched([sys.executable, "-m", "imgtune", *args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert _same(weights, run)


def test_full_disk_during_a_checkpoint_is_one_line_and_loses_nothing(reference, tmp_path, monkeypatch, capsys):
    data, cache, weights = reference
    run = tmp_path / "run"
    real = atomic.write_atomic
    writes = []

    def disk_fills(path, write, **kw):
        if str(path).endswith("finetune.safetensors"):
            writes.append(path)
            if len(writes) == 3:  # the third checkpoint: half written, then the disk is full
                def half_then_full(tmp):
                    write(tmp)
                    with open(tmp, "r+b") as f:
                        f.truncate(os.path.getsize(tmp) // 2)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return real(path, half_then_full, **kw)
        return real(path, write, **kw)

    monkeypatch.setattr(atomic, "write_atomic", disk_fills)
    assert main(["train", str(data), "--out", str(run), "--cache-dir", str(cache), *ARGS]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "finetune.safetensors" in err[0]
    monkeypatch.undo()
    ckpt = run / "checkpoints" / "finetune.safetensors"
    _, meta = load_tensors_and_meta(ckpt)  # the last good checkpoint is whole
    assert (meta["state"]["epoch"], meta["state"]["batch"]) == (0, 2)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert main(["train", str(data), "--out", str(run), "--cache-dir", str(cache), *ARGS, "--resume"]) == 0
    assert _same(weights, run)


def _digests(root):
    import hashlib

    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.access(p, os.R_OK):
                out[p] = "unreadable"
            else:
                out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_a_corpus_of_odd_and_broken_files_trains_and_every_bad_file_is_listed(tmp_path):
    import csv

    from corpus import write_corpus

    root = write_class_folders(tmp_path / "photos", 10, seed=8)
    good, bad = [], {}
    for cls in ("circle", "square"):
        g, b = write_corpus(root / cls, cls, seed=len(cls))
        good += g
        bad.update(b)
    assert len(bad) >= 7 * 2 and len(good) >= 15 * 2  # 18 kinds of odd or broken file per class
    before = _digests(root)
    run = tmp_path / "run"
    assert main(["train", str(root), "--out", str(run), "--image-size", "32", "--epochs", "1",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert _digests(root) == before  # no input file changed

    with open(run / "skipped.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        skipped = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    assert set(skipped) == set(bad)
    for path, reason in bad.items():
        assert reason in skipped[path], (path, skipped[path])
    with open(run / "split.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        train = [row["path"] for row in csv.DictReader(f) if row["split"] == "train"]
    usable_train = [p for p in train if p not in skipped]
    assert len(usable_train) == len(set(usable_train))
    assert {p for p in good if p in train} <= set(usable_train)
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    fine_tune = [h for h in history if h["stage"] == "fine-tune" and h["epoch"] > 0]
    assert [h["images"] for h in fine_tune] == [len(usable_train)]  # each usable image once per epoch


def test_atomic_files_get_the_permissions_open_would_give_without_touching_the_umask(tmp_path, monkeypatch):
    """0666 less the umask, as open() gives; the umask is never read or set (it is process-wide, and
    setting it to read it races with other threads)."""
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("os.umask was called"))
        atomic.write_bytes_atomic(tmp_path / "a.bin", b"x")
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
        assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_a_write_that_fails_for_want_of_space_names_the_file_it_was_writing(tmp_path, monkeypatch, capsys):
    """A full disk makes write() fail with ENOSPC and no file name; the error names the target, and no
    temporary file is left."""
    import errno

    from imgtune.atomic import write_bytes_atomic

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    import imgtune.atomic as atomic

    with pytest.raises(OSError) as e:
        atomic.write_atomic(tmp_path / "metrics.json", full)
    assert e.value.filename == str(tmp_path / "metrics.json") and e.value.errno == errno.ENOSPC
    assert "None" not in f"{e.value.strerror}: {e.value.filename}"
    assert list(tmp_path.iterdir()) == []
    write_bytes_atomic(tmp_path / "ok.bin", b"x")  # and an ordinary write still works
    assert (tmp_path / "ok.bin").read_bytes() == b"x"
