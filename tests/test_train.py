"""Training behaviour a user relies on: recipes, resume after an interruption, best-on-validation."""

import json

import pytest
import torch
from conftest import write_class_folders
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision.transforms import v2 as T

import imgtune.train.finetune as finetune
from imgtune import ImageClassifier
from imgtune.config import get_recipe, with_overrides
from imgtune.data.transforms import DataConfig, train_transform
from imgtune.errors import ConfigError
from imgtune.train.loop import Hook


def test_seed_recipe_is_the_original_one():
    r = get_recipe("seed")
    assert (r.head.kind, r.head.hidden, r.head.dropout) == ("mlp", 256, 0.5)
    ft = r.finetune
    assert (ft.optimizer, ft.lr, ft.momentum, ft.schedule, ft.augment) == ("sgd", 1e-4, 0.9, "constant", "seed")
    steps = train_transform(DataConfig(64, (0.5,) * 3, (0.5,) * 3), "seed").transforms
    affine = next(t for t in steps if isinstance(t, T.RandomAffine))
    assert affine.degrees == [-40.0, 40.0] and affine.scale == (0.8, 1.2)
    assert any(isinstance(t, T.Pad) and t.padding_mode == "edge" for t in steps)  # Keras' "nearest" fill
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in steps)


def test_overrides_refuse_impossible_values():
    assert with_overrides(get_recipe("default"), epochs=0).finetune.epochs == 0
    with pytest.raises(ConfigError, match="batch_size"):  # the Python caller's word, not the flag's
        with_overrides(get_recipe("default"), batch_size=0)
    with pytest.raises(ConfigError, match="metric must be one of"):
        with_overrides(get_recipe("default"), metric="f1")
    with pytest.raises(ConfigError, match="head_epochs applies"):
        with_overrides(get_recipe("default"), head_epochs=5)
    with pytest.raises(ConfigError, match="Unknown recipe"):
        get_recipe("fast")


def test_fine_tuning_starts_where_the_head_ended():
    """Continuity: at step 0 of fine-tuning, the model with every BatchNorm on its running statistics
    (eval mode, as validation sees it; in training too with bn_train=False) gives the head's own logits
    and loss on the same images, through the whole network and through the trunk-cache split alike; no
    shock at the hand-over. (The default's bn_train=True normalises training batches by their own
    statistics, which on images unlike ImageNet's is what lets the blocks adapt: BENCHMARKS.md.)"""
    import numpy as np

    from imgtune.config import DEFAULT
    from imgtune.model.backbones import create_backbone, unfrozen_names
    from imgtune.model.heads import Classifier, make_head
    from imgtune.model.linear import Candidate, fit_candidate, head_loss, load_into
    from imgtune.model.trunk import Tail, Trunk, split_stage
    from imgtune.train.loop import Objective, set_train_mode, start_loss

    b = create_backbone(image_size=32)
    torch.manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32), torch.arange(24) % 3
    with torch.inference_mode():
        feats = b.model.eval()(x).numpy()
    fitted = fit_candidate(feats, y.numpy(), 3, Candidate(0.1))
    head = make_head(DEFAULT.head, b.num_features, 3)
    load_into(head[-1], fitted)
    model = Classifier(b.model, head)
    unfrozen = unfrozen_names(b.model, DEFAULT.finetune.unfreeze, "efficientnet_lite0")
    for n, p in model.backbone.named_parameters():
        p.requires_grad = n in unfrozen
    expected = feats @ fitted[0].numpy().T + fitted[1].numpy()
    for mode in ("eval", "train"):
        with torch.no_grad():
            stage = split_stage(b.model, unfrozen)
            tail = Classifier(Tail(b.model, stage), head)
            for net in (model, tail):
                net.eval() if mode == "eval" else set_train_mode(net, bn_train=False)
            trained = model(x).numpy()
            via_cache = tail(Trunk(b.model, stage).eval()(x)).numpy()
        assert np.allclose(trained, expected, atol=1e-4) and np.allclose(via_cache, expected, atol=1e-4), mode
    assert DEFAULT.finetune.bn_train is True  # its first training batches are normalised by their own statistics
    assert start_loss(model, [(x, y)], torch.device("cpu"), Objective("accuracy"), DEFAULT.finetune) == \
        pytest.approx(head_loss(feats, y.numpy(), fitted), abs=1e-5)


def _interrupting(hook: str, when):
    """run_stage whose fine-tune stage raises KeyboardInterrupt, as Ctrl-C would, right after the
    checkpoint (`hook`: "after_epoch" or "after_batch") for which `when(state)` holds."""
    real = finetune.run_stage

    class CtrlC(Hook):
        def after_epoch(self, state):
            if hook == "after_epoch" and when(state):
                raise KeyboardInterrupt

        def after_batch(self, state, done, loss_sum, seen):
            if hook == "after_batch" and when(state):
                raise KeyboardInterrupt

    def run_stage(stage, model, **kw):
        if stage.name == "fine-tune":  # after the stage's own hooks, so the checkpoint is written first
            kw["hooks"] = [*kw["hooks"], CtrlC()]
        return real(stage, model, **kw)
    return run_stage


# batches of 8: four per epoch, a checkpoint after every batch
SETTINGS = dict(image_size=32, epochs=2, batch_size=8, checkpoint_every=0.0, quiet=True, device="cpu")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data and the weights of one uninterrupted run, which every interrupted run must reproduce."""
    base = tmp_path_factory.mktemp("train-reference")
    data = write_class_folders(base / "photos", 14)
    ImageClassifier(**SETTINGS).fit(data, out=base / "full")
    return data, load_file(base / "full" / "model.safetensors")


def _same_weights(weights, run) -> bool:
    other = load_file(run / "model.safetensors")
    return weights.keys() == other.keys() and all(torch.equal(weights[k], other[k]) for k in weights)


def test_interrupted_run_resumes_to_identical_weights(reference, tmp_path, monkeypatch, capfd):
    data, weights = reference
    monkeypatch.chdir(data.parent)  # relative paths, as a user types them
    cut = tmp_path / "cut"
    settings = dict(SETTINGS)
    with monkeypatch.context() as patch:
        patch.setattr(finetune, "run_stage", _interrupting("after_epoch", lambda st: st.epoch == 1))
        with pytest.raises(KeyboardInterrupt):
            ImageClassifier(**settings).fit(data.name, out=cut)
    assert not (cut / "model.safetensors").exists()
    head = (cut / "checkpoints" / "head.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="settings differ from the interrupted run"):
        ImageClassifier(**{**settings, "epochs": 3}).fit(data.name, out=cut, resume=True)
    capfd.readouterr()
    ImageClassifier(**{**settings, "quiet": False}).fit(data.name, out=cut, resume=True)
    # the head is the interrupted run's, not fitted again
    assert "Head: restored from the interrupted run's checkpoint." in " ".join(capfd.readouterr().err.split())
    assert (cut / "checkpoints" / "head.safetensors").read_bytes() == head
    assert _same_weights(weights, cut)
    history = [json.loads(x) for x in (cut / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history if h["stage"] == "fine-tune"] == [0, 1, 2]


def test_interrupted_mid_epoch_resumes_to_identical_weights(reference, tmp_path, monkeypatch):
    data, weights = reference
    with monkeypatch.context() as patch:  # stop after batch 2 of epoch 2
        patch.setattr(finetune, "run_stage", _interrupting("after_batch", lambda st: (st.epoch, st.batch) == (1, 2)))
        with pytest.raises(KeyboardInterrupt):
            ImageClassifier(**SETTINGS).fit(data, out=tmp_path / "cut")
    meta = json.loads(safe_open(str(tmp_path / "cut" / "checkpoints" / "finetune.safetensors"), "pt")
                      .metadata()["imgtune"])
    assert (meta["state"]["epoch"], meta["state"]["batch"]) == (1, 2)
    ImageClassifier(**SETTINGS).fit(data, out=tmp_path / "cut", resume=True)
    assert _same_weights(weights, tmp_path / "cut")


def test_the_kept_weights_are_the_best_epoch_on_validation(trained_run, tmp_path):
    run, _, _ = trained_run
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    ft = [h for h in history if h["stage"] == "fine-tune"]
    assert ft[0]["epoch"] == 0  # the head-only model is validated first and competes for "best"
    val_rows = [r for r in (run / "split.csv").read_text().splitlines()[1:] if r.endswith(",val")]
    (tmp_path / "val.csv").write_text("path,label\n" + "\n".join(r.rsplit(",", 1)[0] for r in val_rows) + "\n")
    metrics = ImageClassifier.load(run, quiet=True).evaluate(tmp_path / "val.csv")
    assert metrics["accuracy"] == pytest.approx(max(h["val_accuracy"] for h in ft))


def test_head_dropout_drops_its_share_and_keeps_the_expected_value():
    from imgtune.model.heads import Dropout

    torch.manual_seed(0)
    d = Dropout(0.2).train()
    x = torch.ones(400, 1000)
    y = d(x)
    assert abs((y == 0).float().mean().item() - 51 / 256) < 0.005  # p to the nearest 1/256
    assert abs(y.mean().item() - 1.0) < 0.01  # survivors scaled up: the expected value is kept
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_a_diverging_fine_tune_restarts_once_from_the_head_and_says_so(tmp_path, capfd):
    """A planted learning rate far too high: after warm-up it trains above the head's loss, the stage
    restarts from the head at a tenth of the rate, and the head is kept when fine-tuning does not beat it."""
    import dataclasses

    from conftest import write_class_folders

    from imgtune.config import DEFAULT

    data = write_class_folders(tmp_path / "photos", 8, seed=6)
    bad = dataclasses.replace(DEFAULT, finetune=dataclasses.replace(DEFAULT.finetune, lr=30.0, head_lr=30.0,
                                                                     epochs=3))
    clf = ImageClassifier(recipe=bad, image_size=32, cache_dir=str(tmp_path / "cache"), device="cpu").fit(
        data, out=tmp_path / "run")
    err = " ".join(capfd.readouterr().err.split())
    assert "restarting from the head at a tenth of the learning rate" in err
    ft = json.loads((tmp_path / "run" / "config.json").read_text())["finetune"]
    assert ft["restarted"]["lr_scale"] == 0.1 and ft["restarted"]["loss_after_warmup"] > ft["restarted"]["start_loss"]
    assert "Fine-tuning:" in err and ("kept the head" in err) == (not ft["kept"])
    assert clf.history_[0]["stage"] == "head"
