r"""Triton kernel of the smooth loss of every class at once (imported on first use by
``backends.triton``): probability targets and label smoothing, ``sum_c beta_c L(s, c)`` per row
and its gradient. The port of ``csrc/every_class_cpu.cpp`` (docs/algorithm.md, "Every class at
once"), one program per row, float64 inside:

1. top-k of the row (no class removed): anchors ``T``, ``a`` their smallest; the count of finite
   scores and of NaN / ``+inf`` (dead rows take the limits, as the C++);
2. ``e_b(u)`` of the rest ``R`` (``triton_jit._segment_rest``; rest classes tied with ``a`` have
   ``u = 1``: a binomial factor), ``w``, ``sigma(w)`` and the leave-one-out ``sigma(w\i)`` (rows
   of one ``(KP, KP)`` tile), the coefficient vectors ``A_m``, ``B_m``, the anchors' losses;
3. class blocks: ``P[c, m] = (-u_c)^m``, ``A_c = P A``, ``B_c = P B`` (the C++'s Horner as one
   product with the coefficient vector), the loss; with the gradient, the adjoints of ``A_m`` and
   ``B_m`` accumulate as ``sum_c lambda_c P[c, :]``;
4. with the gradient: per-row adjoints (``e_b``, ``sigma(w)``, ``w`` through the leave-one-out
   products, reverse mode through their prefix and suffix products: ``O(k^2)`` vectors, no
   subtraction), then a second class pass writes ``-g_c / k + u_c scale (P F + lambda^A P A' -
   lambda^B P B')`` and the anchors ``-g_i / k - w_bar_i w_i scale``.

Polynomials are vectors of ``KP`` lanes indexed by degree (``0..K``, zero beyond).
"""

import triton
import triton.language as tl

from .triton_jit import (
    _absorb_top,
    _anchor_polynomials,
    _binomial_ties,
    _convolve,
    _f64,
    _log1p,
    _segment_rest,
    _shift_cols,
    _shift_vec,
    _softplus_parts,
)

INF = tl.constexpr(float("inf"))
#: below it ``e^x`` is 0 (the C++'s floor: no subnormal ``u``)
EXP_FLOOR = tl.constexpr(-708.0)
#: ``e^{z/tau}`` beyond it: ``z`` itself is formed (a tiny tau, a ``-inf`` class)
FAR = tl.constexpr(1e300)


@triton.jit
def _row_top(s_row, n, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    """The k largest scores of the row (``(KP,)`` values, ``+inf`` padding, and classes), the
    count of NaN / ``+inf`` scores and the count of finite ones."""
    slots = tl.arange(0, KP)
    buf = tl.where(slots < K, -INF, INF).to(tl.float32)
    ids = tl.full([KP], -1, tl.int32)
    bad = tl.zeros([BLOCK], tl.int32)
    finite = tl.zeros([BLOCK], tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(s_row + offs, mask=offs < n, other=-INF).to(tl.float32)
        bad += ((x != x) | (x == INF)).to(tl.int32)
        finite += ((x == x) & (tl.abs(x) < INF)).to(tl.int32)
        buf, ids = _absorb_top(x, offs, buf, ids, KP)
    return buf, ids, tl.sum(bad, 0), tl.sum(finite, 0)


@triton.jit
def _correlate(p, q):
    """``c_t = sum_m p_m q_{t+m}`` for vectors ``(KP,)`` (``q`` zero beyond its lanes)."""
    index = tl.arange(0, p.shape[0])[:, None] + tl.arange(0, p.shape[0])[None, :]
    tile = tl.broadcast_to(q[None, :], [p.shape[0], p.shape[0]])
    values = tl.gather(tile, tl.minimum(index, p.shape[0] - 1), 1)
    return tl.sum(tl.where(index < p.shape[0], p[None, :] * values, 0.0), 1)


@triton.jit
def _row_of(tile, j):
    """Row ``j`` of a tile ``(R, W)`` as a vector ``(W,)``."""
    rows = tl.arange(0, tile.shape[0])[:, None]
    return tl.sum(tl.where(rows == j, tile, 0.0), 0)


@triton.jit
def _col_of(tile, j):
    """Column ``j`` of a tile ``(R, W)`` as a vector ``(R,)``."""
    cols = tl.arange(0, tile.shape[1])[None, :]
    return tl.sum(tl.where(cols == j, tile, 0.0), 1)


@triton.jit
def _partial_products(w, K: tl.constexpr, KP: tl.constexpr, BEFORE: tl.constexpr):
    """``(KP, KP)`` tile: row ``i`` is ``prod_{j < i} (1 + w_j X)`` (``BEFORE``) or
    ``prod_{i < j < K} (1 + w_j X)``: the prefix and suffix products of the anchors."""
    lanes = tl.arange(0, KP)
    poly = tl.where(lanes[None, :] == 0, 1.0, tl.zeros([KP, KP], tl.float64))
    for j in range(K):
        wj = tl.sum(tl.where(lanes == j, w, 0.0), 0)
        if BEFORE:
            factor = tl.where(lanes > j, wj, 0.0)
        else:
            factor = tl.where(lanes < j, wj, 0.0)
        poly += factor[:, None] * _shift_cols(poly, 1)
    return poly


@triton.jit
def _tile_correlate(bar, q, K: tl.constexpr):
    """Row-wise ``c[i, d] = sum_t bar[i, d + t] q[i, t]`` (t <= K): the adjoint of one factor
    ``p`` of the truncated product ``p q`` given the adjoint ``bar`` of the product."""
    out = tl.zeros(bar.shape, tl.float64)
    for t in range(K + 1):
        out += _shift_cols(bar, -t) * _col_of(q, t)[:, None]
    return out


@triton.jit
def _powers(u, KP: tl.constexpr):
    """``(BLOCK, KP)`` tile of ``(-u_c)^m``."""
    cols = tl.arange(0, KP)[None, :]
    return tl.cumprod(tl.where(cols == 0, 1.0, -u[:, None] + tl.zeros([1, KP], tl.float64)), 1)


@triton.jit
def _class_values(ratio, alpha, a, x, value_a, value_b, tau, care, K: tl.constexpr):
    """``(tau softplus(z/tau), sigmoid(z/tau))`` of classes from ``e^{z/tau} = ratio``; where
    that leaves the double range (or is NaN: ``0 inf``), from ``z`` itself, formed only when a
    class of ``care`` needs it."""
    loss = tau * _log1p(ratio)
    share = ratio / (1.0 + ratio)
    far = ~(ratio < FAR)
    if tl.sum((far & care).to(tl.int32), 0) > 0:
        z = alpha + (a - x) / K + tau * tl.log(value_a / value_b)
        loss_z, share_z = _softplus_parts(z, tau)
        loss = tl.where(far, loss_z, loss)
        share = tl.where(far, share_z, share)
    return loss, share


@triton.jit
def _margins(alpha_ptr, exp_alpha_ptr, index, mask, alpha, exp_alpha, HAS_ALPHA: tl.constexpr):
    """``(alpha_c, e^{alpha_c / tau})`` of classes ``index``: per-class margins, or the scalar."""
    if HAS_ALPHA:
        alpha = tl.load(alpha_ptr + index, mask=mask, other=0.0).to(tl.float64)
        exp_alpha = tl.load(exp_alpha_ptr + index, mask=mask, other=1.0).to(tl.float64)
    else:
        alpha = tl.zeros(index.shape, tl.float64) + alpha
        exp_alpha = tl.zeros(index.shape, tl.float64) + exp_alpha
    return alpha, exp_alpha


@triton.jit
def _rest_block(
    s_row, b_row, alpha_ptr, exp_alpha_ptr, start, n, ids, a, scale, tau, alpha, exp_alpha,
    a_coef, b_coef, K: tl.constexpr, KP: tl.constexpr, TILE: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
):  # fmt: skip
    """One block of rest classes: ``(offs, rest mask, u, P, loss, g, lambda^A, lambda^B)``
    (anchors and classes past ``n`` masked out, their loss and ``g`` 0)."""
    offs = start + tl.arange(0, TILE)
    inside = offs < n
    slots = tl.arange(0, KP)
    anchor = tl.sum(((offs[:, None] == ids[None, :]) & (slots < K)[None, :]).to(tl.int32), 1)
    rest = inside & (anchor == 0)
    x = tl.load(s_row + offs, mask=inside, other=-INF).to(tl.float64)
    argument = (x - a) * scale
    u = tl.where(rest & (argument > EXP_FLOOR), tl.exp(argument), 0.0)
    powers = _powers(u, KP)
    value_a = tl.sum(powers * a_coef[None, :], 1)
    value_b = tl.sum(powers * b_coef[None, :], 1)
    alpha_c, exp_alpha_c = _margins(
        alpha_ptr, exp_alpha_ptr, offs, rest, alpha, exp_alpha, HAS_ALPHA
    )
    ratio = exp_alpha_c * (1.0 / u) * (value_a / value_b)
    loss, share = _class_values(ratio, alpha_c, a, x, value_a, value_b, tau, rest, K)
    beta = tl.load(b_row + offs, mask=rest, other=0.0).to(tl.float64)
    loss = tl.where(rest, beta * loss, 0.0)
    g = tl.where(rest, beta * share, 0.0)
    lambda_a = tl.where(g == 0.0, 0.0, tau * g / value_a)
    lambda_b = tl.where(g == 0.0, 0.0, tau * g / value_b)
    return offs, rest, u, powers, loss, g, lambda_a, lambda_b


@triton.jit
def _dead_row(s_row, b_row, g_row, out_ptr, row, n, bad, finite, K: tl.constexpr,
              BLOCK: tl.constexpr, WITH_GRAD: tl.constexpr):  # fmt: skip
    """NaN or ``+inf`` in the row: NaN; at most k finite scores: finite classes 0, ``-inf``
    classes ``+inf`` (exactly k finite) or NaN; gradient 0 (NaN for a NaN row)."""
    total = tl.zeros([BLOCK], tl.float64)
    poisoned = bad > 0
    edge = tl.where(finite == K, INF, float("nan"))
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < n
        x = tl.load(s_row + offs, mask=inside, other=0.0).to(tl.float64)
        beta = tl.load(b_row + offs, mask=inside, other=0.0).to(tl.float64)
        loss = tl.where((x == x) & (tl.abs(x) < INF), 0.0, edge)
        total += tl.where(inside, beta * loss, 0.0)
        if WITH_GRAD:
            value = tl.where(poisoned, float("nan"), 0.0) + tl.zeros([BLOCK], tl.float32)
            tl.store(g_row + offs, value.to(g_row.dtype.element_ty), mask=inside)
    total = tl.where(poisoned, float("nan"), tl.sum(total, 0))
    tl.store(out_ptr + row, total.to(out_ptr.dtype.element_ty))


@triton.jit
def every_class_kernel(
    s_ptr,
    beta_ptr,
    alpha_ptr,
    exp_alpha_ptr,
    out_ptr,
    grad_ptr,
    n,
    tau: tl.float64,
    alpha: tl.float64,
    scale: tl.float64,
    HAS_ALPHA: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
    LOG: tl.constexpr,
    TILE: tl.constexpr,
):
    """One program per row: ``out[row] = sum_c beta_c L(s, c)`` and, with ``WITH_GRAD``, its
    gradient ``grad[row, :]``. Grid ``(M,)``."""
    row = tl.program_id(0).to(tl.int64)  # 64-bit: row * n passes 2^31
    tau, alpha, scale = _f64(tau), _f64(alpha), _f64(scale)
    s_row = s_ptr + row * n
    b_row = beta_ptr + row * n
    g_row = grad_ptr + row * n
    buf, ids, bad, finite = _row_top(s_row, n, K, KP, BLOCK)
    if (bad > 0) | (finite <= K):
        _dead_row(s_row, b_row, g_row, out_ptr, row, n, bad, finite, K, BLOCK, WITH_GRAD)
    else:
        lanes = tl.arange(0, KP)
        active = lanes < K
        a32 = tl.min(buf, 0)
        a = a32.to(tl.float64)
        # u in float64 (WIDE): the rest classes' losses deflate e_b by Horner in the same u_c,
        # recomputed in float64 below; one rounding for both keeps the alternating sums exact
        e, ties = _segment_rest(s_row, 0, n, -1, a, scale, K, KP, BLOCK, LOG, True)
        e = _binomial_ties(e, ties - tl.sum((active & (buf == a32)).to(tl.int32), 0), K, KP)
        e = tl.where(lanes <= K, e, 0.0)
        top = buf.to(tl.float64)
        w = tl.where(active, tl.where(top == a, 1.0, tl.exp((a - top) * scale)), 0.0)
        poly = _anchor_polynomials(w, K, KP)  # rows i < K: sigma(w \ w_i); row K: sigma(w)
        sigma = _row_of(poly, K)
        a_coef = _correlate(e, sigma)  # A_m = sum_b sigma_b e_{b-m}
        b_coef = _correlate(e, _shift_vec(sigma, -1))  # B_m = sum_b sigma_b e_{b-1-m}
        e_next = _shift_vec(e, -1)
        anchor_a = tl.sum(poly * e_next[None, :], 1)  # sum_{b<k} sigma_b(w\i) e_{b+1}
        anchor_b = tl.sum(poly * e[None, :], 1)  # sum_{b<k} sigma_b(w\i) e_b
        exp_alpha = tl.exp(alpha / tau)
        alpha_i, exp_alpha_i = _margins(
            alpha_ptr, exp_alpha_ptr, ids, active, alpha, exp_alpha, HAS_ALPHA
        )
        ratio = exp_alpha_i * w * (anchor_a / anchor_b)
        loss_i, share_i = _class_values(ratio, alpha_i, a, top, anchor_a, anchor_b, tau, active, K)
        beta_i = tl.load(b_row + ids, mask=active, other=0.0).to(tl.float64)
        total = tl.sum(tl.where(active, beta_i * loss_i, 0.0), 0)
        g_i = tl.where(active, beta_i * share_i, 0.0)
        lambda_a_i = tl.where(g_i == 0.0, 0.0, tau * g_i / anchor_a)
        lambda_b_i = tl.where(g_i == 0.0, 0.0, tau * g_i / anchor_b)
        a_bar = tl.zeros([KP], tl.float64)
        b_bar = tl.zeros([KP], tl.float64)
        for start in range(0, n, TILE):
            _, _, _, powers, loss, _, lambda_a, lambda_b = _rest_block(
                s_row, b_row, alpha_ptr, exp_alpha_ptr, start, n, ids, a, scale, tau, alpha,
                exp_alpha, a_coef, b_coef, K, KP, TILE, HAS_ALPHA,
            )  # fmt: skip
            total += tl.sum(loss, 0)
            if WITH_GRAD:
                a_bar += tl.sum(lambda_a[:, None] * powers, 0)
                b_bar -= tl.sum(lambda_b[:, None] * powers, 0)
        tl.store(out_ptr + row, total.to(out_ptr.dtype.element_ty))
        if WITH_GRAD:
            a_bar = tl.where(lanes <= K, a_bar, 0.0)
            b_bar = tl.where(lanes < K, b_bar, 0.0)
            # A_m, B_m -> sigma(w), e; the anchors' sums -> e and sigma(w\i)
            sigma_bar = _convolve(a_bar, e, K) + _shift_vec(_convolve(b_bar, e, K), 1)
            sigma_bar = tl.where(lanes <= K, sigma_bar, 0.0)
            e_bar = _correlate(a_bar, sigma) + _correlate(b_bar, _shift_vec(sigma, -1))
            weighted_a = tl.sum(tl.where(active[:, None], lambda_a_i[:, None] * poly, 0.0), 0)
            weighted_b = tl.sum(tl.where(active[:, None], lambda_b_i[:, None] * poly, 0.0), 0)
            e_bar += _shift_vec(weighted_a, 1) - weighted_b
            e_bar = tl.where(lanes <= K, e_bar, 0.0)
            cols = lanes[None, :]
            without_bar = lambda_a_i[:, None] * e_next[None, :] - lambda_b_i[:, None] * e[None, :]
            without_bar = tl.where(active[:, None] & (cols < K), without_bar, 0.0)
            # sigma(w\i) = prefix_i suffix_i; sigma(w) = prefix_K: reverse mode through both
            prefix = _partial_products(w, K, KP, True)
            suffix = _partial_products(w, K, KP, False)
            prefix_bar = _tile_correlate(without_bar, suffix, K)
            prefix_bar = tl.where(lanes[:, None] == K, sigma_bar[None, :], prefix_bar)
            suffix_bar = _tile_correlate(without_bar, prefix, K)
            w_bar = tl.zeros([KP], tl.float64)
            carry = tl.zeros([KP], tl.float64)
            for step in range(K):  # prefix: steps j = K-1 .. 0 touch the rows i > j
                j = K - 1 - step
                carry += _row_of(prefix_bar, j + 1)
                wj = tl.sum(tl.where(lanes == j, w, 0.0), 0)
                value = tl.sum(carry * _shift_vec(_row_of(prefix, j), 1), 0)
                w_bar += tl.where(lanes == j, value, 0.0)
                carry += wj * _shift_vec(carry, -1)
            carry = tl.zeros([KP], tl.float64)
            for j in range(K):  # suffix: steps j = 0 .. K-1 (in reverse) touch the rows i < j
                carry += _row_of(suffix_bar, j - 1)  # row -1: none
                wj = tl.sum(tl.where(lanes == j, w, 0.0), 0)
                value = tl.sum(carry * _shift_vec(_row_of(suffix, j), 1), 0)
                w_bar += tl.where(lanes == j, value, 0.0)
                carry += wj * _shift_vec(carry, -1)
            # e_d(u) -> u_c: sum_r (-u_c)^r F_r, F_r = sum_d e_bar_d e_{d-1-r}
            f = tl.where(lanes < K, _correlate(e, _shift_vec(e_bar, -1)), 0.0)
            degree = (lanes + 1).to(tl.float64)
            a_slope = -degree * _shift_vec(a_coef, -1)  # d A_c / d u_c in powers of -u_c
            b_slope = -degree * _shift_vec(b_coef, -1)
            for start in range(0, n, TILE):
                offs, rest, u, powers, _, g, lambda_a, lambda_b = _rest_block(
                    s_row, b_row, alpha_ptr, exp_alpha_ptr, start, n, ids, a, scale, tau,
                    alpha, exp_alpha, a_coef, b_coef, K, KP, TILE, HAS_ALPHA,
                )  # fmt: skip
                u_bar = tl.sum(powers * f[None, :], 1)
                u_bar += lambda_a * tl.sum(powers * a_slope[None, :], 1)
                u_bar -= lambda_b * tl.sum(powers * b_slope[None, :], 1)
                value = -g / K + tl.where(u > 0.0, u_bar * u * scale, 0.0)
                tl.store(g_row + offs, value.to(tl.float32).to(g_row.dtype.element_ty), mask=rest)
            value = -g_i / K - w_bar * w * scale
            tl.store(g_row + ids, value.to(tl.float32).to(g_row.dtype.element_ty), mask=active)
