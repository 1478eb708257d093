r"""The smooth loss for every class at once: ``l_c = L_{k,tau}(s, c)`` for all ``c``, the
building block of probability targets and label smoothing (``E_{y ~ q} L(s, y)``).

.. math::

    L_{k,\tau}(s, c) = \tau\,\mathrm{softplus}(z_c / \tau), \qquad
    z_c = \alpha_c + \frac{a - s_c}{k} + \tau\log\frac{\sigma_k(x_{\setminus c})\,
        e^{-a/(k\tau)}}{\sigma_{k-1}(x_{\setminus c})},
    \qquad x_j = e^{s_j/(k\tau)} .

One anchor set serves every class: ``T``, the k largest scores of the row, ``a`` the smallest
of them, ``w_i = e^{(a - s_i)/(k tau)} <= 1`` on ``T`` and ``u_j = e^{(s_j - a)/(k tau)} <= 1``
on the rest ``R`` (the single-target algorithm's anchors, :mod:`smoothtopk.backends.pytorch`,
less the target). With ``e_b = e_b(u)``:

* a class ``c`` of ``R``: ``sigma_k(x without c) / sigma_{k-1}(x without c) = e^{a/(k tau)}
  A_c / B_c`` with ``A_c = sum_b sigma_b(w) e_b(u without c)`` and ``B_c = sum_b sigma_b(w)
  e_{b-1}(u without c)``. Since ``e_b(u without c) = sum_m (-u_c)^m e_{b-m}(u)``, both are
  polynomials of degree ``k`` in ``u_c`` whose ``k + 1`` coefficients are per row:
  ``A_c = sum_m (-u_c)^m A^{(m)}``, ``A^{(m)} = sum_{b >= m} sigma_b(w) e_{b-m}``, evaluated by
  Horner's rule in ``u_c <= 1`` (``k`` multiply-adds per class, as the gradient of the
  single-target loss; alternating terms bounded by binomials in ``k``, and ``A_c, B_c >= 1``
  before normalisation, so the error is absolute against a sum at least 1);
* a class ``c`` of ``T``: ``A'_c = sum_b sigma_b(w without c) e_{b+1}``, ``B'_c = sum_b
  sigma_b(w without c) e_b``, ``b < k``, with the leave-one-out ``sigma_b(w without c)`` of the
  k anchors from the summation recurrence (no subtraction).

``e_b / mass^b`` (``mass = max(1, sum u)``) comes from the subtraction-free tree
(:mod:`smoothtopk.backends.polynomial`) and every sum is normalised by the matching power of
``mass``: nothing overflows for any number of classes. The work is float64 (the Horner sums lose
up to binomial(k, k/2) units in the last place); the result is ``(M, C)`` float64, and autograd
differentiates it (double backward included): ``O(k C)`` per row either way. The fused kernels
(``smoothtopk::cpu_every_class``, ``triton_every_class``) compute the same sums and their
gradient in one call; :func:`fused_expected` is their one ``autograd.Function``.

Edge rules, those of the single-target loss class by class (``docs/math.md``): a row with a NaN
or ``+inf`` score is NaN; in a row with fewer than ``k`` finite scores besides ``c``, a finite
``c`` has loss 0, and a ``-inf`` class ``c`` has loss ``+inf`` when ``k`` other scores are finite
(NaN when they are not, as the single-target loss).

Example:
    >>> import torch
    >>> from smoothtopk import smooth_topk_svm_loss
    >>> scores = torch.tensor([[2.0, 1.0, 0.5, -1.0]], dtype=torch.float64)
    >>> every = smooth_losses(scores, 2, 1.0, 1.0)
    >>> single = [smooth_topk_svm_loss(scores, torch.tensor([c]), k=2) for c in range(4)]
    >>> torch.allclose(every, torch.stack(single)[None])
    True
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from .._convention import forward_ad_active, row_poison
from . import _abi
from .anchors import EXP_FLOOR, LOG_ZERO
from .polynomial import normalized_elementary_symmetric


def expected(scores: torch.Tensor, beta: torch.Tensor, k: int, tau: float, alpha) -> torch.Tensor:
    """``sum_c beta_{ic} L_{k,tau}(scores_i, c)``, ``(M,)`` in float64 for float64 scores, else
    float32: the expected loss of each row under coefficients ``beta (M, C)``."""
    out = (beta.to(torch.float64) * smooth_losses(scores, k, tau, alpha)).sum(dim=1)
    return out if scores.dtype == torch.float64 else out.float()


def smooth_losses(scores: torch.Tensor, k: int, tau: float, alpha) -> torch.Tensor:
    """``(M, C)`` float64: ``L_{k,tau}(scores_i, c)`` for every row ``i`` and class ``c``;
    ``alpha`` a float or per-class margins ``(C,)`` (class ``c`` uses ``alpha[c]``)."""
    s = scores.double()
    poison = row_poison(s)[:, None]  # 0, or NaN for a row with a NaN or +inf score
    finite = torch.isfinite(s)
    dead = finite.sum(dim=1, keepdim=True) <= k  # fewer than k finite scores besides some c
    lively = ~dead & (poison == 0)
    work = torch.where(lively, s, 0.0)  # rows of known value computed on zeros: no NaN
    log_ratio, anchor = _log_ratios(work, k, tau)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(torch.float64)[None, :]
    z = alpha + (anchor - work) / k + tau * log_ratio
    loss = z.clamp_min(0.0) + tau * torch.log1p(torch.exp(-z.abs() / tau))
    # a row with exactly k finite scores: its -inf classes have k finite others (loss +inf),
    # its finite ones fewer (loss 0); with fewer still, -inf classes are NaN as the single loss
    dead_value = torch.where(
        finite, 0.0, torch.where(finite.sum(dim=1, keepdim=True) == k, torch.inf, torch.nan)
    )
    return torch.where(dead, dead_value, loss) + poison


def _log_ratios(s: torch.Tensor, k: int, tau: float):
    """``(log(sigma_k / sigma_{k-1}) of the classes without c, less a / (k tau), (M, C); a)``
    for rows with more than ``k`` finite scores (``-inf`` scores rule their classes out)."""
    scale = 1.0 / (k * tau)
    top, anchor_index = s.topk(k, dim=1)
    anchor = top[:, -1:].detach()  # the value does not depend on the anchor: a constant
    argument = (s - anchor) * scale
    # the anchors' arguments are >= 0 (their u is zeroed next): at most 0, so that exp never
    # overflows to +inf, whose 0 * inf in the backward would be NaN
    u = torch.where(argument > EXP_FLOOR[s.dtype], argument.clamp_max(0.0), -torch.inf).exp()
    u = u.scatter(1, anchor_index, 0.0)  # the rest R: 0 on the anchors
    scaled, log_mass = normalized_elementary_symmetric(u, k)  # e_b / mass^b, b = 1..k
    e = torch.cat([torch.ones_like(log_mass), scaled], dim=1)  # (M, k + 1), e_0 = 1
    powers = torch.exp(-log_mass * torch.arange(k + 1, device=s.device, dtype=s.dtype))
    w = torch.exp((anchor - top) * scale)  # (M, k), <= 1
    sigma = _elementary(w)  # (M, k + 1)
    # the rest: A_c / mass^k and B_c / mass^(k-1) by Horner's rule in v_c = u_c / mass
    weighted = sigma * powers.flip(1)  # sigma_b mass^(b - k)
    a_coefficients = [(weighted[:, m:] * e[:, : k + 1 - m]).sum(1, keepdim=True) for m in
                      range(k + 1)]  # fmt: skip
    b_coefficients = [(weighted[:, m + 1 :] * e[:, : k - m]).sum(1, keepdim=True) for m in
                      range(k)]  # fmt: skip
    v = u * powers[:, 1:2]
    rest = _log(_horner(a_coefficients, v)) - _log(_horner(b_coefficients, v))
    # the anchors: A'_c / mass^k and B'_c / mass^(k-1) from sigma_b(w without c), b < k
    without = _elementary(w[:, None, :] * (1.0 - torch.eye(k, dtype=s.dtype, device=s.device)))
    without = without[..., :k] * powers[:, None, :k].flip(2)  # sigma_b(w\c) mass^(b + 1 - k)
    a_anchor = (without * e[:, None, 1:]).sum(2)
    b_anchor = (without * e[:, None, :k]).sum(2)
    anchors = _log(a_anchor) - _log(b_anchor)
    return rest.scatter(1, anchor_index, anchors) + log_mass, anchor


def _elementary(w: torch.Tensor) -> torch.Tensor:
    """``sigma_0 .. sigma_n`` of the last dimension of ``w`` (n = its size) by the summation
    recurrence: non-negative terms only."""
    n = w.shape[-1]
    sigma = F.pad(torch.ones_like(w[..., :1]), (0, n))
    for i in range(n):
        sigma = sigma + F.pad(sigma[..., :-1], (1, 0)) * w[..., i : i + 1]
    return sigma


def _horner(coefficients: list[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """``sum_m coefficients[m] (-v)^m``."""
    out = coefficients[-1].expand_as(v)
    for coefficient in reversed(coefficients[:-1]):
        out = coefficient - v * out
    return out


def _log(x: torch.Tensor) -> torch.Tensor:
    """``log x`` with ``log 0`` a finite stand-in (so that autograd never meets ``inf - inf``)."""
    return torch.where(x > 0, torch.log(x.clamp_min(torch.finfo(x.dtype).tiny)), LOG_ZERO)


#: the every-class operators by name (the argument of :func:`every_class_expected`)
EVERY_CLASS_OPS = {
    name: getattr(getattr(torch.ops, _abi.NAMESPACE), name).default
    for name in ("cpu_every_class", "triton_every_class")
}


def fused_expected(name: str, scores, beta, k, tau, alpha) -> torch.Tensor:
    """``sum_c beta_{ic} L(s_i, c)`` per row, ``(M,)`` (float64 for float64 scores, else
    float32), by the every-class operator ``name``, which also forms the gradient when autograd
    needs it (kept for the backward, as cross-entropy keeps its softmax). Double backward and a
    gradient for ``beta`` recompute with PyTorch operations (:func:`expected`)."""
    margins = alpha if isinstance(alpha, torch.Tensor) else None
    alpha = 0.0 if margins is not None else alpha
    needed = torch.is_grad_enabled() and (scores.requires_grad or beta.requires_grad)
    if not needed and not forward_ad_active():
        return EVERY_CLASS_OPS[name](scores, beta, k, tau, alpha, margins, False)[0]
    return _Expected.apply(scores, beta, k, tau, alpha, margins, name)[0]


class _Expected(torch.autograd.Function):
    """An every-class operator's loss with the gradient it formed; see
    :func:`fused_expected`."""

    @staticmethod
    def forward(*args):  # (scores, beta, k, tau, alpha, margins, name); *args: see below
        return EVERY_CLASS_OPS[args[-1]](*args[:-1], True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        scores, beta, k, tau, alpha, margins, _ = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(scores, beta, margins, output[1])
        ctx.options = (k, tau, alpha)

    @staticmethod
    def backward(ctx, grad_out, _):
        scores, beta, margins, grad = ctx.saved_tensors
        k, tau, alpha = ctx.options
        if not (torch.is_grad_enabled() or ctx.needs_input_grad[1]):
            return (grad_out.to(grad.dtype)[:, None] * grad, *([None] * 6))
        needed = ctx.needs_input_grad[:2]
        with torch.enable_grad():  # double backward, or d/d beta: recorded PyTorch operations
            alpha = margins if margins is not None else alpha
            out = expected(scores, beta, k, tau, alpha)
            wanted = [x for x, need in zip((scores, beta), needed, strict=True) if need]
            grads = iter(torch.autograd.grad(out, wanted, grad_out,
                                             create_graph=torch.is_grad_enabled()))  # fmt: skip
        return (*(next(grads) if need else None for need in needed), *([None] * 5))


# torch binds a Function's arguments to its forward's signature at every call when it has a
# setup_context: a precomputed signature of ``*args`` costs ~4 us against ~25 us (issue #20).
_Expected.forward.__signature__ = inspect.signature(_Expected.forward)
