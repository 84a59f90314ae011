"""Fine-tuning's last word: keep the fine-tuned model only where it beats the head on validation by more
than the noise of the validation split (a paired bootstrap of the metric), else restore the head. A
stage that continued from a run's fine-tuned model (a retrain's) reverses the burden: that run chose it
over its head already, so the head replaces it only where it is better by more than the noise."""

from __future__ import annotations

from ..infer.multilabel import mean_average_precision, paired_map_gain, sigmoid
from ..metrics import score
from ..model.heads import Classifier
from .context import FitContext
from .decide import paired_gain
from .loop import StageState, collect_logits


def keep_or_not(ctx: FitContext, model: Classifier, trained, start: dict, state: StageState, val_batches,
                objective, *, continued: bool = False) -> dict:
    """Keep the fine-tuned weights only where they beat the head (`start`) on validation by more than the
    noise of the validation split (a paired bootstrap of the metric); otherwise restore the head. With
    `continued` (the stage started from another run's fine-tuned model), its epoch 0 is fine-tuned too,
    and it is kept unless the head beats it by more than the noise (on Fashion-MNIST with confusable
    labels, corrected in part: the continued model 0.834, the head 0.830 on validation; on test 0.8665
    against 0.8585; BENCHMARKS.md, "A retrain continues at a tenth of the rate")."""
    device = ctx.device
    tuned_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    z_ft, y = collect_logits(trained, val_batches(), device)
    model.load_state_dict(start)
    z_head, _ = collect_logits(trained, val_batches(), device)
    ft_score, head_score, gain, se = compared(objective, y, z_ft, z_head, ctx.seed)
    kept = gain >= -se if continued else state.best_epoch > 0 and gain > se
    name = objective.name
    against = (f"{ft_score:.4f} validation {name} (epoch {state.best_epoch}) against the head's {head_score:.4f}: "
               f"{gain * 100:+.1f} points")
    noise = f"the noise of {len(y):,} validation images (+-{se * 100:.1f})"
    if kept:
        model.load_state_dict(tuned_weights)
        why = f"{against}, more than {noise}; kept the fine-tuned model" if gain > se else \
            f"{against}, within {noise}; kept the fine-tuned model, which the run had chosen over its head"
    elif state.best_epoch == 0 and not continued:
        why = f"no epoch beat the head's {head_score:.4f} validation {name}; kept the head"
    else:
        why = f"{against}, {'beyond' if continued else 'within'} {noise}; kept the head"
    ctx.say(f"Fine-tuning: {why}.")
    return {"kept": kept, "reason": why, "best_epoch": state.best_epoch, "val_finetuned": ft_score,
            "val_head": head_score, "gain": gain, "noise": se, "metric": objective.metric}


def compared(objective, y, z_new, z_old, seed: int) -> tuple[float, float, float, float]:
    """(new score, old score, the gain, its paired-bootstrap standard error) on validation: the metric
    of the decisions (single-label), or the mAP of the probabilities (multi-label)."""
    if objective.multi_loss:
        p_new, p_old = sigmoid(z_new), sigmoid(z_old)
        gain, se = paired_map_gain(y, p_new, p_old, seed=seed)
        return mean_average_precision(y, p_new), mean_average_precision(y, p_old), gain, se
    decider = objective.decider() or (lambda z, _: z.argmax(1))
    p_new, p_old = decider(z_new, y), decider(z_old, y)
    k = z_new.shape[1]
    gain, se = paired_gain(y, p_new, p_old, objective.metric, k, seed=seed)
    return score(y, p_new, objective.metric, k), score(y, p_old, objective.metric, k), gain, se
