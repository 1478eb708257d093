"""Brute-force float64 references: plain Python loops and sorting over one score vector."""

from __future__ import annotations

import math


def hinge_alpha(s, y, k, alpha=1.0):
    a = sorted((alpha + s[j] - s[y] for j in range(len(s)) if j != y), reverse=True)
    return max(0.0, sum(a[:k]) / k)


def hinge_beta(s, y, k, alpha=1.0):
    a = sorted((alpha + s[j] - s[y] for j in range(len(s)) if j != y), reverse=True)
    return sum(max(0.0, v) for v in a[:k]) / k


def truncated_entropy(s, y, k):
    d = sorted((s[j] - s[y] for j in range(len(s)) if j != y), reverse=True)
    return math.log(1.0 + sum(math.exp(v) for v in d[k - 1 :]))


def calibrated_hinge(s, y, k, alpha=1.0):
    return max(0.0, alpha + sorted(s, reverse=True)[k] - s[y])


def label_smoothing_ce(s, y, label_smoothing):
    m = max(s)
    log_z = m + math.log(sum(math.exp(v - m) for v in s))
    nll = [log_z - v for v in s]
    return (1.0 - label_smoothing) * nll[y] + label_smoothing * sum(nll) / len(s)


def smoothed_calibrated_hinge(s, y, k, eps, z, margin=1.0, scale=1.0):
    """``z[j][b]``: the noise of class j in draw b (the layout of the library and pytopk)."""
    draws = len(z[0])
    kth = [
        sorted((s[j] + eps * z[j][b] for j in range(len(s))), reverse=True)[k] for b in range(draws)
    ]
    return scale * max(0.0, margin + sum(kth) / draws - s[y])


def logit_adjusted_ce(s, y, tau_la=1.0, class_counts=None):
    """Cross-entropy of the shifted scores ``s_j + tau log(n_j / sum n)``, by hand."""
    counts = [1.0] * len(s) if class_counts is None else [float(n) for n in class_counts]
    total = sum(counts)
    shifted = [v + tau_la * math.log(n / total) for v, n in zip(s, counts, strict=True)]
    m = max(shifted)
    return m + math.log(sum(math.exp(v - m) for v in shifted)) - shifted[y]
