r"""Triton kernels of the smooth top-k SVM loss (imported on first use by ``backends.triton``).

Per row (scores ``s``, target ``y``, ``scale = 1/(k tau)``), with ``T`` the k largest non-target
scores, ``a`` their smallest, ``w_i = e^{(a - s_i) scale} <= 1`` on ``T`` and
``u_j = e^{(s_j - a) scale} <= 1`` on the rest ``R``:

.. math::

    z' = \alpha + \frac{a - s_y}{k} + \tau(\log A - \log B), \quad
    A = \sum_{b=0}^{k} \sigma_b(w) e_b(u), \quad B = \sum_{b=1}^{k} \sigma_b(w) e_{b-1}(u),

``l = relu(z') + tau log1p(e^{-|z'|/tau})``. Polynomials are tuples indexed by degree whose
entries are vectors over lanes (classes of a chunk, or anchors), so every product
``(1 + u X)`` is ``k`` fused multiply-adds of non-negative float64 numbers.

Stats of a row (float64, ``4 + 3k``): ``[a, slope, D_0..D_{k-1}, G_0..G_{k-1}, l, w,
i_0..i_{k-1}]`` (the shared layout of ``backends._abi``, then the row's weighted loss and
weight and the anchors' classes, exact in float64), and one more row whose first entry is the
total weight (the mean's divisor, written by the forward);
``dL/ds_j = slope u_j sum_m (-u_j)^m D_m`` on ``R``, ``slope G_i`` on ``T``, ``-slope`` on
``y``; ``slope = weight[y] sigmoid(z'/tau)/k`` (0 for ignored rows). With per-class margins
(``HAS_ALPHA``) the row's :math:`\alpha` is ``alpha[y]``, read from ``alpha_ptr``.

**The call's end, in the forward kernel.** With ``sums`` on (a ``"sum"`` or ``"mean"`` call of
at most ``KERNEL_SUM_ROWS`` rows) every program adds 1 to the call's counter (an int64 in the
total-weight row of ``stats``, :func:`_counter`, zeroed by the caller) after its row is
written; the program that brings the count to ``M`` is the last, sees every row (the addition
releases and acquires), sums the rows' losses and weights in a fixed order (deterministic,
whichever program is last) and writes the reduced loss and the total weight. No reduction
kernel runs after it (issue #20); ``sums`` off leaves the sums to the caller.

**Targets.** A target that is neither ``ignore_index`` nor a class trips a device assertion
(``tl.device_assert``, compiled when the launch passes ``debug=True``, as the caller does), as
F.cross_entropy's kernels assert: no check kernel runs before or after the call.

Shape: scores ``(M, n)`` row-major; stats ``(M + 1, 4 + 3k)``.
"""

import os

import triton
import triton.language as tl


def _stages() -> int:
    """``SMOOTHTOPK_TRITON_STAGES`` (default 2), checked: a positive integer."""
    raw = os.environ.get("SMOOTHTOPK_TRITON_STAGES", "2")
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"SMOOTHTOPK_TRITON_STAGES must be a positive integer, got {raw!r}")
    return int(raw)


INF = tl.constexpr(float("inf"))
BIG = tl.constexpr(2**31 - 1)
#: stages of the streaming loops over a row's chunks (``tl.range(..., num_stages=STAGES)``):
#: with 2, Triton's pipeliner loads the next chunk asynchronously (``cp.async`` into shared
#: memory on sm_80 and later) while the current one is computed; 1 is a plain loop, which loads
#: each chunk when it is reached (no ``cp.async`` in the sm_90 PTX). 2 costs the k = 1 forward
#: 15 registers (7 -> 5 blocks per multiprocessor) and the one-split k = 5 backward 8 (16 -> 12),
#: where a batch of a few hundred rows runs about 2 programs per multiprocessor anyway
#: (docs/benchmarks.md). ``SMOOTHTOPK_TRITON_STAGES`` (read at the first import) sets it, for
#: comparing both on a GPU.
STAGES = tl.constexpr(_stages())
#: rows per step of the last program's sums (:func:`_end_call`)
SUM_BLOCK = tl.constexpr(512)
#: the device assertion's message (:func:`_row_target`; the launch names the range on the host
#: side where it can: ``backends.triton``)
REFUSAL = tl.constexpr("smoothtopk: target must be in [0, n_classes) or equal to ignore_index")


@triton.jit
def _f64(value):
    """A scalar argument (Python float in the interpreter, fp64 when compiled) as fp64."""
    return tl.sum(tl.zeros([1], tl.float64), 0) + value


@triton.jit
def _insert(buf, ids, value, index, KP: tl.constexpr):
    """Replace the smallest entry of ``buf`` (the running k-th largest) by ``value``."""
    slots = tl.arange(0, KP)
    slot = tl.min(tl.where(buf == tl.min(buf, 0), slots, BIG), 0)
    return tl.where(slots == slot, value, buf), tl.where(slots == slot, index, ids)


@triton.jit
def _absorb_top(x, index, buf, ids, KP: tl.constexpr):
    """Running top-k: insert every ``x_j`` above the running k-th largest (NaN never enters).

    ``buf`` holds ``k`` active slots (``-inf`` until filled) and ``+inf`` in the padding.
    """
    avail = x > tl.min(buf, 0)
    best = tl.max(tl.where(avail, x, -INF), 0)
    while best > tl.min(buf, 0):
        at = tl.min(tl.where(avail & (x == best), index, BIG), 0)
        buf, ids = _insert(buf, ids, best, at, KP)
        avail = avail & (index != at)
        best = tl.max(tl.where(avail & (x > tl.min(buf, 0)), x, -INF), 0)
    return buf, ids


@triton.jit
def _segment_top(s_row, lo, hi, target, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    """The k largest non-target scores of classes ``[lo, hi)`` and the count of NaN / +inf."""
    slots = tl.arange(0, KP)
    buf = tl.where(slots < K, -INF, INF).to(tl.float32)
    ids = tl.full([KP], -1, tl.int32)
    bad = tl.zeros([BLOCK], tl.int32)
    for start in tl.range(lo, hi, BLOCK, num_stages=STAGES):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(s_row + offs, mask=offs < hi, other=-INF).to(tl.float32)
        bad += ((x != x) | (x == INF)).to(tl.int32)
        x = tl.where(offs == target, -INF, x)
        buf, ids = _absorb_top(x, offs, buf, ids, KP)
    return buf, ids, tl.sum(bad, 0)


@triton.jit
def _absorb(e, u, K: tl.constexpr):
    """``e <- e (1 + u X)`` truncated at degree ``K``: ``e_b += u e_{b-1}``, b descending."""
    out = (e[0],)
    for b in tl.static_range(1, K + 1):
        out = out + (e[b] + u * e[b - 1],)
    return out


@triton.jit
def _shift_cols(x, by):
    """``y[l, c] = x[l, c - by]`` for a tile ``(L, W)``; 0 where ``c - by`` is outside."""
    source = tl.broadcast_to(tl.arange(0, x.shape[1])[None, :], x.shape) - by
    inside = (source >= 0) & (source < x.shape[1])
    return tl.where(inside, tl.gather(x, tl.where(inside, source, 0), 1), 0.0)


@triton.jit
def _shift_vec(x, by):
    """``y[c] = x[c - by]`` for a vector; 0 where ``c - by`` is outside."""
    return tl.reshape(_shift_cols(x[None, :], by), [x.shape[0]])


@triton.jit
def _tile_mul(p, q, K: tl.constexpr):
    """Row-wise truncated products ``c[l, b] = sum_{i <= b} p[l, i] q[l, b - i]`` (b <= K)."""
    cols = tl.arange(0, p.shape[1])[None, :]
    c = tl.zeros(p.shape, tl.float64)
    for i in range(K + 1):
        p_i = tl.sum(tl.where(cols == i, p, 0.0), 1)
        c += p_i[:, None] * _shift_cols(q, i)
    return c


@triton.jit
def _lane_product(e, K: tl.constexpr, KP: tl.constexpr, WIDTH: tl.constexpr, LOG: tl.constexpr):
    """Product of the ``WIDTH = 2^LOG`` lane polynomials (rows of ``e``, ``(WIDTH, KP)``) by a
    balanced tree: ``(KP,)``, degrees 0..K."""
    for level in tl.static_range(LOG):
        pairs = tl.permute(tl.reshape(e, [WIDTH >> (level + 1), 2, KP]), (0, 2, 1))
        left, right = tl.split(pairs)
        e = _tile_mul(left, right, K)
    return tl.reshape(e, [KP])


@triton.jit
def _lanes_as_tile(e, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    """Degree tuple of ``(BLOCK,)`` lanes -> ``(BLOCK, KP)`` tile (zero beyond degree K)."""
    cols = tl.arange(0, KP)[None, :]
    tile = tl.zeros([BLOCK, KP], tl.float64)
    for b in tl.static_range(K + 1):
        tile = tl.where(cols == b, e[b][:, None], tile)
    return tile


@triton.jit
def _rest_weight(x, a, scale, WIDE: tl.constexpr):
    """``u = e^{(x - a) scale}`` in float64 for ``x <= a`` (``a`` a float64 holding a float32
    score): in float32 unless ``WIDE``, as the CPU kernel (``exponent_in_double``): the scores
    are float32 (or narrower) and ``scale`` a normal float, so ``x - a`` and the product carry
    two float32 roundings, relative, and a difference that overflows means ``u = 0``
    (docs/exactness.md). ``WIDE``: ``scale`` outside ``[1e-36, max float]``, all in float64."""
    if WIDE:
        u = tl.exp((x.to(tl.float64) - a) * scale)
    else:
        u = tl.exp((x.to(tl.float32) - a.to(tl.float32)) * scale.to(tl.float32)).to(tl.float64)
    return u


@triton.jit
def _segment_rest(
    s_row,
    lo,
    hi,
    target,
    a,
    scale,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
    LOG: tl.constexpr,
    WIDE: tl.constexpr,
):
    """``e_b(u)`` (``(KP,)``, b = 0..K) over the classes of ``[lo, hi)`` below ``a``, and the
    count of non-target classes equal to ``a`` (tied with the anchor; their ``u`` is 1)."""
    e = (tl.full([BLOCK], 1.0, tl.float64),)
    for _ in tl.static_range(1, K + 1):
        e = e + (tl.zeros([BLOCK], tl.float64),)
    ties = tl.zeros([BLOCK], tl.int32)
    for start in tl.range(lo, hi, BLOCK, num_stages=STAGES):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < hi
        x = tl.load(s_row + offs, mask=inside, other=-INF)
        other = offs != target
        u = _rest_weight(x, a, scale, WIDE)
        u = tl.where((x.to(tl.float64) < a) & other, u, 0.0)
        ties += ((x.to(tl.float64) == a) & other & inside).to(tl.int32)
        e = _absorb(e, u, K)
    tile = _lanes_as_tile(e, K, KP, BLOCK)
    return _lane_product(tile, K, KP, BLOCK, LOG), tl.sum(ties, 0)


@triton.jit
def _convolve(p, q, K: tl.constexpr):
    """``c_b = sum_{i <= b} p_i q_{b-i}`` for vectors ``(KP,)``, b <= K."""
    return tl.reshape(_tile_mul(p[None, :], q[None, :], K), [p.shape[0]])


@triton.jit
def _binomial_ties(e, ties, K: tl.constexpr, KP: tl.constexpr):
    """``e (1 + X)^ties``: the rest classes tied with ``a`` (``u = 1``); binomials in float64."""
    degree = tl.arange(0, KP).to(tl.float64)
    above = tl.maximum(ties.to(tl.float64) - degree + 1, 0.0)
    ratio = tl.where(degree == 0, 1.0, above / tl.maximum(degree, 1.0))
    return _convolve(e, tl.where(degree <= K, tl.cumprod(ratio, 0), 0.0), K)


@triton.jit
def _anchor_polynomials(w, K: tl.constexpr, KP: tl.constexpr):
    """``(KP, KP)`` tile: row ``i < K`` is ``sigma(w without w_i)``, row ``K`` is ``sigma(w)``
    (products of ``(1 + w_j X)``, non-negative terms)."""
    lanes = tl.arange(0, KP)
    poly = tl.where(lanes[None, :] == 0, 1.0, tl.zeros([KP, KP], tl.float64))
    for j in range(K):
        wj = tl.sum(tl.where(lanes == j, w, 0.0), 0)
        poly += tl.where(lanes != j, wj, 0.0)[:, None] * _shift_cols(poly, 1)
    return poly


@triton.jit
def _log1p(t):
    """``log(1 + t)`` for ``t >= 0`` to a few ulps (Goldberg: ``log(v) t / (v - 1)``)."""
    v = 1.0 + t
    return tl.where(v == 1.0, t, tl.log(v) * (t / (v - 1.0)))


@triton.jit
def _softplus_parts(zp, tau):
    """``(tau softplus(zp/tau), sigmoid(zp/tau))`` without overflow for any ``tau``."""
    t = tl.exp(-tl.abs(zp) / tau)
    loss = tl.maximum(zp, 0.0) + tau * _log1p(t)
    sig = tl.where(zp >= 0, 1.0 / (1.0 + t), t / (1.0 + t))
    return loss, sig


@triton.jit
def _rest_coefficients(sigma, e, total_a, total_b, KP: tl.constexpr):
    """``D_m = sum_b sigma_b e_{b-1-m} / A - sum_b sigma_b e_{b-2-m} / B``, ``(KP,)`` over m."""
    m = tl.arange(0, KP)[:, None]
    b = tl.arange(0, KP)[None, :]
    tile = tl.broadcast_to(e[None, :], [KP, KP])
    index_a = b - 1 - m
    from_a = tl.gather(tile, tl.maximum(index_a, 0), 1)
    from_b = tl.gather(tile, tl.maximum(index_a - 1, 0), 1)
    from_a = tl.sum(tl.where(index_a >= 0, sigma[None, :] * from_a, 0.0), 1)
    from_b = tl.sum(tl.where(index_a >= 1, sigma[None, :] * from_b, 0.0), 1)
    return from_a / total_a - from_b / total_b


@triton.jit
def _finish(
    e,
    ties,
    buf,
    ids,
    bad,
    s_row,
    target,
    keep,
    weight,
    row,
    tau,
    alpha,
    scale,
    stats_ptr,
    K: tl.constexpr,
    KP: tl.constexpr,
):
    """Anchors, ``A``, ``B`` and gradient factors of one row (float64, ``O(k^2)``) into its
    stats; returns its weighted loss and weight (0 for an ignored row)."""
    lanes = tl.arange(0, KP)
    active = lanes < K
    a32 = tl.min(buf, 0)
    a = a32.to(tl.float64)
    e = _binomial_ties(e, ties - tl.sum((active & (buf == a32)).to(tl.int32), 0), K, KP)
    top = buf.to(tl.float64)
    w = tl.where(active, tl.where(top == a, 1.0, tl.exp((a - top) * scale)), 0.0)
    poly = _anchor_polynomials(w, K, KP)
    sigma = tl.sum(tl.where(lanes[:, None] == K, poly, 0.0), 0)
    e_up = _shift_vec(e, 1)  # B's e_{b-1}
    total_a = tl.sum(sigma * e, 0)
    total_b = tl.sum(sigma * e_up, 0)
    incl_a = tl.sum(poly * _shift_vec(e, -1)[None, :], 1)
    incl_b = tl.sum(poly * e[None, :], 1)
    stats = _stats_row(stats_ptr, row, K)
    tl.store(stats + 2 + lanes, _rest_coefficients(sigma, e, total_a, total_b, KP), mask=active)
    gradient = w * (incl_b / total_b - incl_a / total_a)
    tl.store(stats + 2 + K + lanes, gradient, mask=active)
    tl.store(stats + 4 + 2 * K + lanes, ids.to(tl.float64), mask=active)
    true_score = tl.load(s_row + target, mask=keep, other=0.0).to(tl.float64)
    zp = alpha + (a - true_score) / K + tau * (tl.log(total_a) - tl.log(total_b))
    loss, sig = _softplus_parts(zp, tau)
    degenerate = (a == -INF) & (true_score > -INF)
    loss = tl.where(bad > 0, float("nan"), tl.where(degenerate, 0.0, loss))
    slope = tl.where(bad > 0, float("nan"), tl.where(degenerate, 0.0, sig / K))
    weight = tl.where(keep, weight, 0.0)
    tl.store(stats, a)
    tl.store(stats + 1, tl.where(keep, weight * slope, 0.0))
    return tl.where(keep, weight * loss, 0.0), weight


@triton.jit
def _row_target(target_ptr, weight_ptr, row, ignore_index, n, HAS_WEIGHT: tl.constexpr):
    """``(target, kept, weight[target])``; an ignored row's weight is never read. A target that
    is neither ``ignore_index`` nor a class trips the device assertion (module docstring)."""
    target = tl.load(target_ptr + row)
    counted = target != ignore_index
    inside = (target >= 0) & (target < n)
    tl.device_assert(inside | ~counted, REFUSAL)
    keep = counted & inside
    weight = tl.full([], 1.0, tl.float64)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + target, mask=keep, other=0.0).to(tl.float64)
    return target.to(tl.int32), keep, weight


@triton.jit
def _stats_row(stats_ptr, row, K: tl.constexpr):
    """Row ``row`` of stats (``4 + 3K`` float64 each; row ``M`` holds the total weight)."""
    return stats_ptr + row * (4 + 3 * K)


@triton.jit
def _counter(stats_ptr, K: tl.constexpr):
    """The call's counter of finished programs: an int64 in the second entry of the total-weight
    row (row ``M``) of stats."""
    rows = tl.num_programs(0).to(tl.int64)
    return (_stats_row(stats_ptr, rows, K) + 1).to(tl.pointer_type(tl.int64), bitcast=True)


@triton.jit
def _end_call(stats_ptr, out_ptr, row, loss, weight, reduction, sums, K: tl.constexpr):
    """Publish the row's weighted loss and weight; with ``sums`` on, the last program of the
    call reduces every row's (``reduction``: 0 none, 1 sum, 2 mean; module docstring)."""
    rows = tl.num_programs(0)
    stats = _stats_row(stats_ptr, row, K)
    tl.store(stats + 2 + 2 * K, loss)
    tl.store(stats + 3 + 2 * K, weight)
    tl.store(out_ptr + row, loss.to(tl.float32), mask=reduction == 0)
    if sums != 0:
        tl.debug_barrier()  # every thread's stores before the release
        seen = tl.atomic_add(_counter(stats_ptr, K), 1, sem="acq_rel") + 1
        if seen == rows:
            tl.debug_barrier()
            losses = tl.zeros([SUM_BLOCK], tl.float64)
            weights = tl.zeros([SUM_BLOCK], tl.float64)
            for start in range(0, rows, SUM_BLOCK):
                index = start + tl.arange(0, SUM_BLOCK)
                inside = index < rows
                at = stats_ptr + index.to(tl.int64) * (4 + 3 * K) + 2 + 2 * K
                losses += tl.load(at, mask=inside, other=0.0, cache_modifier=".cg")
                weights += tl.load(at + 1, mask=inside, other=0.0, cache_modifier=".cg")
            total_loss = tl.sum(losses, 0)
            total_weight = tl.sum(weights, 0)
            tl.store(_stats_row(stats_ptr, rows.to(tl.int64), K), total_weight)
            if reduction == 2:
                total_loss = total_loss / total_weight
            tl.store(out_ptr, total_loss.to(tl.float32))


@triton.jit
def _row_margin(alpha_ptr, alpha, target, keep, HAS_ALPHA: tl.constexpr):
    """The row's margin: ``alpha[target]`` with per-class margins, else the scalar ``alpha``."""
    if HAS_ALPHA:
        alpha = tl.load(alpha_ptr + target, mask=keep, other=0.0).to(tl.float64)
    return alpha


@triton.jit
def forward_row_kernel(
    s_ptr,
    target_ptr,
    weight_ptr,
    alpha_ptr,
    out_ptr,
    stats_ptr,
    n,
    ignore_index,
    tau: tl.float64,
    alpha: tl.float64,
    scale: tl.float64,
    reduction,
    sums,
    HAS_WEIGHT: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
    LOG: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One program per row: top-k pass, rest pass, finish, the call's end. Grid ``(M,)``."""
    row = tl.program_id(0).to(tl.int64)  # 64-bit: row * (4 + 3k), row * n pass 2^31
    tau, alpha, scale = _f64(tau), _f64(alpha), _f64(scale)
    s_row = s_ptr + row * n
    target, keep, weight = _row_target(target_ptr, weight_ptr, row, ignore_index, n, HAS_WEIGHT)
    alpha = _row_margin(alpha_ptr, alpha, target, keep, HAS_ALPHA)
    buf, ids, bad = _segment_top(s_row, 0, n, target, K, KP, BLOCK)
    a = tl.min(buf, 0).to(tl.float64)
    e, ties = _segment_rest(s_row, 0, n, target, a, scale, K, KP, BLOCK, LOG, WIDE)
    loss, weight = _finish(
        e,
        ties,
        buf,
        ids,
        bad,
        s_row,
        target,
        keep,
        weight,
        row,
        tau,
        alpha,
        scale,
        stats_ptr,
        K,
        KP,
    )
    _end_call(stats_ptr, out_ptr, row, loss, weight, reduction, sums, K)


@triton.jit
def _split_buffers(work_ptr, splits, KP: tl.constexpr):
    """The split rows' intermediates in one workspace (one allocation, not eight: each costs a
    training step a few µs of host time, issue #20), by the grid's rows ``M``: float64
    ``[segments' polynomials (M, splits, KP)]``, then float32 ``[candidates (M, splits, KP) |
    top (M, KP)]``, then int32 ``[candidates' classes (M, splits, KP) | top's (M, KP) |
    candidates' NaN counts (M, splits) | top's (M) | ties (M, splits)]``
    (:func:`smoothtopk.backends.triton.split_workspace`). Returns ``(poly, cand_val, cand_idx,
    cand_bad, top_val, top_idx, top_bad, ties)``."""
    rows = tl.num_programs(0).to(tl.int64)
    candidates = rows * splits * KP
    values = (work_ptr + candidates).to(tl.pointer_type(tl.float32), bitcast=True)
    index = (values + candidates + rows * KP).to(tl.pointer_type(tl.int32), bitcast=True)
    cand_bad = index + candidates + rows * KP
    top_bad = cand_bad + rows * splits
    return (work_ptr, values, index, cand_bad, values + candidates, index + candidates, top_bad,
            top_bad + rows)  # fmt: skip


@triton.jit
def top_segment_kernel(
    s_ptr,
    target_ptr,
    work_ptr,
    n,
    seg,
    splits,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Split rows, step 1: top-k of each segment. Grid ``(M, splits)``."""
    row, part = tl.program_id(0).to(tl.int64), tl.program_id(1)  # 64-bit row offsets
    _, cand_val, cand_idx, cand_bad, _, _, _, _ = _split_buffers(work_ptr, splits, KP)
    s_row = s_ptr + row * n
    target = tl.load(target_ptr + row).to(tl.int32)
    lo = part * seg
    buf, ids, bad = _segment_top(s_row, lo, tl.minimum(lo + seg, n), target, K, KP, BLOCK)
    slots = tl.arange(0, KP)
    base = (row * splits + part) * KP
    tl.store(cand_val + base + slots, tl.where(slots < K, buf, -INF))
    tl.store(cand_idx + base + slots, ids)
    tl.store(cand_bad + row * splits + part, bad)


@triton.jit
def select_kernel(
    work_ptr,
    splits,
    K: tl.constexpr,
    KP: tl.constexpr,
    CANDIDATES: tl.constexpr,
):
    """Split rows, step 2: the row's top-k among the segments' candidates. Grid ``(M,)``."""
    row = tl.program_id(0).to(tl.int64)  # 64-bit row offsets
    buffers = _split_buffers(work_ptr, splits, KP)
    _, cand_val, cand_idx, cand_bad, top_val, top_idx, top_bad, _ = buffers
    offs = tl.arange(0, CANDIDATES)
    inside = offs < splits * KP
    x = tl.load(cand_val + row * splits * KP + offs, mask=inside, other=-INF)
    index = tl.load(cand_idx + row * splits * KP + offs, mask=inside, other=-1)
    slots = tl.arange(0, KP)
    buf = tl.where(slots < K, -INF, INF).to(tl.float32)
    buf, ids = _absorb_top(x, index, buf, tl.full([KP], -1, tl.int32), KP)
    tl.store(top_val + row * KP + slots, buf)
    tl.store(top_idx + row * KP + slots, ids)
    parts = tl.arange(0, CANDIDATES)
    bad = tl.load(cand_bad + row * splits + parts, mask=parts < splits, other=0)
    tl.store(top_bad + row, tl.sum(bad, 0))


@triton.jit
def rest_segment_kernel(
    s_ptr,
    target_ptr,
    work_ptr,
    n,
    seg,
    splits,
    scale: tl.float64,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
    LOG: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Split rows, step 3: ``e_b(u)`` of each segment. Grid ``(M, splits)``."""
    row, part = tl.program_id(0).to(tl.int64), tl.program_id(1)  # 64-bit row offsets
    poly_ptr, _, _, _, top_val, _, _, ties_ptr = _split_buffers(work_ptr, splits, KP)
    scale = _f64(scale)
    s_row = s_ptr + row * n
    target = tl.load(target_ptr + row).to(tl.int32)
    a = tl.min(tl.load(top_val + row * KP + tl.arange(0, KP)), 0).to(tl.float64)
    lo = part * seg
    hi = tl.minimum(lo + seg, n)
    e, ties = _segment_rest(s_row, lo, hi, target, a, scale, K, KP, BLOCK, LOG, WIDE)
    tl.store(poly_ptr + (row * splits + part) * KP + tl.arange(0, KP), e)
    tl.store(ties_ptr + row * splits + part, ties)


@triton.jit
def finish_kernel(
    s_ptr,
    target_ptr,
    weight_ptr,
    alpha_ptr,
    work_ptr,
    out_ptr,
    stats_ptr,
    n,
    splits,
    ignore_index,
    tau: tl.float64,
    alpha: tl.float64,
    scale: tl.float64,
    reduction,
    sums,
    HAS_WEIGHT: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    SP: tl.constexpr,
    LOG: tl.constexpr,
):
    """Split rows, step 4: product of the segments' polynomials, finish, the call's end.
    Grid ``(M,)``."""
    row = tl.program_id(0).to(tl.int64)  # 64-bit: row * (4 + 3k), row * n pass 2^31
    buffers = _split_buffers(work_ptr, splits, KP)
    poly_ptr, _, _, _, top_val, top_idx, top_bad, ties_ptr = buffers
    tau, alpha, scale = _f64(tau), _f64(alpha), _f64(scale)
    s_row = s_ptr + row * n
    target, keep, weight = _row_target(target_ptr, weight_ptr, row, ignore_index, n, HAS_WEIGHT)
    alpha = _row_margin(alpha_ptr, alpha, target, keep, HAS_ALPHA)
    parts = tl.arange(0, SP)
    inside = parts < splits
    cols = tl.arange(0, KP)[None, :]
    e = tl.load(poly_ptr + (row * splits + parts)[:, None] * KP + cols, mask=inside[:, None])
    e = _lane_product(tl.where(inside[:, None], e, cols == 0), K, KP, SP, LOG)
    ties = tl.sum(tl.load(ties_ptr + row * splits + parts, mask=inside, other=0), 0)
    slots = tl.arange(0, KP)
    buf = tl.load(top_val + row * KP + slots)
    ids = tl.load(top_idx + row * KP + slots)
    bad = tl.load(top_bad + row)
    loss, weight = _finish(
        e,
        ties,
        buf,
        ids,
        bad,
        s_row,
        target,
        keep,
        weight,
        row,
        tau,
        alpha,
        scale,
        stats_ptr,
        K,
        KP,
    )
    _end_call(stats_ptr, out_ptr, row, loss, weight, reduction, sums, K)


@triton.jit
def _row_factor(
    grad_ptr, stats_ptr, stats, target_ptr, row, ignore_index, n, K: tl.constexpr,
    REDUCTION: tl.constexpr,
):  # fmt: skip
    """``slope dOut/dl_row``: per-row grad ("none"), shared ("sum"), over the total weight
    ("mean"; stats' row ``M``); exactly 0 for an ignored row (whose ``0 / total`` is NaN when
    every row is ignored) and for a target out of range (the forward's assertion reports it)."""
    slope = tl.load(stats + 1)
    if REDUCTION == 0:
        g = tl.load(grad_ptr + row).to(tl.float64)
    else:
        g = tl.load(grad_ptr).to(tl.float64)
    if REDUCTION == 2:
        g = g / tl.load(_stats_row(stats_ptr, tl.num_programs(0).to(tl.int64), K))
    target = tl.load(target_ptr + row)
    kept = (target != ignore_index) & (target >= 0) & (target < n)
    return tl.where(kept, slope * g, 0.0)


@triton.jit
def _write_fixed(
    grad_row,
    stats,
    target_ptr,
    row,
    factor,
    ignore_index,
    lo,
    hi,
    n,
    K: tl.constexpr,
    KP: tl.constexpr,
):
    """The anchors' and the target's gradient entries among classes ``[lo, hi)`` (after the
    rest's, by the same program: no other program writes them)."""
    slots = tl.arange(0, KP)
    active = slots < K
    index = tl.load(stats + 4 + 2 * K + slots, mask=active, other=-1.0).to(tl.int64)
    anchor = tl.load(stats + 2 + K + slots, mask=active, other=0.0)
    dtype = grad_row.dtype.element_ty
    value = tl.where(factor == 0.0, 0.0, factor * anchor).to(tl.float32).to(dtype)
    tl.store(grad_row + index, value, mask=active & (index >= lo) & (index < hi))
    target = tl.load(target_ptr + row)
    # -factor, but NaN for an infinite factor (an infinite class weight), as F.cross_entropy
    value = tl.where(factor == 0.0, 0.0, 0.0 * factor - factor).to(tl.float32).to(dtype)
    counted = (target != ignore_index) & (target >= 0) & (target < n)
    tl.store(grad_row + target, value, mask=counted & (target >= lo) & (target < hi))


@triton.jit
def backward_kernel(
    grad_ptr,
    s_ptr,
    target_ptr,
    stats_ptr,
    out_ptr,
    n,
    seg,
    ignore_index,
    scale: tl.float64,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
    REDUCTION: tl.constexpr,
    WIDE: tl.constexpr,
):
    """``dL/ds_j = factor u_j sum_m (-u_j)^m D_m`` (Horner, float64), then the anchors' and the
    target's entries of the segment. Grid ``(M, splits)``."""
    row, part = tl.program_id(0).to(tl.int64), tl.program_id(1)  # 64-bit row offsets
    scale = _f64(scale)
    stats = _stats_row(stats_ptr, row, K)
    a = tl.load(stats)
    factor = _row_factor(grad_ptr, stats_ptr, stats, target_ptr, row, ignore_index, n, K,
                         REDUCTION)  # fmt: skip
    s_row = s_ptr + row * n
    g_row = out_ptr + row * n
    lo = part * seg
    hi = tl.minimum(lo + seg, n)
    for start in tl.range(lo, hi, BLOCK, num_stages=STAGES):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(s_row + offs, mask=offs < hi, other=0.0)
        u = tl.where(x.to(tl.float64) < a, _rest_weight(x, a, scale, WIDE), 1.0)
        h = tl.zeros([BLOCK], tl.float64) + tl.load(stats + 1 + K)
        for m in tl.static_range(K - 2, -1, -1):
            h = tl.load(stats + 2 + m) - u * h
        value = tl.where(factor == 0.0, 0.0, factor * u * h)
        tl.store(g_row + offs, value.to(tl.float32).to(g_row.dtype.element_ty), mask=offs < hi)
    tl.debug_barrier()
    _write_fixed(g_row, stats, target_ptr, row, factor, ignore_index, lo, hi, n, K, KP)
