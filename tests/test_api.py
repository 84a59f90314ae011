"""The Python API and the run folder it writes: save/load round trip, hostile files refused."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import make_image

from imgtune import ImageClassifier, RunFolderError


def test_fit_predict_save_load(trained_run, tmp_path):
    run, data, cache = trained_run
    clf = ImageClassifier.load(run, quiet=True)
    assert clf.classes_ == ["circle", "square", "triangle"]
    rng = np.random.default_rng(5)
    pil = make_image("triangle", rng)
    preds = clf.predict([pil, np.asarray(make_image("square", rng)), str(data / "circle")], top_k=3)
    assert [p["label"] for p in preds[:2]] == ["triangle", "square"]
    assert [p["path"] for p in preds[:2]] == ["<image 0>", "<image 1>"]
    assert len(preds) == 2 + 14 and sum(p["label"] == "circle" for p in preds[2:]) >= 12
    for r in preds:  # top_k: the k most probable classes, most probable first, led by the prediction
        probs = [p for _, p in r["top_k"]]
        assert probs == sorted(probs, reverse=True) and r["top_k"][0] == (r["label"], r["probability"])
    shortlist = clf.predict(pil, top_k=2)[0]["top_k"]
    full = clf.predict(pil, top_k=3)[0]["top_k"]
    assert shortlist == full[:2] and sum(p for _, p in full) == pytest.approx(1, abs=1e-4)
    assert len({label for label, _ in full}) == 3

    saved = clf.save(tmp_path / "copy")
    again = ImageClassifier.load(saved, quiet=True)
    a, b = clf.predict(pil)[0], again.predict(pil)[0]
    assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_predict_before_fit_is_a_clear_error():
    with pytest.raises(RunFolderError, match="not trained yet"):
        ImageClassifier().predict("x.jpg")


def test_frozen_batchnorm_keeps_its_statistics(trained_run):
    run, _, _ = trained_run
    from imgtune.train.loop import set_train_mode

    model = ImageClassifier.load(run, quiet=True).model_
    for p in model.parameters():
        p.requires_grad = False
    for p in model.backbone.blocks[-1].parameters():
        p.requires_grad = True
    before = model.backbone.bn1.running_mean.clone()
    trained_bn = model.backbone.blocks[-1][0].bn1
    # the seed recipe (bn_train=True): BatchNorm in the trained blocks updates its statistics, frozen BN never
    set_train_mode(model)
    assert not model.backbone.bn1.training and trained_bn.training
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(before, model.backbone.bn1.running_mean)
    # bn_train=False: every BatchNorm keeps its pretrained statistics, trained blocks included, while their
    # affine weights still take gradients
    stats = trained_bn.running_mean.clone()
    set_train_mode(model, bn_train=False)
    assert not trained_bn.training and model.training
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert torch.equal(stats, trained_bn.running_mean) and trained_bn.weight.grad is not None


def _copy_run(run, dst):
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        (dst / name).write_bytes((run / name).read_bytes())
    return dst


def test_pickle_payload_is_refused_and_never_run(trained_run, tmp_path):
    run, _, _ = trained_run
    bad = _copy_run(run, tmp_path / "bad")
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    (bad / "model.safetensors").write_bytes(pickle.dumps({"state": Payload()}))
    with pytest.raises(RunFolderError, match="not a valid safetensors file"):
        ImageClassifier.load(bad)
    assert not sentinel.exists()


def test_tampered_or_mismatched_files_are_refused(trained_run, tmp_path):
    run, _, _ = trained_run
    cut = _copy_run(run, tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunFolderError, match="not a valid safetensors"):
        ImageClassifier.load(cut)

    wrong = _copy_run(run, tmp_path / "wrong")
    config = json.loads((wrong / "config.json").read_text())
    config["classes"].append("hexagon")
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match="the weights were saved for"):
        ImageClassifier.load(wrong)

    arch = _copy_run(run, tmp_path / "arch")
    config["classes"].pop()
    config["backbone"] = "resnet18"
    (arch / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match="does not match config.json"):
        ImageClassifier.load(arch)


def test_the_library_never_unpickles():
    """No pickle import, and every torch.load says weights_only=True."""
    import re
    from pathlib import Path

    import imgtune

    for path in Path(imgtune.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def test_a_fit_leaves_the_process_as_it_found_it(tmp_path):
    """Seeding, flush-denormal and (under torchrun) the process group are scoped to the fit: the
    caller's random streams go on where they were, and the errors it raises name the parameter."""
    import random

    from conftest import write_class_folders

    from imgtune import ParameterError

    data = write_class_folders(tmp_path / "photos", 6, seed=4)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    ImageClassifier(image_size=32, epochs=0, quiet=True, device="cpu").fit(data, out=tmp_path / "run")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    with pytest.raises(ParameterError, match=r"^image_size must be a whole number from 16 to 2048"):
        ImageClassifier(image_size=8).fit(data, out=tmp_path / "other")


def test_predict_proba_and_what_predict_skipped(trained_run, tmp_path):
    run, data, _ = trained_run
    clf = ImageClassifier.load(run, quiet=True)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    files = [str(data / "circle" / "circle_000.png"), str(tmp_path / "bad.png"), str(data / "square" / "square_001.jpg")]
    rows = clf.predict(files, top_k=3)
    assert [r["path"] for r in rows] == [files[0], files[2]]
    assert rows.skipped == [(files[1], rows.skipped[0][1])] and rows.skipped[0][1]
    proba = clf.predict_proba(files)
    assert proba.shape == (2, 3) and np.allclose(proba.sum(1), 1, atol=1e-4)
    assert [clf.classes_[i] for i in proba.argmax(1)] == [r["label"] for r in rows]
    assert not hasattr(ImageClassifier(), "classes_")  # before fit: an AttributeError, as in scikit-learn


@pytest.mark.parametrize("top_k", [0, -1, 1.5, "3", True])
def test_predict_refuses_a_top_k_that_is_not_a_whole_number_of_one_or_more(trained_run, top_k):
    from imgtune.errors import ParameterError

    run, data, _ = trained_run
    clf = ImageClassifier.load(run, quiet=True)
    with pytest.raises(ParameterError, match=r"^top_k must be a whole number, 1 or more"):
        clf.predict([str(data / "circle" / "circle_000.png")], top_k=top_k)


@pytest.mark.parametrize("param, value", [
    ("seed", 1.5), ("seed", -1), ("seed", "abc"), ("seed", True), ("backbone", None), ("backbone", 123),
    ("backbone", "resnet_does_not_exist"), ("checkpoint_every", "x"), ("checkpoint_every", -5),
    ("checkpoint_every", float("nan")), ("cache_dir", 3), ("device", 0)])
def test_fit_names_a_wrong_parameter_before_writing_anything(tmp_path, param, value):
    """Every parameter checked at the door, in the caller's words: a ConfigError naming it (never a
    NumPy or timm error), and the run folder left untouched."""
    from imgtune.errors import ConfigError

    data = tmp_path / "data"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
    clf = ImageClassifier(quiet=True, **{param: value})
    with pytest.raises(ConfigError, match=r"^(%s |Unknown backbone)" % param):
        clf.fit(data, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_estimator_contract_get_set_params_clone_and_fitted_attributes(trained_run):
    """scikit-learn's contract: the constructor's parameters through get_params / set_params, `clone`
    makes an unfitted copy with the same parameters, and the fitted attributes are real attributes (in
    dir(), for IDEs) that are absent before fit; a loaded run's parameters are those it trained with."""
    from sklearn.base import clone

    from imgtune.errors import ParameterError

    clf = ImageClassifier(epochs=3, metric="macro_f1", seed=7)
    params = clf.get_params()
    assert params["epochs"] == 3 and params["metric"] == "macro_f1" and params["seed"] == 7
    assert params["backbone"] == "efficientnet_lite0" and params["image_size"] is None
    assert clf.set_params(epochs=1, image_size=64) is clf and clf.epochs == 1 and clf.image_size == 64
    with pytest.raises(ParameterError, match="epoch is not a parameter"):  # a misspelt name is refused
        clf.set_params(epoch=2)
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == clf.get_params()
    assert repr(copy) == "ImageClassifier(image_size=64, epochs=1, metric='macro_f1', seed=7)"
    assert "classes_" in dir(clf) and not hasattr(clf, "classes_") and not hasattr(clf, "ranks_")

    run, _, _ = trained_run
    loaded = ImageClassifier.load(run, quiet=True)
    assert loaded.classes_ == ["circle", "square", "triangle"] and loaded.ranks_.main
    trained_with = json.loads((run / "config.json").read_text())
    assert loaded.image_size == trained_with["data_config"]["image_size"]
    assert loaded.epochs == trained_with["recipe"]["finetune"]["epochs"]
    fresh = clone(loaded)
    assert fresh.get_params() == loaded.get_params() and not hasattr(fresh, "classes_")
