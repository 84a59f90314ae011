"""train --mlflow: the fit as an MLflow run, read back from local SQLite stores with MlflowClient. Two
tiny trainings in all: a single-label one with the URI given, a multi-label one with MLFLOW_TRACKING_URI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_class_folders, write_multilabel_csv

from imgtune import ImageClassifier
from imgtune.cli import main
from imgtune.errors import MissingDependency, ParameterError

ODD = "blue triangle (3)"  # a class name MLflow refuses in a metric name as it is
ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


def _client(uri: str):
    return pytest.importorskip("mlflow.tracking").MlflowClient(uri)


def _only_run(client):
    experiment = client.get_experiment_by_name("imgtune")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared_feature_cache):
    """(client, MLflow run, run folder) of a single-label fit given --mlflow sqlite:///..., into an
    experiment made beforehand with its artifacts beside the store."""
    base = tmp_path_factory.mktemp("mlflow-single")
    data = write_class_folders(base / "photos", 8, seed=5)
    (data / "triangle").rename(data / ODD)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    client = _client(uri)
    client.create_experiment("imgtune", artifact_location=(base / "artifacts").as_uri())
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV:
            patch.delenv(name, raising=False)
        assert main(["train", str(data), "--out", str(base / "run-single"), "--image-size", "32", "--epochs", "1",
                     "--mlflow", uri, "--quiet"]) == 0
    return client, _only_run(client), base / "run-single"


@pytest.fixture(scope="module")
def multi(tmp_path_factory, shared_feature_cache):
    """The same for a multi-label fit given a bare --mlflow and MLFLOW_TRACKING_URI; imgtune makes the
    experiment (artifacts in ./mlruns, MLflow's default, so the fit runs in its own folder)."""
    base = tmp_path_factory.mktemp("mlflow-multi")
    data = write_multilabel_csv(base / "data", 30, seed=2)
    uri = f"sqlite:///{base / 'env.db'}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV:
            patch.delenv(name, raising=False)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(base)
        assert main(["train", str(data), "--out", str(base / "run-multi"), "--image-size", "32", "--epochs", "1",
                     "--mlflow", "--quiet"]) == 0
    client = _client(uri)
    return client, _only_run(client), base / "run-multi"


def _history(run_folder):
    return [json.loads(line) for line in (run_folder / "history.jsonl").read_text().splitlines()]


def _steps(client, run, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_the_run_is_named_after_the_run_folder_and_finished(single):
    _, run, folder = single
    assert run.info.run_name == "run-single" and run.info.status == "FINISHED"
    assert run.data.tags["imgtune.run_folder"] == str(folder.resolve())


def test_parameters_are_the_settings_flattened(single):
    _, run, folder = single
    params, config = run.data.params, json.loads((folder / "config.json").read_text())
    recipe = config["recipe"]
    assert params["recipe.name"] == recipe["name"] == "default"
    assert params["recipe.head.lr"] == str(recipe["head"]["lr"])
    assert params["recipe.head.kind"] == recipe["head"]["kind"]
    assert params["recipe.finetune.epochs"] == "1"
    # the settings as given (augment "auto"); config.json says what the data chose
    assert params["recipe.finetune.augment"] == "auto" and recipe["finetune"]["augment"] == config["augment"]["chosen"]
    assert params["backbone"] == config["backbone"] and params["seed"] == "0" and params["image_size"] == "32"
    assert params["data_config.image_size"] == "32"
    assert {params[f"counts.{s}"] for s in ("train", "val", "test")} == {str(n) for n in config["counts"].values()}
    assert json.loads(params["classes"]) == config["classes"]
    assert not any(v.startswith("{") for v in params.values())  # nothing nested left whole


def test_every_epoch_of_both_stages_is_a_metric_at_its_epoch(single):
    client, run, folder = single
    history = _history(folder)
    assert {r["stage"] for r in history} == {"head", "fine-tune"}
    for stage in ("head", "fine-tune"):
        for key in ("loss", "val_loss", "val_accuracy", "val_macro_f1", "lr"):
            expected = [(r["epoch"], pytest.approx(r[key])) for r in history
                        if r["stage"] == stage and r[key] is not None]
            assert expected and _steps(client, run, f"{stage}/{key}") == expected, (stage, key)
    assert [s for s, _ in _steps(client, run, "fine-tune/val_accuracy")] == [0, 1]  # before training, then 1


def test_the_final_metrics_are_metrics_json_s(single):
    _, run, folder = single
    logged, metrics = run.data.metrics, json.loads((folder / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert logged["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert logged["test/macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert logged["test/balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])
    assert logged["test/n_images"] == metrics["n_images"]
    names = {"circle": "circle", "square": "square", ODD: "blue_triangle__3_"}
    assert set(metrics["per_class"]) == set(names)
    for cls, name in names.items():
        for key in ("accuracy", "f1", "precision", "recall"):
            assert logged[f"test/per_class/{name}/{key}"] == pytest.approx(metrics["per_class"][cls][key])
    baseline = metrics["baselines"]["majority"]["accuracy"]
    assert logged["test/baselines/majority/accuracy"] == pytest.approx(baseline)


def test_the_report_metrics_and_config_are_artifacts(single, tmp_path):
    client, run, folder = single
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.html", "metrics.json",
                                                                       "config.json"}
    got = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(got).read_text()) == json.loads((folder / "metrics.json").read_text())


def test_a_bare_flag_logs_to_mlflow_tracking_uri_and_multi_label_runs_log_map(multi):
    client, run, folder = multi  # _only_run found it in the store MLFLOW_TRACKING_URI named
    assert run.info.status == "FINISHED" and run.info.run_name == "run-multi"
    metrics, logged = json.loads((folder / "metrics.json").read_text()), run.data.metrics
    assert metrics["task"] == "multi"
    for key in ("map", "macro_f1", "micro_f1", "subset_accuracy", "hamming_loss"):
        assert logged[f"test/{key}"] == pytest.approx(metrics[key]), key
    for label, row in metrics["per_label"].items():
        assert logged[f"test/per_label/{label}/ap"] == pytest.approx(row["ap"])
        assert logged[f"test/per_label/{label}/f1"] == pytest.approx(row["f1"])
    history = _history(folder)
    assert _steps(client, run, "head/val_map") == [(r["epoch"], pytest.approx(r["val_map"]))
                                                   for r in history if r["stage"] == "head"]
    assert "fine-tune/val_map" in logged
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.html", "metrics.json",
                                                                       "config.json"}


def test_without_the_package_it_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    data = write_class_folders(tmp_path / "photos", 2)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--mlflow", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("imgtune: error: MLflow tracking (mlflow=..., --mlflow) needs the mlflow package: "
                   "pip install 'imgtune[mlflow]'.")
    assert not run.exists()
    with pytest.raises(MissingDependency, match=r"imgtune\[mlflow\]"):
        ImageClassifier().fit(data, tmp_path / "api", mlflow=True)


def test_an_unreachable_server_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again: nothing listens there
    data = write_class_folders(tmp_path / "photos", 2)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--mlflow", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"imgtune: error: Cannot reach the MLflow tracking server at http://127.0.0.1:{port}")
    assert "--mlflow" in err and "\n" not in err and "Traceback" not in err
    assert not (run / "config.json").exists() and not (run / "checkpoints").exists()


def test_a_value_that_is_no_uri_is_refused_in_the_callers_words(tmp_path):
    with pytest.raises(ParameterError, match=r"^mlflow must be True or a tracking URI .* received 3"):
        ImageClassifier().fit(tmp_path, mlflow=3)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--mlflow", " "]) == 2


def test_without_the_flag_mlflow_is_not_imported():
    code = ("import sys, imgtune, imgtune.cli, imgtune.classifier, imgtune.train.pipeline, "
            "imgtune.report.mlflow_log; assert 'mlflow' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_failure_after_the_start_is_said_once_and_the_fit_goes_on(tmp_path, monkeypatch):
    from imgtune.report.mlflow_log import MlflowLog
    from imgtune.runs.folder import RunFolder

    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    _client(uri).create_experiment("imgtune", artifact_location=(tmp_path / "artifacts").as_uri())
    said = []
    with MlflowLog.maybe(uri, RunFolder(tmp_path / "run"), {"recipe": {"head": {"lr": 0.1}}}, said.append) as log:
        record = {"stage": "head", "epoch": 1, "loss": 0.5, "val_accuracy": 0.75, "lr": 0.1}
        log.epoch(record, 1)
        log.epoch(record, 1)  # the same record again (finish's history): logged once

        def gone(*args, **kwargs):
            raise ConnectionError("the server went away\nand more")

        monkeypatch.setattr(log.client, "log_batch", gone)
        log.epoch({**record, "epoch": 2}, 2)
        log.epoch({**record, "epoch": 3}, 3)
    assert len(said) == 2 and said[1].startswith("MLflow: logging stopped (ConnectionError: the server went away)")
    client = _client(uri)
    run = _only_run(client)
    # not ended: a server that failed once is not waited for again (it once stalled a fit for minutes)
    assert run.info.status == "RUNNING" and run.data.params == {"recipe.head.lr": "0.1"}
    assert _steps(client, run, "head/loss") == [(1, 0.5)]


@pytest.mark.parametrize("store", ["sqlite:///{file}/mlflow.db", "file://{file}/mlruns", "sqlite:///{folder}"])
def test_a_local_store_that_cannot_be_made_is_one_line_without_retries(tmp_path, capsys, store):
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    (tmp_path / "dir").mkdir()
    uri = store.format(file=tmp_path / "plain.txt", folder=tmp_path / "dir")
    data = write_class_folders(tmp_path / "photos", 2)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--mlflow", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"imgtune: error: The MLflow tracking store at {uri} cannot be used")
    assert "\n" not in err and "SQLAlchemy" not in err and "--mlflow" in err


def test_a_failing_server_is_asked_once_not_retried(tmp_path, monkeypatch):
    """MLflow's client retries a failed request 7 times over minutes; imgtune's log asks once. A loopback
    server that is healthy but answers every API call 503 counts the calls it got."""
    import http.server
    import threading

    from imgtune.report.mlflow_log import MlflowLog
    from imgtune.runs.folder import RunFolder

    for name in ENV + ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            if self.path != "/health":
                calls.append(self.path)
            self.send_response(200 if self.path == "/health" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ParameterError, match="cannot be used"):
            with MlflowLog.maybe(f"http://127.0.0.1:{server.server_address[1]}", RunFolder(tmp_path / "run"),
                                 {"seed": 0}, lambda line: None):
                pass
    finally:
        server.shutdown()
    assert len(calls) == 1, calls
    import os

    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # restored after
