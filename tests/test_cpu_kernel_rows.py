"""The fused CPU kernel's per-row specialisations (issue #20) against the references.

``smoothtopk::cpu_forward`` compiles its row for each ``k <= 8`` (the ``O(k^2)`` work unrolled;
for every k it runs for 8 rows at once as the lanes of vectors: ``row_tails``) and, for
``k <= 8`` and at most 512 classes, searches the top-k by lanes (``top_k_small``:
a max/min network per lane, a bitonic merge of the lanes, then the anchors in class order);
more classes, larger ``k`` and rows with fewer than ``k`` non-NaN candidates take the general
search. Each path is checked here against the extended-precision reference at the shapes that
select it, with ties, ``-inf`` classes, NaN/``+inf`` rows, ignored rows, class weights and
per-class margins, in every dtype the kernel reads, and the two searches against each other.
"""

import pytest
import torch

from reference import log_space_loss_and_grad
from smoothtopk.backends import cpu as cpu_kernel

INF, NAN = float("inf"), float("nan")
LANE_LIMIT = 512  # kLaneSearchClasses in smooth_topk_cpu.cpp
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6}


@pytest.fixture(autouse=True)
def kernel():
    if cpu_kernel.load() is None:
        pytest.skip("the fused CPU kernel could not be built")


def kernel_call(x, y, k, tau=1.0, alpha=1.0, weight=None, ignore_index=-100, reduction="none"):
    out, saved = cpu_kernel.forward(x, y, weight, ignore_index, k, tau, alpha, reduction)
    grad_out = torch.ones_like(out)
    grad = cpu_kernel.backward(
        grad_out, x, y, weight, ignore_index, saved, k, tau, alpha, reduction
    )
    return out, grad, saved


def _rows(classes, rows=9, seed=0, dtype=torch.float64, k=8):
    """Random rows with ties across the anchor (row 0), a tie of every other score (row 1),
    -inf classes (row 2, at least k + 1 finite others left), integers (many ties, row 3) and a
    large spread (row 4)."""
    generator = torch.Generator().manual_seed(seed + classes)
    x = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 2
    y = torch.randint(0, classes, (rows,), generator=generator)
    x[0, : max(classes // 3, 1)] = x[0, classes // 2]
    x[1] = 0.5
    ruled_out = max(0, min(classes // 2, classes - k - 2))
    x[2, torch.randperm(classes, generator=generator)[:ruled_out]] = -INF
    x[2, y[2]] = 0.25  # a finite target
    x[3] = torch.randint(-2, 3, (classes,), generator=generator).double()
    x[4] *= 20
    return x.to(dtype), y


def _reference(x, y, k, tau, alpha):
    # -inf as a score far below the others: the reference's limit
    finite = torch.where(torch.isinf(x.double()), -1e4, x.double())
    return log_space_loss_and_grad(finite, y, k, tau, alpha)


def _check(x, y, k, tau, alpha, dtype):
    out, grad, (stats, anchor_index) = kernel_call(x, y, k, tau, alpha)
    ref, ref_grad = _reference(x, y, k, tau, alpha)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tolerance, atol=tolerance)
    scale = ref_grad.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(grad.double() / scale, ref_grad / scale, rtol=0, atol=tolerance)
    # the anchors: k distinct classes other than the target, none below the k-th largest other
    for r in range(x.shape[0]):
        anchors = anchor_index[r].tolist()
        assert len(set(anchors)) == k and y[r].item() not in anchors
        others = torch.cat([x[r, : y[r]], x[r, y[r] + 1 :]]).double()
        kth = others.sort(descending=True).values[k - 1]
        assert (x[r, anchors].double() >= kth).all()
        assert stats[r, 0].item() == kth.item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "k, classes",
    [(k, c) for k in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 31]
     for c in [10, 17, 100, LANE_LIMIT, LANE_LIMIT + 1] if c > k + 1],
)  # fmt: skip
def test_each_k_and_search_against_reference(k, classes, dtype):
    x, y = _rows(classes, dtype=dtype, k=k)
    _check(x, y, k, 1.0, 1.0, dtype)


def _group_count(classes, k):
    """group_count in smooth_topk_cpu.cpp: the interleaved groups of the search for k > 8."""
    eighths = int((((k + 1) * classes) ** 0.5) / 8.0 + 0.5)
    return 8 * max(1, min(eighths, classes // 8, 512))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [9, 20])
@pytest.mark.parametrize("ties", [1, 3, 7, 12])
def test_the_key_search_with_many_candidates(k, ties, dtype):
    """k > 8: a row whose `ties` groups (class j in group j mod G) hold only the row's largest
    value, so that between k and about 12 (n / G) + k classes reach the group bound: both paths
    of the key search (pairwise ranks for up to 64 candidates, the bit search beyond; rows past
    its buffer or with fewer than k candidates, the insertion search, are _rows' all-tied row
    and test_edge_rows'), ties at the anchor, the target among the ties or not."""
    classes = 2000
    groups = _group_count(classes, k)
    generator = torch.Generator().manual_seed(ties + k)
    x = torch.randn(5, classes, generator=generator, dtype=torch.float64)
    tied = (torch.arange(classes) % groups) < ties
    x[:, tied] = 5.0  # rows 0, 3: equal
    x[1, tied.nonzero()[:: 2 * ties + 1]] = 6.0  # a few above the ties
    x[2:4, ~tied] -= 10.0  # every other class far below: those groups only
    spread = torch.rand(int(tied.sum()), generator=generator, dtype=torch.float64)
    x[2, tied] += spread  # rows 2, 4: distinct, above the rest
    x[4, tied] += spread
    y = torch.tensor(
        [int(tied.nonzero()[0]), 1 + groups // 2, 5, classes - 1, int(tied.nonzero()[1])]
    )
    _check(x.to(dtype), y, k, 1.0, 1.0, dtype)


@pytest.mark.parametrize("k", [9, 20, 47])
@pytest.mark.parametrize("classes", [60, 1000, 1003])
@pytest.mark.parametrize("layout", ["spread", "one_lane", "ties", "few_finite"])
def test_the_lane_bound_search(k, classes, layout):
    """8 < k < 48, float32: 16 lanes (class j in lane j mod 16) keep their 3 largest scores and
    the (k + 1)-th largest of those bounds the candidates. The bound is loose when one lane
    holds all of the row's largest scores (one_lane: many candidates, beyond the buffer at
    n = 1000), ties at it fill the buffer (ties: the group search takes the row), and fewer than
    k + 1 finite scores make it -inf (few_finite); the target among the largest or not."""
    if classes <= k + 1:
        pytest.skip("k >= n - 1")
    generator = torch.Generator().manual_seed(k + classes)
    x = torch.randn(6, classes, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (6,), generator=generator)
    lane = torch.arange(0, classes, 16)
    if layout == "one_lane":  # the largest scores all in lane 0, the target among them (row 0)
        top = lane[: k + 5]
        x[:, top] = 5.0 + torch.rand(6, len(top), generator=generator, dtype=torch.float64)
        y[0] = int(lane[2])
    elif layout == "ties":  # a third of the row tied at the k-th largest score
        x[:, : classes // 3] = 3.0
        x[:, classes // 3 : classes // 3 + k // 2] = 4.0
        y[1] = 0
    elif layout == "few_finite":  # k + 1 finite scores, the target's among them (row 2)
        finite = torch.randperm(classes, generator=generator)[: k + 1]
        x[:] = -INF
        x[:, finite] = torch.randn(6, k + 1, generator=generator, dtype=torch.float64)
        y[:] = finite[0]
    _check(x.float(), y, k, 0.5, 1.0, torch.float32)


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("tau, alpha", [(0.01, 1.0), (1e-3, 0.5), (30.0, 2.0)])
def test_small_and_large_tau(k, tau, alpha):
    x, y = _rows(60, seed=1)
    _check(x, y, k, tau, alpha, torch.float64)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
@pytest.mark.parametrize("classes", [12, 100, LANE_LIMIT + 7])
def test_the_two_searches_agree(k, classes):
    """Appending -inf classes leaves the loss and gradient unchanged (u = 0 there) and moves a
    row from the lane search to the group search (beyond 512 classes)."""
    x, y = _rows(classes, seed=2)
    out, grad, _ = kernel_call(x, y, k)
    padded = torch.cat([x, torch.full((x.shape[0], 2 * LANE_LIMIT), -INF, dtype=x.dtype)], 1)
    out_padded, grad_padded, _ = kernel_call(padded, y, k)
    # the anchors come in another order (rounding differs in the last bits)
    torch.testing.assert_close(out_padded, out, rtol=1e-14, atol=0)
    scale = grad.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(grad_padded[:, :classes] / scale, grad / scale, rtol=0, atol=1e-14)
    assert (grad_padded[:, classes:] == 0).all()


@pytest.mark.parametrize(
    "k, classes", [(k, c) for k in [1, 3, 5, 8, 12, 20] for c in [9, 40, 300] if c > k + 1]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_edge_rows(k, classes, dtype):
    """Per row: fewer than k finite others (loss 0, gradient 0), exactly k finite others, a
    target at -inf (+inf), NaN or +inf anywhere (NaN), every other class NaN, the target at
    the row's end and start (the lanes' padding and first block)."""
    generator = torch.Generator().manual_seed(classes + k)
    x = torch.randn(9, classes, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (9,), generator=generator)
    y[0], y[1], y[7], y[8] = 0, 0, classes - 1, 0
    x[0, 1 + (k - 1) :] = -INF  # k - 1 finite others
    x[1, 1 + k :] = -INF  # exactly k finite others
    x[2, y[2]] = -INF  # the target ruled out
    x[3, (y[3] + 1) % classes] = NAN
    x[4, (y[4] + 2) % classes] = INF
    x[5] = NAN
    x[5, y[5]] = 0.0  # every other class NaN
    x = x.to(dtype)
    out, grad, _ = kernel_call(x, y, k)
    assert out[0].item() == 0.0 and (grad[0] == 0).all()
    assert out[2].item() == INF
    assert out[3:6].isnan().all() and grad[3:6].isnan().all()
    keep = torch.tensor([1, 6, 7, 8])
    ref, ref_grad = _reference(x[keep], y[keep], k, 1.0, 1.0)
    tolerance = {torch.float64: 1e-12, torch.float32: 2e-6}.get(dtype, 1e-6)
    torch.testing.assert_close(out[keep].double(), ref, rtol=tolerance, atol=tolerance)
    if dtype in (torch.float64, torch.float32):
        torch.testing.assert_close(grad[keep].double(), ref_grad, rtol=tolerance, atol=1e-12)
    else:  # the exact gradient rounded to the dtype, to one unit in its last place
        info = torch.finfo(dtype)
        ulp = {"rtol": info.eps, "atol": info.smallest_normal * info.eps}
        torch.testing.assert_close(grad[keep], ref_grad.to(dtype), **ulp)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("k", [1, 4, 8, 12])
@pytest.mark.parametrize("classes", [20, LANE_LIMIT + 3])
def test_weights_ignored_rows_and_per_class_margins(k, classes, reduction):
    generator = torch.Generator().manual_seed(k + classes)
    x = torch.randn(10, classes, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (10,), generator=generator)
    y[[2, 7]] = -1
    x[2] = NAN  # an ignored row is never read
    weight = torch.rand(classes, generator=generator, dtype=torch.float64) + 0.5
    margins = torch.rand(classes, generator=generator, dtype=torch.float32) * 2
    out, grad, _ = kernel_call(
        x, y, k, 0.5, margins, weight=weight, ignore_index=-1, reduction=reduction
    )
    counted = y != -1
    rows = []
    ref_grad = torch.zeros_like(x)
    for r in torch.nonzero(counted).flatten().tolist():
        value, row_grad = _reference(x[r : r + 1], y[r : r + 1], k, 0.5, margins[y[r]].item())
        rows.append(weight[y[r]] * value[0])
        ref_grad[r] = weight[y[r]] * row_grad[0]
    per_row = torch.zeros(10, dtype=torch.float64)
    per_row[counted] = torch.stack(rows)
    if reduction == "none":
        ref = per_row
    else:
        ref = per_row.sum()
        if reduction == "mean":
            ref = ref / weight[y[counted]].sum()
            ref_grad = ref_grad / weight[y[counted]].sum()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert (grad[~counted] == 0).all()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [1, 5, 8, 9, 20])
@pytest.mark.parametrize("classes", [30, 1000])
def test_rows_in_blocks_of_eight(k, classes, threads):
    """The tails run 8 rows at a time (row_tails; compiled for each k <= 8, for any k beyond):
    every row of 4 full blocks and a partial one, split between threads at any row, with NaN,
    +inf, ignored and zero-loss rows among them, is the reference's row, and a poisoned row
    leaves its block's other rows alone."""
    generator = torch.Generator().manual_seed(classes + 10 * k)
    rows = 37
    x = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 3
    y = torch.randint(0, classes, (rows,), generator=generator)
    nan_rows, inf_rows, ignored, zero_rows = [3, 16], [9, 36], [5, 8, 30], [11]
    for r in nan_rows:
        x[r, (y[r] + 1) % classes] = NAN
    for r in inf_rows:
        x[r, (y[r] + 2) % classes] = INF
    y[ignored] = -1
    for r in zero_rows:  # fewer than k finite others
        x[r] = -INF
        x[r, y[r]] = 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, grad, _ = kernel_call(x, y, k, tau=0.7, alpha=1.0, ignore_index=-1)
    finally:
        torch.set_num_threads(previous)
    poisoned = nan_rows + inf_rows
    assert out[poisoned].isnan().all() and grad[poisoned].isnan().all()
    assert (out[ignored] == 0).all() and (grad[ignored] == 0).all()
    assert (out[zero_rows] == 0).all() and (grad[zero_rows] == 0).all()
    keep = [r for r in range(rows) if r not in poisoned + ignored + zero_rows]
    ref, ref_grad = _reference(x[keep], y[keep], k, 0.7, 1.0)
    torch.testing.assert_close(out[keep], ref, rtol=1e-12, atol=1e-12)
    scale = ref_grad.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(grad[keep] / scale, ref_grad / scale, rtol=0, atol=1e-12)


def _float_gradient_error(k, classes, tau, extra_rows_seed, scale=2.0, rows=6):
    """float32 rows: the kernel's gradient error against the long-double reference, relative
    to each row's largest |gradient| (floored at tiny / eps, as docs/exactness.md), and each
    row's (2k + 3) sum_m |D_m| from the kernel's stats (what decides the sum's precision)."""
    generator = torch.Generator().manual_seed(extra_rows_seed)
    x = (torch.randn(rows, classes, generator=generator, dtype=torch.float64) * scale).float()
    y = torch.randint(0, classes, (rows,), generator=generator)
    out, grad, (stats, _) = kernel_call(x, y, k, tau=tau, alpha=1.0)
    _, ref_grad = log_space_loss_and_grad(x.double(), y, k, tau, 1.0)
    floor = torch.finfo(torch.float32).tiny / torch.finfo(torch.float32).eps
    size = ref_grad.abs().amax(dim=1).clamp_min(floor)
    error = (grad.double() - ref_grad).abs().amax(dim=1) / size
    measure = (2 * k + 3) * stats[:, 2 : 2 + k].abs().sum(dim=1)
    return error, measure


@pytest.mark.parametrize("k", [20, 28, 32, 40])
@pytest.mark.parametrize("outside", [1, 2])
@pytest.mark.parametrize("tau", [1.0, 10.0])
def test_float_rows_whose_horner_sums_cancel_are_summed_in_double(k, outside, tau):
    """One or two classes outside the top k: the rest's Horner sums cancel (sum_m |D_m| up to
    ~1e12 times their value), so the kernel sums them in float64 (horner_in_float), which keeps
    docs/exactness.md's float32 target; summed in float their error reaches 4e-4 at k = 20 and
    ~1e2 at k = 40."""
    error, measure = _float_gradient_error(k, k + 1 + outside, tau, k)
    assert (measure > 1).all()  # the premise: rows outside the float criterion
    assert error.max() <= 1e-4, error


@pytest.mark.parametrize(
    "k, classes", [(3, 50), (5, 1000), (10, 100), (20, 200), (20, 1000), (40, 1000)]
)
@pytest.mark.parametrize("tau, scale", [(0.1, 0.01), (1.0, 2.0), (10.0, 10.0)])
def test_float_rows_summed_in_float_stay_within_two_ulps(k, classes, tau, scale):
    """Rows with (2k + 3) sum_m |D_m| <= 1 are summed in float (Horner in float32 on the
    float u_j): their gradient is within 2^-23 (two float32 ulps) of the row's largest, as
    docs/exactness.md bounds it (gamma_{k+3} sum |D_m| plus the reference's u_j)."""
    error, measure = _float_gradient_error(k, classes, tau, k + classes, scale=scale, rows=16)
    in_float = measure <= 1
    assert in_float.any()  # the premise: rows the kernel sums in float
    assert error[in_float].max() <= 2.0**-23, error
