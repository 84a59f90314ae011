"""Temperature scaling (Guo et al., 2017): one number T, fitted on the validation split, that divides the
logits so that a prediction's confidence matches how often such predictions are right. It never changes
which class is predicted, only how sure the model says it is."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T) on these labels."""
    if len(labels) == 0:
        return 1.0
    with torch.inference_mode(False), torch.enable_grad():  # callable from inside an inference block
        return _fit(torch.as_tensor(np.asarray(logits), dtype=torch.float64),
                    torch.as_tensor(np.asarray(labels), dtype=torch.long))


def _fit(z: torch.Tensor, y: torch.Tensor) -> float:
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, T_MIN, T_MAX)) if np.isfinite(t) else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
