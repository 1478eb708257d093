"""Independent references for the smooth top-k SVM loss (test code only).

Both work in numpy's extended precision (``np.longdouble``: a 64-bit mantissa on x86-64, quad
precision elsewhere), so that their own rounding stays far below the float64 bounds they judge.

* :func:`brute_force_loss` follows the definition: log-sum-exp over all k-subsets (n <= 10).
* :func:`log_space_loss_and_grad` runs the summation recurrence ``sigma_d += x_j sigma_{d-1}``
  in log space, one class at a time, forwards and backwards; the leave-one-out polynomials are
  convolutions of a prefix and a suffix, so the gradient
  ``d log sigma_d / d z_j = x_j sigma_{d-1}(x without j) / sigma_d(x)`` needs no subtraction.

Neither shares code or algorithm with the library (which uses a tree of polynomial products,
anchors on the top-k scores and Horner's rule for the gradient).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

EXTENDED = np.longdouble


def brute_force_loss(scores, target: int, k: int, tau: float, alpha: float) -> float:
    """``L_{k,tau}`` of one sample straight from the definition over all k-subsets."""
    scores = np.asarray([float(s) for s in scores], dtype=EXTENDED)
    tau, alpha = EXTENDED(tau), EXTENDED(alpha)
    everything, with_target = [], []
    for subset in itertools.combinations(range(len(scores)), k):
        mean = scores[list(subset)].sum() / k
        margin = EXTENDED(0) if target in subset else alpha
        everything.append((margin + mean) / tau)
        if target in subset:
            with_target.append(mean / tau)
    return float(tau * (_logsumexp(everything) - _logsumexp(with_target)))


def _logsumexp(values):
    values = np.asarray(values, dtype=EXTENDED)
    top = values.max()
    return top + np.log(np.exp(values - top).sum())


def log_space_loss_and_grad(scores: torch.Tensor, target: torch.Tensor, k: int, tau, alpha):
    """Reference loss ``(M,)`` and gradient ``(M, n)`` of a score matrix, as float64 tensors."""
    s = scores.detach().double().numpy().astype(EXTENDED)
    y = target.numpy()
    rows, n = s.shape
    picked = np.arange(rows)
    # The loss is shift invariant; shifting keeps the log-space values small.
    z = (s - s.max(axis=1, keepdims=True)) / (EXTENDED(k) * EXTENDED(tau))
    true_z = z[picked, y].copy()
    z[picked, y] = -np.inf  # x_y = 0: the target takes no part

    def sweep(order):
        state = np.full((rows, k + 1), -np.inf, dtype=EXTENDED)
        state[:, 0] = 0
        states = [state]
        for j in order:
            grown = np.concatenate([np.full((rows, 1), -np.inf, EXTENDED), state[:, :-1]], 1)
            state = np.logaddexp(state, grown + z[:, j : j + 1])
            states.append(state)
        return states

    prefix_states = sweep(range(n))
    prefix = np.stack(prefix_states[:-1], axis=1)  # (M, n, k+1): the classes before j
    suffix_states = sweep(range(n - 1, -1, -1))  # suffix_states[i]: the last i classes
    suffix = np.stack([suffix_states[n - 1 - j] for j in range(n)], axis=1)  # after j

    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return _finish(z, true_z, prefix, suffix, prefix_states[-1], y, k, tau, alpha)


def _finish(z, true_z, prefix, suffix, log_sigma, y, k, tau, alpha):
    picked = np.arange(z.shape[0])
    degrees = np.arange(k + 1)
    pair = degrees[:, None] - degrees[None, :]  # (d, a) -> d - a
    terms = prefix[:, :, None, :] + suffix[:, :, np.maximum(pair, 0)]
    terms = np.where(pair[None, None] >= 0, terms, -np.inf)
    top = terms.max(axis=-1, keepdims=True)
    safe_top = np.where(np.isfinite(top), top, 0)
    leave_one_out = (safe_top + np.log(np.exp(terms - safe_top).sum(-1, keepdims=True)))[..., 0]

    argument = EXTENDED(alpha) / EXTENDED(tau) + log_sigma[:, k] - log_sigma[:, k - 1] - true_z
    loss = EXTENDED(tau) * np.logaddexp(0, argument)
    inclusion_k = np.exp(z + leave_one_out[:, :, k - 1] - log_sigma[:, k : k + 1])
    inclusion_k1 = (
        np.exp(z + leave_one_out[:, :, k - 2] - log_sigma[:, k - 1 : k]) if k >= 2 else 0.0
    )
    slope = (1 / (1 + np.exp(-argument)))[:, None] / k
    grad = np.nan_to_num(slope * (inclusion_k - inclusion_k1), nan=0.0)
    grad[picked, y] = -slope[:, 0]
    return torch.from_numpy(loss.astype(np.float64)), torch.from_numpy(grad.astype(np.float64))


def hard_loss(scores, target: int, k: int, alpha: float) -> float:
    """``max(0, alpha + ((s without y)_[k] - s_y) / k)`` by sorting."""
    others = sorted((float(s) for j, s in enumerate(scores) if j != target), reverse=True)
    return max(0.0, alpha + (others[k - 1] - float(scores[target])) / k)


def ldam_brute_force_loss(
    scores, target: int, k: int, tau: float, max_margin: float, class_counts=None
) -> float:
    """:func:`brute_force_loss` with the target's LDAM margin ``m (min n / n_y)^(1/4)``."""
    if class_counts is None:
        return brute_force_loss(scores, target, k, tau, max_margin)
    counts = [EXTENDED(float(n)) for n in class_counts]
    margin = EXTENDED(max_margin) * (min(counts) / counts[target]) ** EXTENDED(0.25)
    return brute_force_loss(scores, target, k, tau, float(margin))
