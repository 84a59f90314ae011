"""`imgtune export --format timm`: a folder timm loads offline with its own loaders, giving imgtune's logits;
its config.json in timm's hub format, and a model card built from the run's figures."""

import json
import shutil
import socket

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import write_multilabel_csv
from PIL import Image
from safetensors.torch import load_file

from imgtune import ImageClassifier
from imgtune.cli import main
from imgtune.config import HeadConfig
from imgtune.data.transforms import eval_transform
from imgtune.deploy.timm_export import _linear_head
from imgtune.errors import ImgtuneError
from imgtune.model.heads import make_head
from imgtune.runs.folder import RunFolder


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the timm export was read with a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The shared run (read only: the export goes elsewhere) exported through the CLI."""
    run, data, _ = trained_run
    out = tmp_path_factory.mktemp("timm") / "export"
    assert main(["export", str(run), "--format", "timm", "--output", str(out), "--quiet"]) == 0
    return run, data, out


@pytest.fixture(scope="module")
def multi_exported(tmp_path_factory):
    """A tiny multi-label run (head only), exported to RUN/timm."""
    base = tmp_path_factory.mktemp("multilabel")
    data = write_multilabel_csv(base / "data", 30, seed=0)
    run = base / "run"
    assert main(["train", str(data), "--out", str(run), "--image-size", "32", "--epochs", "0",
                 "--checkpoint-every", "0", "--device", "cpu", "--quiet"]) == 0
    assert main(["export", str(run), "--format", "timm", "--quiet"]) == 0
    return run, data.parent / "images", run / "timm"


def _images(run, folder):
    """The data's images, preprocessed as imgtune does: one tensor both models get."""
    t = eval_transform(ImageClassifier.load(run, quiet=True).trained_.data_config)
    paths = sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
    return torch.stack([t(Image.open(p).convert("RGB")) for p in paths])


def _imgtune_logits(run, x):
    with torch.inference_mode():
        return ImageClassifier.load(run, quiet=True).trained_.model.float().eval()(x).numpy()


def _loaded_both_ways(out):
    """timm's two offline ways in: the architecture by name with the file, and the folder itself."""
    config = json.loads((out / "config.json").read_text())
    k = config["num_classes"]
    by_file = timm.create_model(config["architecture"], pretrained=True, num_classes=k, pretrained_cfg_overlay={
        "file": str(out / "model.safetensors"), "num_classes": k})
    by_folder = timm.create_model("local-dir:" + str(out), pretrained=True)
    return config, [by_file.eval(), by_folder.eval()]


def _timm_logits(model, x):
    with torch.inference_mode():
        return model(x).numpy()


def test_timm_loads_the_folder_offline_and_gives_imgtunes_logits(exported, offline):
    run, data, out = exported
    x = _images(run, data)
    reference = _imgtune_logits(run, x)
    config, models = _loaded_both_ways(out)
    for model in models:
        assert model.num_classes == 3
        assert np.abs(_timm_logits(model, x) - reference).max() <= 1e-4
    # the weights are a state dict under timm's own names: a fresh model takes them with strict=True
    fresh = timm.create_model(config["architecture"], num_classes=config["num_classes"])
    fresh.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    assert np.abs(_timm_logits(fresh.eval(), x) - reference).max() <= 1e-4


def test_the_config_is_timms_hub_format_with_imgtunes_decisions(exported):
    run, data, out = exported
    config = json.loads((out / "config.json").read_text())
    ours = json.loads((run / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["num_classes"] == 3
    assert config["label_names"] == ours["classes"]
    p = config["pretrained_cfg"]
    d = ours["data_config"]
    assert p["input_size"] == [3, d["image_size"], d["image_size"]] and p["num_classes"] == 3
    assert p["mean"] == d["mean"] and p["std"] == d["std"] and p["interpolation"] == d["interpolation"]
    assert p["crop_pct"] == 1.0 and p["crop_mode"] == "center" and p["classifier"] == "classifier"
    assert "url" not in p and "hf_hub_id" not in p and "license" not in p  # those describe timm's weights
    info = config["imgtune"]
    assert info["temperature"] == pytest.approx(ours["temperature"]) and info["output"] == "softmax"
    assert info["decision_offsets"] == ours["decision"]["offsets"] and info["offsets_in_classifier_bias"]
    # timm resolves imgtune's preprocessing from it, and its own transform gives the same answers
    model = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    resolved = timm.data.resolve_data_config(model=model)
    assert tuple(resolved["input_size"]) == (3, 32, 32) and resolved["crop_pct"] == 1.0
    transform = timm.data.create_transform(**resolved)
    paths = sorted(p for p in data.rglob("*") if p.suffix in (".png", ".jpg"))
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    assert np.mean(_timm_logits(model, x).argmax(1) == _imgtune_logits(run, _images(run, data)).argmax(1)) >= 0.95


def test_the_model_card_has_the_header_and_the_runs_figures(exported):
    run, _, out = exported
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["library_name"] == "timm" and header["pipeline_tag"] == "image-classification"
    assert {"image-classification", "timm", "imgtune"} <= set(header["tags"]) and "license" not in header
    metrics = json.loads((run / "metrics.json").read_text())
    values = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert values["accuracy"] == metrics["accuracy"] and values["f1"] == metrics["macro_f1"]
    for section in ("## Model description", "## Training data", "## Classes", "## Training recipe",
                    "## Evaluation", "## Calibration", "## Known weak classes", "## Intended use and limitations",
                    "## How to load with timm"):
        assert section in card
    for cls, row in metrics["per_class"].items():  # the per-class table, from metrics.json
        cells = [f"{row[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")] + [str(row["support"])]
        assert f"| {cls} | {' | '.join(cells)} |" in card
    config = json.loads((run / "config.json").read_text())
    assert f"T = {config['temperature']:.4f}" in card
    assert f"ECE, test | {metrics['ece_uncalibrated']:.4f} | {metrics['ece']:.4f} |" in card
    assert "local-dir:\" + folder" in card and repr(str(out)) in card
    counts = config["counts"]
    assert f"| all images | {counts['train']} | {counts['val']} | {counts['test']} | {sum(counts.values())} |" in card


def test_decision_offsets_go_into_the_classifier_bias(trained_run, tmp_path, offline):
    run, data, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    folder = RunFolder(copy)
    config = folder.read_config()
    state = folder.load_weights(config["classes"])
    state["offsets"] = torch.tensor([0.75, -0.5, 0.25])  # planted: imgtune's logits carry them
    folder.save_weights(state, config["classes"])
    assert main(["export", str(copy), "--format", "timm", "--quiet"]) == 0  # default: RUN/timm
    out = copy / "timm"
    x = _images(copy, data)
    reference = _imgtune_logits(copy, x)
    for model in _loaded_both_ways(out)[1]:
        assert np.abs(_timm_logits(model, x) - reference).max() <= 1e-4
    info = json.loads((out / "config.json").read_text())["imgtune"]
    assert info["decision_offsets"] == [0.75, -0.5, 0.25]
    assert "circle +0.7500, square -0.5000, triangle +0.2500" in (out / "README.md").read_text()
    # exporting again replaces the previous export whole
    assert main(["export", str(copy), "--format", "timm", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not [p for p in copy.iterdir() if p.name.startswith(".timm.")]


def test_a_multi_label_export_gives_imgtunes_logits_with_its_labels_and_sigmoid(multi_exported, offline):
    run, images, out = multi_exported
    x = _images(run, images)
    reference = _imgtune_logits(run, x)
    config, models = _loaded_both_ways(out)
    for model in models:
        assert np.abs(_timm_logits(model, x) - reference).max() <= 1e-4
    ours = json.loads((run / "config.json").read_text())
    assert config["label_names"] == ours["classes"] == models[1].pretrained_cfg["label_names"]
    info = config["imgtune"]
    assert info["task"] == "multi" and info["output"] == "sigmoid"
    assert info["thresholds"] == pytest.approx(ours["thresholds"])
    assert info["temperature"] == pytest.approx(ours["temperature"])
    card = (out / "README.md").read_text()
    assert "multi-label-classification" in yaml.safe_load(card.split("---\n")[1])["tags"]
    assert "sigmoid" in card and "## Known weak labels" in card
    metrics = json.loads((run / "metrics.json").read_text())
    for label, row in metrics["per_label"].items():
        assert f"| {label} | {row['ap']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} |" in card


def test_an_mlp_head_is_refused_with_the_way_out():
    with pytest.raises(ImgtuneError, match="cannot hold.*--format onnx"):
        _linear_head(make_head(HeadConfig(kind="mlp"), 1280, 3), "mlp")
    assert _linear_head(make_head(HeadConfig(kind="linear", dropout=0.2), 1280, 3), "linear").out_features == 3


@pytest.mark.parametrize("bad", ["file", "folder"])
def test_a_bad_output_is_one_line_and_writes_nothing(trained_run, tmp_path, capsys, bad):
    run, _, _ = trained_run
    target = tmp_path / "target"
    if bad == "file":
        target.write_text("not a folder")
    else:
        target.mkdir()
        (target / "mine.txt").write_text("keep me")
    assert main(["export", str(run), "--format", "timm", "--output", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("imgtune: error: --output")
    assert ("is a file" if bad == "file" else "holds other files") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert not (run / "timm").exists()
