"""ONNX export: parity with PyTorch, the same predictions through ONNX Runtime, int8, hostile files."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import set_external_data

from imgtune import ImageClassifier, RunFolderError
from imgtune.cli import main
from imgtune.model.onnx_module import metadata


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    run, data, _ = trained_run
    copy = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(run, copy)
    assert main(["export", str(copy), "--quantize", "int8", "--quiet"]) == 0
    return copy, data


def test_export_carries_what_a_consumer_needs(exported, capsys):
    run, _ = exported
    model = onnx.load(str(run / "model.onnx"))
    meta = metadata(model)
    config = json.loads((run / "config.json").read_text())
    assert meta["classes"] == config["classes"] and meta["image_size"] == 32
    assert meta["temperature"] == pytest.approx(config["temperature"])
    assert meta["mean"] == config["data_config"]["mean"] and meta["std"] == config["data_config"]["std"]
    assert (run / "model.int8.onnx").stat().st_size < (run / "model.onnx").stat().st_size / 2


def test_export_prints_its_parity_and_int8_figures(trained_run, tmp_path, capsys, monkeypatch):
    run, _, _ = trained_run
    out = tmp_path / "m.onnx"
    run_copy = (run / "model.onnx").stat().st_mtime_ns
    assert main(["export", str(run), "--output", str(out), "--quantize", "int8", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement 100.00%" in printed and "max |logit difference|" in printed
    assert float(printed.split("max |logit difference| ")[1].split(".\n")[0].rstrip(".")) <= 1e-4
    assert (run / "model.onnx").stat().st_mtime_ns == run_copy  # --output was honoured: RUN's copy untouched
    int8 = next(ln for ln in printed.splitlines() if ln.startswith(f"Wrote {tmp_path / 'm.int8.onnx'}"))
    # on the test split, which no head of the run was fitted on (validation is in-sample for a head
    # refitted on train+val, and once read 1.0000)
    assert ": test accuracy" in int8 and "points lost" in int8 and "x the fp32 speed" in int8
    assert (tmp_path / "m.int8.onnx").stat().st_size < out.stat().st_size / 2
    # where int8 loses more than the limit allows, the same export warns
    import imgtune.deploy.export as export_lib

    monkeypatch.setattr(export_lib, "INT8_DROP_MAX", -1.0)
    assert main(["export", str(run), "--output", str(tmp_path / "w.onnx"), "--quantize", "int8", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning: int8 loses more than" in captured.out + captured.err


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_onnx_runtime_predicts_like_pytorch(exported, runtime):
    run, data = exported
    torch_rows = ImageClassifier.load(run, quiet=True).predict(str(data), top_k=3)
    onnx_rows = ImageClassifier.load(run, quiet=True, runtime=runtime).predict(str(data), top_k=3)
    assert [r["path"] for r in torch_rows] == [r["path"] for r in onnx_rows]
    same = np.mean([a["label"] == b["label"] for a, b in zip(torch_rows, onnx_rows)])
    diff = max(abs(a["probability"] - b["probability"]) for a, b in zip(torch_rows, onnx_rows))
    if runtime == "onnx":
        assert same == 1 and diff < 1e-4
    else:
        assert same >= 0.9


def test_onnx_with_external_data_outside_its_folder_is_refused(exported, tmp_path):
    run, _ = exported
    model = onnx.load(str(run / "model.onnx"))
    tensor = model.graph.initializer[0]
    set_external_data(tensor, location="../../outside.bin")
    tensor.ClearField("raw_data")
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    onnx.save(model, str(bad / "model.onnx"))
    with pytest.raises(RunFolderError, match="outside its own folder"):
        ImageClassifier.load(bad, quiet=True, runtime="onnx")


def test_truncated_or_missing_onnx_is_one_clear_line(exported, tmp_path, capsys):
    run, data = exported
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    blob = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(blob[: len(blob) // 3])
    assert main(["predict", str(bad), str(data), "--runtime", "onnx"]) == 2
    (bad / "model.int8.onnx").unlink()
    assert main(["predict", str(bad), str(data), "--runtime", "onnx-int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not a valid ONNX file" in err[0] and "imgtune export" in err[-1] and "--quantize int8" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_decision_offsets_are_part_of_the_model_in_torch_onnx_and_serve(trained_run, tmp_path):
    """Planted offsets (strongly for "circle") change the decisions identically in PyTorch, in the ONNX
    graph through ONNX Runtime, and behind the HTTP server."""
    import torch
    from test_serve import _request, _start_server

    run, data, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    clf = ImageClassifier.load(copy, quiet=True)
    plain = clf.predict(str(data), top_k=3)
    # an offset for "circle" that flips about half of the other images: the median logit gap to circle
    gaps = [clf.temperature_ * (np.log(r["probability"]) - np.log(dict(r["top_k"])["circle"]))
            for r in plain if r["label"] != "circle"]
    offset = float(np.median(gaps)) + 1e-3
    with torch.no_grad():
        clf.model_.offsets.copy_(torch.tensor([offset, 0.0, 0.0]))
    clf.save(copy)
    torch_rows = ImageClassifier.load(copy, quiet=True).predict(str(data), top_k=3)
    assert sum(r["label"] == "circle" for r in torch_rows) > sum(r["label"] == "circle" for r in plain)
    assert main(["export", str(copy), "--quiet"]) == 0
    assert metadata(onnx.load(str(copy / "model.onnx")))["offsets"] == pytest.approx([offset, 0.0, 0.0])
    onnx_rows = ImageClassifier.load(copy, quiet=True, runtime="onnx").predict(str(data), top_k=3)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(torch_rows, onnx_rows)) < 1e-4
    proc, url = _start_server(copy, "--runtime", "onnx")
    try:
        files = sorted((data / "square").iterdir())[:4]
        status, body = _request(url + "/predict", [(f.name, f.read_bytes()) for f in files])
        by_path = {r["path"]: r for r in torch_rows}
        assert status == 200
        for f, p in zip(files, body["predictions"]):
            assert p["label"] == by_path[str(f)]["label"]
            assert abs(p["probability"] - by_path[str(f)]["probability"]) < 1e-4
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_export_refuses_and_writes_nothing_when_parity_fails(trained_run, tmp_path, capsys, monkeypatch):
    import imgtune.deploy.export as export_lib

    run, _, _ = trained_run
    monkeypatch.setattr(export_lib, "MAX_ABS_DIFF", -1.0)  # no graph can be this close: parity "fails"
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "top-1 agreement" in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
