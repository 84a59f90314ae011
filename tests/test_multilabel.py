"""Multi-label data end to end: the CSV forms and their errors, the stratified split, train -> evaluate ->
predict -> export -> serve through the CLI, the same label sets from PyTorch, ONNX Runtime and the server,
and an interrupted run resumed to the same weights."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_multilabel_image, run_watched, write_class_folders, write_multilabel_csv
from safetensors.torch import load_file
from test_serve import _request, _start_server

from imgtune import ImageClassifier
from imgtune.cli import main
from imgtune.data.manifest import multilabel_split
from imgtune.data.scan import labelled_files, scan
from imgtune.errors import DataError, ParameterError

ARGS = ["--image-size", "32", "--epochs", "2", "--batch-size", "16", "--checkpoint-every", "0", "--quiet",
        "--device", "cpu"]
LABELS = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    """(run folder, training CSV, a held-out test CSV): a multi-label run trained through the CLI."""
    base = tmp_path_factory.mktemp("multilabel")
    data = write_multilabel_csv(base / "data", 90, seed=0)
    test = write_multilabel_csv(base / "data", 30, seed=5, name="test.csv")
    run = base / "run"
    assert main(["train", str(data), "--out", str(run), *ARGS]) == 0
    return run, data, test


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- data ---------------------------------------------------------------------------------------------

def test_a_labels_column_makes_multi_label_data_with_empty_rows_as_negatives(tmp_path):
    csv_path = write_multilabel_csv(tmp_path, 40)
    m = scan(csv_path)
    assert m.multi and m.classes == LABELS
    given = {os.path.basename(r["path"]): r["labels"] for r in _rows(csv_path)}
    for it in m.items:  # every row kept, label sets as written, "" = no label
        assert ";".join(LABELS[j] for j in it.labels) == given[os.path.basename(it.path)] and it.label == -1
    assert any(not it.labels for it in m.items) and any(len(it.labels) >= 2 for it in m.items)
    y = m.targets(m.items)
    assert y.shape == (40, 3) and y.dtype == np.float32 and y.sum() == sum(len(it.labels) for it in m.items)


def test_hugging_face_metadata_csv_and_json_lists_are_read_for_both_tasks(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, labels in enumerate([("circle",), ("square",), ("circle", "square"), ()] * 4):
        make_multilabel_image(labels, rng).save(tmp_path / f"{i}.png")
        rows.append(f'{i}.png,"{json.dumps(list(labels)).replace(chr(34), chr(34) * 2)}"')
    (tmp_path / "metadata.csv").write_text("file_name,labels\n" + "\n".join(rows) + "\n")
    m = scan(tmp_path / "metadata.csv")
    assert m.multi and m.classes == ["circle", "square"] and len(m.items) == 16
    assert sorted(len(it.labels) for it in m.items) == [0] * 4 + [1] * 8 + [2] * 4
    (tmp_path / "single.csv").write_text("file_name,label\n" + "\n".join(
        f"{i}.png,{'circle' if i % 2 else 'square'}" for i in range(16)) + "\n")
    single = scan(tmp_path / "single.csv")
    assert not single.multi and single.classes == ["circle", "square"] and len(single.items) == 16


def test_the_task_can_be_forced_and_single_refuses_rows_with_several_labels(tmp_path):
    csv_path = write_multilabel_csv(tmp_path, 30)
    with pytest.raises(ParameterError, match="row 5 carries 2 labels"):
        scan(csv_path, task="single")
    folders = write_class_folders(tmp_path / "photos", 6)
    m = scan(folders, task="multi")  # class folders as sets of one label
    assert m.multi and {it.labels for it in m.items} == {(0,), (1,), (2,)}


@pytest.mark.parametrize("field, expected", [("circle;;square", "an empty label between"),
                                             ('"[""circle"", 3]"', "a JSON list of names"),
                                             ('"[circle"', "a JSON list of names")])
def test_a_labels_field_that_cannot_be_parsed_names_its_row(tmp_path, field, expected):
    csv_path = write_multilabel_csv(tmp_path, 12)
    text = csv_path.read_text().splitlines()
    text[4] = text[4].split(",")[0] + "," + field
    csv_path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=rf"row 5: cannot read the labels .*{expected}"):
        scan(csv_path)


def test_the_split_keeps_every_label_in_train_even_a_rare_one():
    rng = np.random.default_rng(1)
    files = [(f"{i}.png", tuple(j for j in range(4) if rng.random() < 0.4)) for i in range(200)]
    files += [("rare_a.png", (4,)), ("rare_b.png", (0, 4))]  # label 4 on two images only
    items = multilabel_split(files, seed=0, val_fraction=0.1, test_fraction=0.1)
    assert sorted(it.path for it in items) == sorted(p for p, _ in files)
    by = {s: [it for it in items if it.split == s] for s in ("train", "val", "test")}
    assert {j for it in by["train"] for j in it.labels} == set(range(5))
    assert 15 <= len(by["val"]) <= 25 and 15 <= len(by["test"]) <= 25
    counts = {s: np.bincount([j for it in v for j in it.labels], minlength=5)[:4] / len(v) for s, v in by.items()}
    assert np.all(np.abs(counts["val"] - counts["train"]) < 0.1)  # stratified: each label's share kept


def test_a_label_never_in_train_and_unknown_labels_in_a_test_csv_are_refused(tmp_path, multi_run):
    csv_path = write_multilabel_csv(tmp_path, 30)
    text = csv_path.read_text().splitlines()
    text = ["path,labels,split"] + [f"{line},train" for line in text[1:25]] + [f"{line},val" for line in text[25:]]
    text[-1] = text[-1].split(",")[0] + ",hexagon,val"
    csv_path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"Labels \['hexagon'\] .* occur in no training image"):
        scan(csv_path)
    with pytest.raises(DataError, match=r"row 31 has labels the model does not know: \['hexagon'\]"):
        labelled_files(csv_path, LABELS, "multi")


# --- train, evaluate, predict, export, serve ---------------------------------------------------------

def test_train_evaluate_predict_through_the_cli(multi_run, tmp_path, capsys):
    run, data, test = multi_run
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "multi" and config["classes"] == LABELS
    assert len(config["thresholds"]) == 3 and len(config["temperature"]) == 3
    m = json.loads((run / "metrics.json").read_text())
    assert m["task"] == "multi" and "accuracy" not in m and m["split"] == "test"
    assert set(m["per_label"]) == set(LABELS) and m["map"] > 0.8 and "logistic" in m["baselines"]
    assert main(["evaluate", str(run), str(test), "--json", str(tmp_path / "m.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "triangle" in out
    e = json.loads((tmp_path / "m.json").read_text())
    assert e["n_images"] == 30 and e["map"] > 0.8 and (tmp_path / "m.html").is_file()
    assert main(["predict", str(run), str(test.parent / "images"), "--output", str(tmp_path / "p.csv"),
                 "--quiet"]) == 0
    rows = _rows(tmp_path / "p.csv")
    assert list(rows[0]) == ["path", "labels", *LABELS] and len(rows) == 120
    for r in rows:  # the label set is exactly the labels whose probability reaches their threshold
        given = {c for c, t in zip(LABELS, config["thresholds"]) if float(r[c]) >= t}
        assert set(filter(None, r["labels"].split(";"))) == given
    truth = {os.path.basename(r["path"]): r["labels"] for r in _rows(test)}
    held_out = [r for r in rows if os.path.basename(r["path"]) in truth]
    right = np.mean([set(filter(None, r["labels"].split(";"))) == set(filter(None, truth[os.path.basename(
        r["path"])].split(";"))) for r in held_out])
    assert right >= 0.6  # whole label sets right on held-out images


def test_the_python_api_returns_label_sets_and_probabilities(multi_run):
    run, _, test = multi_run
    clf = ImageClassifier.load(run)
    assert clf.task_ == "multi" and clf.classes_ == LABELS
    image = np.asarray(make_multilabel_image(("circle", "triangle"), np.random.default_rng(9)))
    rows = clf.predict([str(test.parent / "images" / "m5_003.png"), image])
    assert set(rows[0]) == {"path", "labels", "probabilities"} and rows[1]["path"] == "<image 1>"
    assert set(rows[1]["probabilities"]) == set(LABELS)
    p = clf.predict_proba([image])
    assert p.shape == (1, 3) and np.allclose(p[0], [rows[1]["probabilities"][c] for c in LABELS])


def test_torch_onnx_and_the_server_give_the_same_label_sets_with_planted_thresholds(multi_run, tmp_path):
    """Thresholds planted in the run (one label given almost always, one almost never): each runtime
    must apply them, so a runtime that ignored them or read them in another order would differ."""
    run, _, test = multi_run
    planted = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run), str(planted)], check=True)
    config = json.loads((planted / "config.json").read_text())
    config["thresholds"] = [0.0, 0.5, 1.0]
    (planted / "config.json").write_text(json.dumps(config))
    images = sorted((test.parent / "images").glob("m5_*.png"))
    torch_rows = ImageClassifier.load(planted).predict([str(p) for p in images])
    torch_sets = [r["labels"] for r in torch_rows]
    assert all("circle" in s for s in torch_sets)  # a threshold of 0 gives the label to every image
    assert torch_sets != [r["labels"] for r in ImageClassifier.load(run).predict([str(p) for p in images])]
    assert main(["export", str(planted), "--quiet"]) == 0
    onnx_sets = [r["labels"] for r in ImageClassifier.load(planted, runtime="onnx").predict([str(p) for p in images])]
    assert onnx_sets == torch_sets
    proc, url = _start_server(planted)
    try:
        status, body = _request(url + "/predict", [(p.name, p.read_bytes()) for p in images[:8]])
        meta = _request(url + "/metadata")[1]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert status == 200 and [r["labels"] for r in body["predictions"]] == torch_sets[:8]
    assert meta["task"] == "multi" and meta["thresholds"] == config["thresholds"]
    probs = [r["probabilities"]["square"] for r in body["predictions"]]
    assert probs == pytest.approx([r["probabilities"]["square"] for r in torch_rows[:8]], abs=1e-4)


# --- bad input and resume ----------------------------------------------------------------------------

def test_bad_multi_label_input_exits_2_with_one_line(tmp_path, multi_run, capsys):
    run, data, _ = multi_run
    bad = tmp_path / "bad.csv"
    bad.write_text("path,labels\n" + "\n".join(f"{line.split(',')[0]},circle;;square"
                                               for line in data.read_text().splitlines()[1:]) + "\n")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"path,labels\n{data.parent / 'images' / 'm0_001.png'},hexagon\n")
    cases = {
        "several labels with --task single": (["train", data, "--out", tmp_path / "a", "--task", "single"],
                                              "--task single"),
        "unparseable labels": (["train", bad, "--out", tmp_path / "b"], "row 2: cannot read the labels"),
        "unknown label at evaluate": (["evaluate", run, unknown, "--quiet"], "the model does not know: ['hexagon']"),
        "unknown loss": (["train", data, "--out", tmp_path / "c", "--loss", "focal"], "--loss"),
    }
    for name, (args, expected) in cases.items():
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own refusals
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (name, err)


def test_an_interrupted_multi_label_run_resumes_to_the_same_weights(multi_run, tmp_path, monkeypatch):
    """Stopped right after the checkpoint of batch 2 of the first fine-tune epoch, then resumed."""
    import imgtune.runs.folder as run_lib

    run0, data, _ = multi_run
    run = tmp_path / "run"
    real = run_lib.write_bytes_atomic

    class Stop(Exception):
        pass

    def write_then_stop(path, data_, **kw):
        real(path, data_, **kw)
        if str(path).endswith("finetune.safetensors"):
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:
                state = json.loads(f.metadata()["imgtune"])["state"]
            if (state["epoch"], state["batch"]) == (0, 2):
                raise Stop

    monkeypatch.setattr(run_lib, "write_bytes_atomic", write_then_stop)
    with pytest.raises(Stop):
        main(["train", str(data), "--out", str(run), *ARGS])
    monkeypatch.undo()
    assert not (run / "model.safetensors").exists()
    assert main(["train", str(data), "--out", str(run), *ARGS, "--resume"]) == 0
    a, b = load_file(run0 / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "config.json").read_text())["thresholds"] == \
        json.loads((run0 / "config.json").read_text())["thresholds"]


def test_the_run_records_the_task_and_a_fresh_process_reads_it(multi_run):
    run, _, test = multi_run
    r = run_watched([sys.executable, "-m", "imgtune", "predict", str(run), str(test.parent / "images" / "m5_003.png"),
                     "--quiet"])
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "path,labels,circle,square,triangle", r.stderr


def test_evaluate_on_images_without_any_label_says_map_is_undefined(multi_run, tmp_path, capsys):
    """Images that carry no label at all: mAP and macro-F1 are undefined (null in metrics.json, said so
    on the console), not a 0.0 that reads as a model that found nothing."""
    run, data, _ = multi_run
    rows = data.read_text().splitlines()[1:6]
    empty = tmp_path / "none.csv"
    empty.write_text("path,labels\n" + "\n".join(f"{data.parent / line.split(',')[0]}," for line in rows) + "\n")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(run), str(empty), "--json", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    assert m["map"] is None and m["macro_f1"] is None and "undefined" in m["undefined"]
    assert "mAP and the macro averages are undefined" in capsys.readouterr().out


def test_with_many_labels_the_strength_is_chosen_on_a_sample_of_them_and_progress_is_shown(monkeypatch):
    """With 200 labels the eight L2 strengths are scored on 64 of them; only the winner is fitted on all
    200 (once per fold, for the out-of-fold logits the thresholds need, and on train and train+val). The
    selection's cost no longer grows with the label count (before: 5 x 8 fits of all 200), every label
    still gets real out-of-fold logits, and each fold advances the progress bar."""
    from imgtune.train import multilabel

    rng = np.random.default_rng(0)
    n, d, k = 400, 32, 200
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, k)).astype(np.float32)
    y = (x @ w + rng.normal(scale=0.5, size=(n, k)) > 2.0).astype(np.float32)  # every label learnable
    widths, fit = [], multilabel.fit_ovr

    def counted(x, y, **kw):
        widths.append(y.shape[1])
        return fit(x, y, **kw)

    monkeypatch.setattr(multilabel, "fit_ovr", counted)
    ticks = []
    choice = multilabel.select_label_head(x[:300], y[:300], x[300:], y[300:], folds=5, seed=0, advance=ticks.append)
    assert widths.count(multilabel.MAX_SELECTION_LABELS) == 5 * len(multilabel.CS)
    assert widths.count(k) == 5 + 2 and len(widths) == 5 * len(multilabel.CS) + 7
    assert len(ticks) == multilabel.selection_steps(k, 5) == 10
    oof = choice.selection.oof_logits
    assert oof.shape == (n, k)
    from sklearn.metrics import roc_auc_score
    aucs = [roc_auc_score(y[:, j], oof[:, j]) for j in range(k) if 0 < y[:, j].sum() < n]
    assert np.median(aucs) > 0.9, "out-of-fold logits of the labels outside the sample are not fitted"
    assert "64 of its 200 labels" in choice.describe()
