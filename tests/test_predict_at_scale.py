"""The runtime auto picks, prediction streamed to its file, torchrun's shares joined in input order, and
the command-line conventions (--device, a default --out, --model)."""

import csv
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_watched, write_class_folders

from imgtune.classifier import ImageClassifier
from imgtune.cli import main
from imgtune.deploy.runtime import choose_runtime, is_current
from imgtune.devices import resolve_device
from imgtune.errors import ParameterError
from imgtune.runs.folder import RunFolder, latest_run_folder, next_run_folder


def _copy(run, tmp_path, name="run", onnx=False):
    copy = tmp_path / name
    shutil.copytree(run, copy, ignore=None if onnx else shutil.ignore_patterns("*.onnx"))
    return copy


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_auto_exports_a_missing_onnx_copy_once_then_uses_it_with_the_same_answers(trained_run, tmp_path, capsys):
    run, data, _ = trained_run
    copy = _copy(run, tmp_path)
    assert main(["predict", str(copy), str(data), "--output", str(tmp_path / "torch.csv"), "--runtime", "torch",
                 "--quiet"]) == 0
    assert not (copy / "model.onnx").exists()
    assert main(["predict", str(copy), str(data), "--output", str(tmp_path / "auto.csv")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "Exporting" in err and "Runtime: ONNX Runtime" in err and "exported now" in err
    assert is_current(RunFolder(copy))
    stamp = (copy / "model.onnx").stat().st_mtime_ns
    assert main(["predict", str(copy), str(data), "--output", str(tmp_path / "again.csv")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "Exporting" not in err and "checked against PyTorch when it was exported" in err
    assert (copy / "model.onnx").stat().st_mtime_ns == stamp  # reused, not written again
    torch_rows, onnx_rows = _rows(tmp_path / "torch.csv"), _rows(tmp_path / "auto.csv")
    assert [r["path"] for r in torch_rows] == [r["path"] for r in onnx_rows]
    assert [r["label"] for r in torch_rows] == [r["label"] for r in onnx_rows]
    assert np.allclose([float(r["probability"]) for r in torch_rows],
                       [float(r["probability"]) for r in onnx_rows], atol=1e-4)


def test_auto_exports_again_when_the_weights_changed_and_falls_back_when_it_cannot(trained_run, tmp_path,
                                                                                  monkeypatch):
    run, _, _ = trained_run
    copy = _copy(run, tmp_path, onnx=True)
    assert is_current(RunFolder(copy))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the same tensors: unchanged digest
    assert is_current(RunFolder(copy))
    # an ONNX copy made from other weights (another run's) is stale: auto exports this run's
    other = _copy(run, tmp_path, "other", onnx=True)
    meta_free = other / "model.onnx"
    import onnx

    model = onnx.load(str(meta_free))
    for p in model.metadata_props:
        if p.key == "imgtune":
            p.value = p.value.replace('"weights_sha256": "', '"weights_sha256": "0')
    onnx.save(model, str(meta_free))
    assert not is_current(RunFolder(other))
    chosen, why = choose_runtime(other, "auto", device="cpu")
    assert chosen == "onnx" and "exported now" in why and is_current(RunFolder(other))
    # nothing to check the export on (the run's images are gone): PyTorch, saying why
    gone = _copy(run, tmp_path, "gone")
    (gone / "split.csv").write_text("path,label,split\n")
    chosen, why = choose_runtime(gone, "auto", device="cpu")
    assert chosen == "torch" and "could not export" in why and not (gone / "model.onnx").exists()
    # what needs gradients stays on PyTorch, and so does a machine without ONNX Runtime
    assert choose_runtime(copy, "auto", device="cpu", needs_gradients="--explain")[0] == "torch"
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "onnxruntime" else real_import(name, *a, **k))
    chosen, why = choose_runtime(copy, "auto", device="cpu")
    assert chosen == "torch" and "not installed" in why
    assert choose_runtime(copy, "torch")[0] == "torch"


def test_two_processes_starting_at_once_export_once(trained_run, tmp_path):
    run, data, _ = trained_run
    copy = _copy(run, tmp_path)
    image = str(sorted((data / "circle").iterdir())[0])
    procs = [subprocess.Popen([sys.executable, "-m", "imgtune", "predict", str(copy), image, "--output",
                               str(tmp_path / f"{i}.csv")], stderr=subprocess.PIPE, text=True) for i in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]  # a guard against a hang, not a speed test
    assert [p.returncode for p in procs] == [0, 0], errs
    joined = [" ".join(e.split()) for e in errs]
    assert sum("Exporting" in e for e in joined) == 1  # the second waited for the lock and found it done
    assert all("Runtime: ONNX Runtime" in e for e in joined)
    assert _rows(tmp_path / "0.csv") == _rows(tmp_path / "1.csv")


def test_predictions_stream_to_the_file_and_an_interrupted_run_leaves_none(trained_run, tmp_path, monkeypatch):
    run, data, _ = trained_run
    clf = ImageClassifier.load(run, quiet=True, runtime="torch")
    whole = clf.predict(str(data), top_k=2)
    out = tmp_path / "p.json"
    assert main(["predict", str(run), str(data), "--output", str(out), "--top-k", "2", "--runtime", "torch",
                 "--quiet"]) == 0
    import json

    streamed = json.loads(out.read_text())
    assert [r["path"] for r in streamed] == [r["path"] for r in whole]
    assert [r["label"] for r in streamed] == [r["label"] for r in whole]
    # stopped after its first batch: no half file where the output goes, and no temporary beside it
    import imgtune.infer.predictor as predictor

    real = predictor.answer_rows
    calls = []

    def stop_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(predictor, "answer_rows", stop_on_second)
    monkeypatch.setattr("imgtune.model.forward.loader_workers", lambda: 0)
    many = tmp_path / "many"
    for i in range(3):  # more than one batch of 32
        shutil.copytree(data, many / str(i))
    target = tmp_path / "stopped.csv"
    assert main(["predict", str(run), str(many), "--output", str(target), "--runtime", "torch", "--quiet"]) == 130
    assert len(calls) == 2 and not target.exists() and not list(tmp_path.glob(".stopped.csv*"))


def test_torchrun_shares_the_files_and_joins_one_file_in_input_order(trained_run, tmp_path):
    run, data, _ = trained_run
    (data_copy := tmp_path / "photos").mkdir()
    for cls in ("circle", "square"):
        shutil.copytree(data / cls, data_copy / cls)
    (data_copy / "circle" / "broken.png").write_bytes(b"not an image")  # skipped by the rank that has it
    args = [str(run), str(data_copy), str(data / "triangle"), "--runtime", "torch", "--device", "cpu"]
    one = main(["predict", *args, "--output", str(tmp_path / "one.csv"), "--quiet"])  # one process: this one
    two = run_watched([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "imgtune", "predict", *args, "--output", str(tmp_path / "two.csv")])
    assert one == 0 and two.returncode == 0, two.stderr[-3000:]
    a, b = _rows(tmp_path / "one.csv"), _rows(tmp_path / "two.csv")
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == 14 * 3
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert "by 2 processes" in two.stderr and "skipped" in two.stderr and "broken.png" in two.stderr
    assert not list(tmp_path.glob(".two.csv.part*"))  # the parts are joined and removed


class _ThreadRanks:
    """A process group's gather and barrier between threads of this process: each thread plays one rank."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.rank, self.world, self.shared = rank, world, shared
        self.main, self.active = rank == 0, world > 1

    def gather(self, obj) -> list:
        self.shared["objs"][self.rank] = obj
        self.shared["barrier"].wait()
        out = list(self.shared["objs"])
        self.shared["barrier"].wait()  # every rank has read before the next gather writes
        return out

    def barrier(self) -> None:
        self.shared["barrier"].wait()


def test_the_librarys_predict_shares_the_files_among_processes_and_gives_each_every_answer(trained_run, tmp_path):
    """ImageClassifier.predict under torchrun: each process predicts its contiguous share of the files and
    every process gets all the answers, in the order of the inputs, with what was skipped, exactly as one
    process answers. Two threads stand for the two processes (infer/sharded.py takes the group as a
    parameter); torchrun's own gather is exercised by the command-line test above."""
    import threading

    from PIL import Image

    from imgtune.infer import sharded

    run, data, _ = trained_run
    (tmp_path / "broken.png").write_bytes(b"not an image")
    inputs = [str(data / "circle"), np.zeros((20, 30, 3), np.uint8), str(tmp_path / "broken.png"),
              str(tmp_path / "missing.png"), str(data / "triangle"), Image.new("RGB", (16, 16), (200, 30, 30))]
    m = ImageClassifier.load(run, quiet=True, device="cpu").trained_
    alone = sharded.predict(m, inputs)
    shared, results = {"objs": [None, None], "barrier": threading.Barrier(2, timeout=600)}, [None, None]

    def rank(r: int) -> None:
        results[r] = sharded.predict(m, inputs, ranks=_ThreadRanks(r, 2, shared))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        assert [r["path"] for r in got] == [r["path"] for r in alone] and len(alone) == 14 * 2 + 2
        assert [r["label"] for r in got] == [r["label"] for r in alone]
        assert np.allclose([r["probability"] for r in got], [r["probability"] for r in alone])
        assert sorted(got.skipped) == sorted(alone.skipped) and len(alone.skipped) == 2


def test_devices_that_are_not_there_are_one_clear_error(capsys):
    import torch

    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ParameterError, match="no CUDA GPU is visible"):
                resolve_device(name)
    if not (torch.backends.mps.is_available()):
        with pytest.raises(ParameterError, match="no Apple GPU"):
            resolve_device("mps")
    assert resolve_device("CPU").type == "cpu"
    with pytest.raises(SystemExit):
        main(["predict", "run", "x.png", "--device", "tpu"])
    assert "expected auto, cpu, cuda, cuda:N or mps, received 'tpu'" in capsys.readouterr().err


def test_runs_are_numbered_without_out_and_model_is_another_name_for_backbone(tmp_path, monkeypatch, capsys):
    assert next_run_folder(tmp_path / "runs" / "train") == tmp_path / "runs" / "train"
    for name in ("train", "train-2", "train-7", "train-x", "trainer"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    assert next_run_folder(tmp_path / "runs" / "train") == tmp_path / "runs" / "train-8"
    assert latest_run_folder(tmp_path / "runs" / "train") == tmp_path / "runs" / "train-7"
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    data = write_class_folders(tmp_path / "photos", 6, seed=2)
    flags = ["--model", "efficientnet_lite0", "--image-size", "32", "--epochs", "0", "--cache-dir",
             str(tmp_path / "cache"), "--quiet"]
    assert main(["train", str(data), *flags]) == 0
    assert main(["train", str(data), *flags]) == 0
    out = capsys.readouterr()
    assert (tmp_path / "runs" / "train" / "report.html").exists()
    assert (tmp_path / "runs" / "train-2" / "report.html").exists()
    assert "Run folder: runs/train-2" in out.err + out.out
    assert main(["train", str(data), "--resume", *flags]) == 0  # continues the latest: already done
    assert not (tmp_path / "runs" / "train-3").exists()
