"""The fast paths give the answers of the slow ones: the trunk cache, the fixed-padding / ONNX Runtime
frozen network, and --time-limit's planning."""

import json
import time

import numpy as np
import pytest
import torch
from conftest import write_class_folders
from PIL import Image

from imgtune.cache.store import ShardStore
from imgtune.classifier import ImageClassifier
from imgtune.data.transforms import DataConfig, eval_transform
from imgtune.errors import ConfigError
from imgtune.model.backbones import create_backbone
from imgtune.model.frozen import fast_frozen, fixed_padding
from imgtune.model.trunk import Tail, Trunk, split_stage
from imgtune.progress import Reporter
from imgtune.train.budget import Plan, Rates, TickingClock, TimeLimit, parse_duration, plan_epochs
from imgtune.train.hooks import StopAt
from imgtune.train.loop import Stage, StageState, run_stage


def _trainable(model, prefixes):
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


def test_trunk_then_tail_is_the_backbone_and_the_split_refuses_what_it_cannot_cache():
    b = create_backbone(image_size=64)
    m = b.model
    stage = split_stage(m, _trainable(m, ("blocks.5.", "blocks.6.", "conv_head.", "bn2.")))
    assert stage == 5
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(Tail(m, stage)(Trunk(m, stage)(x)), m(x), atol=1e-5)
    assert split_stage(m, _trainable(m, ("conv_stem.", "blocks.6."))) is None  # a trained stem: nothing to cache
    assert split_stage(m, set()) is None


@pytest.mark.parametrize("cores", [2, 8])  # 8: more cores than images in the batch
def test_fixed_padding_and_onnx_runtime_copy_match_pytorch(tmp_path, monkeypatch, cores):
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)  # one ONNX Runtime run per core
    b = create_backbone(image_size=72)  # 72 px: stride-2 "same" paddings are asymmetric here
    x = torch.randn(3, 3, 72, 72)
    with torch.inference_mode():
        ref = b.model(x)
        assert torch.allclose(fixed_padding(b.model, 72)(x), ref, atol=1e-5)
        fast = fast_frozen(b.model, 72, device=torch.device("cpu"), cache_root=tmp_path, key_info={"t": 1})
        assert type(fast).__name__ == "OnnxModule" and fast.parts == cores
        assert torch.allclose(fast(x), ref, atol=1e-4)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1


def test_transforms_resample_tensors_as_pillow_would():
    """The eval transform resizes a uint8 tensor with PyTorch; it must give Pillow's picture (bicubic,
    shorter side, centre crop, the backbone's normalisation) within a level or two of 255."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:260]
    pixels = np.stack([xx % 97 * 2.6, yy * 1.7, (xx + yy) % 255], -1) + rng.normal(0, 12, (150, 260, 3))
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    cfg = DataConfig(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    w, left = 110, 23  # torchvision's geometry: int(64 * 260 / 150), round((110 - 64) / 2)
    ref = np.asarray(img.resize((w, 64), Image.BICUBIC).crop((left, 0, left + 64, 64)))
    ref = (torch.from_numpy(ref / 255).permute(2, 0, 1).float() - torch.tensor(cfg.mean)[:, None, None]) / \
        torch.tensor(cfg.std)[:, None, None]
    ours = eval_transform(cfg)(img)
    assert ours.shape == ref.shape == (3, 64, 64) and ours.dtype == torch.float32 and ours.is_contiguous()
    levels = ((ours - ref) * torch.tensor(cfg.std)[:, None, None] * 255).abs()
    assert levels.max() <= 2.01 and levels.mean() < 0.1


def test_cached_views_are_reused_and_train_only_the_tail(tmp_path, capsys, monkeypatch):
    data = write_class_folders(tmp_path / "photos", 12, seed=3)
    kw = dict(image_size=32, epochs=2, batch_size=8, cache_dir=str(tmp_path / "cache"), quiet=True, device="cpu")
    read = []  # how many cached views each read asks for: a batch, never the whole training set
    get_rows = ShardStore.get_rows
    monkeypatch.setattr(ShardStore, "get_rows", lambda self, keys, shape: read.append(len(keys)) or
                        get_rows(self, keys, shape))
    first = ImageClassifier(**{**kw, "quiet": False}).fit(data, out=tmp_path / "a")
    n_train, n_val = first.fit_info_["counts"]["train"], first.fit_info_["counts"]["val"]
    assert read and max(read) <= max(8, n_val) < n_train
    assert "Trunk view 1" in capsys.readouterr().err  # the first run computes the views
    shards_before = sorted(p.name for p in (tmp_path / "cache" / "trunk").rglob("*.its"))
    second = ImageClassifier(**{**kw, "quiet": False}).fit(data, out=tmp_path / "b")  # every view from the cache
    # reused, not recomputed: no trunk view was computed and no shard was written
    assert sorted(p.name for p in (tmp_path / "cache" / "trunk").rglob("*.its")) == shards_before
    assert "Trunk view" not in capsys.readouterr().err  # the progress bar of a computed view
    for k, v in first.model_.state_dict().items():
        assert torch.equal(v, second.model_.state_dict()[k]), k
    assert first.metrics_["accuracy"] == second.metrics_["accuracy"]
    # the frozen trunk did not move; the tail did
    pretrained = create_backbone(image_size=32).model.state_dict()
    tuned = first.model_.backbone.state_dict()
    assert torch.equal(tuned["blocks.4.0.conv_pw.weight"], pretrained["blocks.4.0.conv_pw.weight"])
    history = [json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert [h["images"] for h in history if h["stage"] == "fine-tune" and h["epoch"] > 0] == [n_train] * 2
    shards = list((tmp_path / "cache" / "trunk").rglob("*.its"))
    assert shards  # 3 augmented views + the plain one of every training image, and the plain one of the rest
    off = ImageClassifier(**{**kw, "cache_dir": str(tmp_path / "cache-off")}, cached_views=0).fit(
        data, out=tmp_path / "c")
    assert not (tmp_path / "cache-off" / "trunk").exists() and off.history_[-1]["images"] == n_train


def test_durations_and_plans():
    assert parse_duration("600") == 600 and parse_duration("10m") == 600 and parse_duration("1.5h") == 5400
    assert parse_duration("90s") == 90
    for bad in ("", "ten minutes", "-5m", "0"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    # 100 s left: 5 s of views, 1,000 eval images at 100/s + fixed costs, epochs of 1,000 / 50 + 100 / 150 s
    plan = plan_epochs(100, n_train=1000, n_val=100, n_eval=1000, views_to_compute=500, forward_rate=100,
                       step_rate=50)
    assert isinstance(plan, Plan) and plan.views_seconds == 5 and plan.epoch_seconds == pytest.approx(20.667, 1e-3)
    assert plan.epochs == int((100 * 0.95 - 5 - plan.evaluate_seconds) // plan.epoch_seconds)
    assert plan_epochs(10, n_train=1000, n_val=100, n_eval=1000, views_to_compute=0, forward_rate=100,
                       step_rate=50).epochs == 0


def test_a_stage_does_not_start_an_epoch_past_its_deadline():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    stage = Stage("head", lambda e: batches, 1, lambda: batches, opt,
                  torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 5)
    state = run_stage(stage, model, device=torch.device("cpu"), reporter=Reporter(quiet=True),
                      hooks=[StopAt(time.perf_counter() - 1, Reporter(quiet=True))])
    assert isinstance(state, StageState) and state.history == []


def test_time_limit_records_its_plan_and_a_resume_keeps_it(tmp_path):
    """The plan comes from the given clock and rates alone, so the outcome is the same on any machine,
    however busy: a ticking fake clock (each reading 0.25 s after the last) and fixed throughputs."""
    data = write_class_folders(tmp_path / "photos", 6, seed=5)

    def limit(seconds):
        return TimeLimit(seconds, clock=TickingClock(0.25), rates=Rates(forward=100.0, step=20.0))

    kw = dict(image_size=32, cache_dir=str(tmp_path / "cache"), quiet=True, device="cpu")
    clf = ImageClassifier(**kw, time_limit=limit(12)).fit(data, out=tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "checkpoints" / "plan.json").read_text())
    n_train, n_val = clf.fit_info_["counts"]["train"], clf.fit_info_["counts"]["val"]
    assert plan["epoch_seconds"] == 0.25  # re-planned after the first epoch: one tick of the fake clock
    trained = [h for h in clf.history_ if h["stage"] == "fine-tune" and h["epoch"] > 0]
    assert 2 <= len(trained) <= plan["epochs"]  # the stage also stops before an epoch past the limit
    first = plan_epochs(plan["left_seconds"], n_train=n_train, n_val=n_val, n_eval=n_val + clf.fit_info_["counts"][
        "test"], views_to_compute=3 * n_train, forward_rate=100.0, step_rate=20.0)
    assert plan["views_seconds"] == first.views_seconds and plan["evaluate_seconds"] == first.evaluate_seconds
    # (view 0 of every image came with the features: 3 augmented views of each training image were left)
    # what the user gave is stored, so the same command resumes; another limit is refused (the plan
    # belongs to the run)
    assert json.loads((tmp_path / "run" / "checkpoints" / "settings.json").read_text())["time_limit"] == 12
    with pytest.raises(ConfigError, match="time_limit"):
        ImageClassifier(**kw, time_limit=limit(30)).fit(data, out=tmp_path / "run", resume=True)
    again = ImageClassifier(**kw, time_limit=limit(12)).fit(data, out=tmp_path / "run", resume=True)
    resumed = [h["epoch"] for h in again.history_ if h["stage"] == "fine-tune"]
    assert resumed[:len(trained) + 1] == [h["epoch"] for h in clf.history_ if h["stage"] == "fine-tune"]
    assert resumed == list(range(plan["epochs"] + 1))  # the epochs it planned, not a new plan


def test_time_limits_from_seconds_durations_and_objects():
    assert TimeLimit.of(None) is None and TimeLimit.of("10m").seconds == 600 and TimeLimit.of(90).seconds == 90
    given = TimeLimit(5, clock=TickingClock(1.0))
    assert TimeLimit.of(given) is given and given.deadline(now=100.0) == 105.0
    assert TimeLimit(5, started=10.0).deadline(now=100.0) == 15.0
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            TimeLimit(bad)


def test_features_are_one_matrix_whose_splits_are_views_and_bad_rows_are_dropped_in_place():
    """Training at scale holds one per-image array: the splits, and train+val, are views of it."""
    from imgtune.data.manifest import Item, Manifest
    from imgtune.model.linear import joined
    from imgtune.train.extraction import split_views

    split_of = ["train"] * 5 + ["val"] * 3 + ["test"] * 2
    items = [Item(f"f{i}.png", i % 2, s) for i, s in enumerate(split_of)]
    feats = np.arange(40, dtype=np.float32).reshape(10, 4)  # rows in split order, as extraction writes them
    before = feats.copy()
    kept = [i not in (1, 6) for i in range(10)]  # one training and one validation file did not decode
    manifest = Manifest(["a", "b"], [it for it, k in zip(items, kept) if k])
    splits = split_views(feats, kept, manifest)
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert all(np.shares_memory(splits[s][0], feats) for s in splits)
    assert np.array_equal(np.concatenate([splits[s][0] for s in ("train", "val", "test")]), before[kept])
    assert [list(splits[s][1]) for s in ("train", "val")] == [[0, 0, 1, 0], [1, 1]]
    both = joined(splits["train"][0], splits["val"][0])
    assert np.shares_memory(both, feats) and np.array_equal(both, before[kept][:6])
    apart = joined(splits["train"][0], splits["test"][0])  # not adjacent: a copy, still in order
    assert not np.shares_memory(apart, feats) and np.array_equal(apart, before[kept][[0, 1, 2, 3, 6, 7]])


def test_a_fit_on_a_mask_of_rows_is_the_fit_on_a_copy_of_them():
    """Out-of-fold heads weigh the held-out rows zero instead of copying the others' features."""
    from imgtune.model.linear import Candidate, fit_candidate

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    x = (rng.normal(size=(300, 8)) + y[:, None] * 0.7).astype(np.float32)
    seen = rng.random(300) < 0.8
    for weighting in ("none", "balanced"):
        cand = Candidate(0.5, weighting)
        W1, b1 = fit_candidate(x[seen], y[seen], 3, cand)
        W2, b2 = fit_candidate(x, y, 3, cand, rows=seen)
        assert torch.allclose(W1, W2, atol=1e-4) and torch.allclose(b1, b2, atol=1e-4)
