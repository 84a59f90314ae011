"""Multi-label training pieces on planted data: the losses, the one-vs-rest head against scikit-learn,
the folds, and the decisions a head's out-of-fold predictions fit."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgtune.infer import multilabel as ml
from imgtune.train import multilabel


def test_the_asymmetric_loss_is_bce_for_positives_and_ignores_easy_negatives():
    z = torch.tensor([[2.0, -4.0, 0.5]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    asl = multilabel.image_losses(z, y, "asl")
    bce_pos = F.binary_cross_entropy_with_logits(z[:, 0], y[:, 0])
    p = torch.sigmoid(z[0, 2])
    hard_neg = -((p - 0.05) ** 4) * torch.log(1 - (p - 0.05))  # focusing 4, margin 0.05
    # the positive costs its BCE (no focusing on positives); sigmoid(-4) = 0.018 < 0.05 costs nothing
    assert asl.item() == pytest.approx((bce_pos + hard_neg).item(), rel=1e-5)
    bce = multilabel.image_losses(z, y, "bce")
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(z, y, reduction="sum").item(), rel=1e-6)
    with pytest.raises(ValueError, match="bce or asl"):
        multilabel.image_losses(z, y, "focal")


def test_the_bce_head_is_one_vs_rest_logistic_regression_with_scikit_learns_c():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    w = rng.normal(size=(3, 6))
    y = (rng.random((300, 3)) < ml.sigmoid(x @ w.T)).astype(np.float32)
    W, b = multilabel.fit_ovr(x, y, c=0.5, max_iter=500)
    for j in range(3):
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(x, y[:, j])
        assert np.allclose(W[j].numpy(), ref.coef_[0], atol=2e-3)
        assert b[j].item() == pytest.approx(ref.intercept_[0], abs=2e-3)


def test_folds_are_stratified_and_the_selection_fits_decisions_out_of_fold():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = (x[:, :3] + 0.5 * rng.normal(size=(400, 3)) > 0.8).astype(np.float32)  # rare-ish labels
    fold = multilabel.label_folds(y, 4, seed=0)
    assert sorted(np.bincount(fold)) == [100] * 4
    share = np.array([y[fold == f].mean(0) for f in range(4)])
    assert np.all(np.abs(share - y.mean(0)) < 0.03)
    choice = multilabel.select_label_head(x[:320], y[:320], x[320:], y[320:], seed=0)
    assert choice.selection.oof_logits.shape == (400, 3) and choice.oof_labels.shape == (400, 3)
    d = choice.decision
    assert len(d.thresholds) == 3 and len(d.temperature) == 3 and "out-of-fold" in d.fitted_on
    p = d.probabilities(choice.selection.oof_logits)
    tuned = ml.scores(choice.oof_labels, p >= np.asarray(d.thresholds))["macro_f1"]
    assert tuned >= ml.scores(choice.oof_labels, p >= 0.5)["macro_f1"]  # fitted for F1 on these predictions
    fresh = multilabel.val_scores(multilabel.logits(x[320:], choice.train_head), y[320:])
    assert fresh["val_map"] > 0.75 > 2 * y.mean()  # the head learned the planted labels (priors: their rates)


@pytest.mark.parametrize("positives", [1, 2])
def test_a_rare_label_gets_a_safe_threshold_and_never_harms_the_others(positives):
    """One or two images also tagged with a rare fourth label: the other labels' folds, L2 strength and
    held-out F1 are what they are without it, the rare one keeps threshold 0.5 and temperature 1 and is
    predicted on none of the held-out images (it was once predicted on every image: threshold 0.008)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    y = (x[:, :3] + 0.5 * rng.normal(size=(500, 3)) > 0.3).astype(np.float32)
    rare = np.zeros((500, 1), np.float32)
    rare[:positives] = 1
    with_rare = np.hstack([y, rare])
    plain = multilabel.select_label_head(x[:320], y[:320], x[320:400], y[320:400], seed=0)
    both = multilabel.select_label_head(x[:320], with_rare[:320], x[320:400], with_rare[320:400], seed=0)
    assert both.selection.folds == plain.selection.folds == 5
    assert both.selection.candidate.c == plain.selection.candidate.c
    d = both.decision
    assert d.thresholds[3] == 0.5 and d.temperature[3] == 1.0 and "under 10 positives" in d.fitted_on
    held = d.probabilities(multilabel.logits(x[400:], both.all_head)) >= np.asarray(d.thresholds)
    assert not held[:, 3].any()
    same = plain.decision.probabilities(multilabel.logits(x[400:], plain.all_head)) >= np.asarray(plain.decision.thresholds)
    f1 = lambda pred: ml.scores(y[400:], pred)["macro_f1"]
    assert abs(f1(held[:, :3]) - f1(same)) < 0.03 and f1(same) > 0.7  # the other labels as good as without it
