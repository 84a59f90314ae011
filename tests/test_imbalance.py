"""Imbalanced classes: the default recipe weights the loss and keeps the checkpoint on balanced accuracy."""

import json

import numpy as np
import pytest
import torch

from imgtune.cli import main
from imgtune.metrics import confusion_matrix, per_class
from imgtune.progress import Reporter
from imgtune.train import Balance, make_optimizer, make_scheduler, run_stage

from conftest import write_class_folders


def test_balance_plan():
    assert Balance.plan([100, 90, 80], "auto").weights is None
    plan = Balance.plan([400, 100, 100], "auto")
    assert plan.select == "val_balanced_accuracy" and plan.ratio == 4
    w = np.array(plan.weights)
    assert w[1] == pytest.approx(4 * w[0])
    assert float(np.dot(w, [400, 100, 100])) == pytest.approx(600)  # the average image still weighs 1
    assert Balance.plan([400, 100, 100], "off").weights is None
    assert Balance.plan([100, 100], "on").weights is not None


def _train_head(x, y, xv, yv, balance: Balance) -> float:
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], 2)
    opt = make_optimizer("adamw", [{"params": list(head.parameters()), "lr": 0.05}], momentum=0.9,
                         weight_decay=0.0)
    run_stage("head", head, train_batches=lambda e: [(x, y)], n_batches=1, val_batches=lambda: [(xv, yv)],
              optimizer=opt, scheduler=make_scheduler("constant", opt, 60), epochs=60, patience=None,
              label_smoothing=0.0, seed=0, device=torch.device("cpu"), reporter=Reporter(quiet=True),
              class_weights=balance.tensor("cpu"), select=balance.select)
    with torch.no_grad():
        pred = head(xv).argmax(1).numpy()
    return float(per_class(confusion_matrix(yv.numpy(), pred, 2))["recall"].mean())


def test_class_weights_raise_balanced_accuracy_on_imbalanced_features():
    rng = np.random.default_rng(0)

    def sample(n0, n1):
        x = np.concatenate([rng.normal(0, 1, (n0, 8)), rng.normal(0.8, 1, (n1, 8))]).astype(np.float32)
        return torch.from_numpy(x), torch.tensor([0] * n0 + [1] * n1)

    x, y = sample(950, 50)
    xv, yv = sample(950, 50)
    plain = _train_head(x, y, xv, yv, Balance.plan([950, 50], "off"))
    weighted = _train_head(x, y, xv, yv, Balance.plan([950, 50], "auto"))
    assert weighted > plain + 0.1


def test_fit_on_imbalanced_folders_says_how_it_compensated(tmp_path):
    data = write_class_folders(tmp_path / "photos", 6, seed=2)
    write_class_folders(tmp_path / "photos", 30, seed=3, classes=("circle",))
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--image-size", "32", "--epochs", "0",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    balance = json.loads((run / "config.json").read_text())["balance"]
    assert balance["selected_on"] == "balanced_accuracy" and balance["ratio"] >= 4
    assert balance["class_weights"][0] < balance["class_weights"][1]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all("val_balanced_accuracy" in r for r in history)
