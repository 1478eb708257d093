"""Top-k accuracy: the shared-tie rule against a brute force over every tie-breaking order,
torchmetrics on tie-free input, exact streaming, merging and bad input."""

import itertools
import math
from fractions import Fraction

import pytest
import torch

from smoothtopk import TopkAccuracy, topk_accuracy
from smoothtopk.metrics import topk_counts

NAN, INF = float("nan"), float("inf")


def brute_credit(row, target, k):
    """Probability that ``target`` is among the first ``k`` classes when the scores are sorted
    in decreasing order and ties are broken by a uniformly random permutation of the classes:
    the average over all ``C!`` permutations used as tie-breakers. A NaN row gets 0."""
    if any(math.isnan(v) for v in row):
        return Fraction(0)
    perms = list(itertools.permutations(range(len(row))))
    hits = sum(
        target in sorted(range(len(row)), key=lambda j, p=p: (-row[j], p[j]))[:k] for p in perms
    )
    return Fraction(hits, len(perms))


def exact_credit(counts, j):
    """The exact rational credit at ``ks[j]`` from micro counts (int64 numerators by tie size)."""
    by_size = counts.partial[j].tolist()
    return int(counts.correct[j]) + sum(Fraction(n, t) for t, n in enumerate(by_size, 1) if n)


TIE_CASES = [  # (scores, target, k, credit derived by hand from the rule)
    ([0.0, 0.0, 0.0, 0.0], 0, 1, Fraction(1, 4)),
    ([0.0, 0.0, 0.0, 0.0], 2, 2, Fraction(1, 2)),
    ([0.0, 0.0, 0.0, 0.0], 3, 4, Fraction(1)),
    ([1.0, 1.0, 1.0, 0.0], 0, 2, Fraction(2, 3)),
    ([1.0, 1.0, 1.0, 0.0], 3, 3, Fraction(0)),
    ([1.0, 1.0, 1.0, 0.0], 3, 4, Fraction(1)),
    ([2.0, 1.0, 1.0, 1.0, 0.0], 1, 1, Fraction(0)),
    ([2.0, 1.0, 1.0, 1.0, 0.0], 2, 2, Fraction(1, 3)),
    ([2.0, 1.0, 1.0, 1.0, 0.0], 3, 3, Fraction(2, 3)),
    ([2.0, 1.0, 1.0, 1.0, 0.0], 1, 4, Fraction(1)),
    ([2.0, 1.0, 1.0, 1.0, 0.0], 0, 1, Fraction(1)),
    ([-INF, -INF, 0.0], 0, 2, Fraction(1, 2)),  # a -inf target ties with other -inf classes
    ([-INF, -INF, 0.0], 1, 3, Fraction(1)),
    ([-INF, 0.0, 1.0], 0, 2, Fraction(0)),
    ([INF, INF, 0.0], 1, 1, Fraction(1, 2)),
    ([0.0, INF, 1.0], 1, 1, Fraction(1)),
    ([NAN, 0.0, 1.0], 2, 1, Fraction(0)),  # any NaN in the row: wrong
    ([NAN, 0.0, 1.0], 2, 3, Fraction(0)),
    ([0.0, 1.0, NAN], 2, 3, Fraction(0)),
    ([3.0], 0, 1, Fraction(1)),
]


@pytest.mark.parametrize(("row", "target", "k", "expected"), TIE_CASES)
def test_tie_table_against_brute_force(row, target, k, expected):
    assert brute_credit(row, target, k) == expected  # the reference agrees with the hand rule
    counts = topk_counts(torch.tensor([row], dtype=torch.float64), torch.tensor([target]), k=k)
    assert exact_credit(counts, 0) == expected
    (fraction,) = topk_accuracy(torch.tensor([row]), torch.tensor([target]), k=k)
    assert fraction.item() == torch.tensor(float(expected)).item()  # rounded to float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_random_ties_exactly_equal_brute_force(dtype):
    generator = torch.Generator().manual_seed(int(torch.finfo(dtype).bits))
    scores = (torch.randint(0, 3, (40, 5), generator=generator) * 0.7).to(dtype)
    scores[::7, 1] = -INF
    scores[3, 2] = NAN
    target = torch.randint(0, 5, (40,), generator=generator)
    ks = (1, 2, 3, 4, 5)
    values = scores.double().tolist()
    meter = TopkAccuracy(k=ks)
    for start in range(0, 40, 9):
        meter.update(scores[start : start + 9], target[start : start + 9])
    counts = topk_counts(scores, target, k=ks)
    result = meter.compute()
    for j, k in enumerate(ks):
        expected = sum(brute_credit(r, t, k) for r, t in zip(values, target.tolist(), strict=True))
        assert exact_credit(counts, j) == expected
        assert result[k] == float(expected / 40)  # correctly rounded exact rational


def test_constant_model_scores_exactly_chance():
    target = torch.arange(1001) % 100
    fractions = topk_accuracy(torch.zeros(1001, 100), target, k=(1, 5, 100))
    assert [f.item() for f in fractions] == [torch.tensor(v).item() for v in (0.01, 0.05, 1.0)]
    meter = TopkAccuracy(k=(1, 5, 7))
    for chunk in torch.zeros(1001, 100).split(64):
        meter.update(chunk, target[: len(chunk)])
    assert meter.compute() == {1: 1 / 100, 5: 5 / 100, 7: 7 / 100}


def test_nan_rows_are_wrong_and_ignored_rows_are_not_counted():
    scores = torch.tensor([[5.0, NAN, 0.0], [5.0, 1.0, 0.0], [NAN, NAN, NAN], [0.0, 1.0, 2.0]])
    target = torch.tensor([0, 0, -100, 2])
    counts = topk_counts(scores, target, k=(1, 3))
    assert counts.total.item() == 3
    assert counts.correct.tolist() == [2, 2]  # rows 1 and 3; row 0 has a NaN
    assert not counts.partial.any()


def _tie_free(shape, generator):
    scores = torch.randn(shape, generator=generator, dtype=torch.float64)
    flat = scores.movedim(1, -1).reshape(-1, shape[1])
    assert (flat.sort(dim=1).values.diff(dim=1) > 0).all()  # no ties: the rule is 1[g < k]
    return scores


@pytest.mark.parametrize("shape", [(97, 10), (13, 6, 3, 2)])
def test_micro_equals_torchmetrics_on_tie_free_scores(shape):
    from torchmetrics.classification import MulticlassAccuracy

    generator = torch.Generator().manual_seed(1)
    scores = _tie_free(shape, generator)
    target_shape = (shape[0], *shape[2:])
    target = torch.randint(0, shape[1], target_shape, generator=generator)
    target.view(-1)[::5] = -100
    ks = (1, 2, 5, shape[1])
    fractions = topk_accuracy(scores, target, k=ks)
    meter = TopkAccuracy(k=ks)
    meter.update(scores, target)
    for k, fraction in zip(ks, fractions, strict=True):
        reference = MulticlassAccuracy(
            num_classes=shape[1], top_k=k, average="micro", ignore_index=-100
        )(scores, target)
        assert fraction.item() == pytest.approx(reference.item(), abs=1e-6)
        assert meter.compute()[k] == pytest.approx(reference.item(), abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_macro_equals_torchmetrics_with_an_absent_class(k):
    from torchmetrics.classification import MulticlassAccuracy

    generator = torch.Generator().manual_seed(2)
    scores = _tie_free((60, 7), generator)
    target = torch.randint(0, 7, (60,), generator=generator)
    target[target == 3] = 4  # class 3 never a target
    target[:6] = -100
    scores[:, 3] -= 10.0  # and never predicted top-1: torchmetrics then leaves it out for k=1 too
    reference = MulticlassAccuracy(num_classes=7, top_k=k, average="macro", ignore_index=-100)
    expected = reference(scores, target).item()
    (fraction,) = topk_accuracy(scores, target, k=k, average="macro")
    meter = TopkAccuracy(k=k, average="macro", num_classes=7)
    for start in range(0, 60, 16):
        meter.update(scores[start : start + 16], target[start : start + 16])
    assert fraction.item() == pytest.approx(expected, abs=1e-6)
    assert meter.compute()[k] == pytest.approx(expected, abs=1e-6)  # torchmetrics: float32


def test_macro_with_ties_is_the_mean_of_per_class_brute_force():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (30, 5), generator=generator).double()
    target = torch.randint(0, 4, (30,), generator=generator)  # class 4 absent: left out
    rows, labels = scores.tolist(), target.tolist()
    for k in (1, 2, 3):
        per_class = [
            sum(brute_credit(r, t, k) for r, t in zip(rows, labels, strict=True) if t == c)
            / labels.count(c)
            for c in sorted(set(labels))
        ]
        expected = sum(per_class) / len(per_class)
        (fraction,) = topk_accuracy(scores, target, k=k, average="macro")
        assert fraction.item() == pytest.approx(float(expected), rel=1e-6)
        meter = TopkAccuracy(k=k, average="macro", num_classes=5)
        meter.update(scores, target)
        assert meter.compute()[k] == pytest.approx(float(expected), rel=1e-14)


def test_macro_leaves_out_classes_absent_from_the_targets_even_if_predicted():
    scores = torch.tensor([[0.0, 0.0, 9.0], [9.0, 0.0, 1.0], [0.0, 9.0, 1.0]])
    target = torch.tensor([0, 0, 1])  # class 2 is predicted top-1 once but is never a target
    (fraction,) = topk_accuracy(scores, target, k=1, average="macro")
    assert fraction.item() == pytest.approx((1 / 2 + 1) / 2)


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_streaming_and_merging_equal_one_batch_exactly(average):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (103, 20), generator=generator).float()  # many ties
    target = torch.randint(0, 20, (103,), generator=generator)
    whole = TopkAccuracy(k=(1, 5), average=average, num_classes=20)
    whole.update(scores, target)
    first = TopkAccuracy(k=(1, 5), average=average, num_classes=20)
    second = TopkAccuracy(k=(1, 5), average=average, num_classes=20)
    for start in range(0, 60, 7):
        first.update(scores[start : min(start + 7, 60)], target[start : min(start + 7, 60)])
    second.update(scores[60:], target[60:])
    merged = first.merge(second).merge(TopkAccuracy(k=(1, 5), average=average, num_classes=20))
    state, reference = merged.state(), whole.state()
    assert state.correct.dtype == torch.int64 and state.total.dtype == torch.int64
    assert torch.equal(state.correct, reference.correct)
    assert torch.equal(state.total, reference.total)
    if average == "micro":  # integers: exact whatever the split
        assert torch.equal(state.partial, reference.partial)
        assert merged.compute() == whole.compute()
    else:
        torch.testing.assert_close(state.partial, reference.partial, rtol=1e-15, atol=1e-12)
        assert merged.compute() == pytest.approx(whole.compute(), rel=1e-14)
    credit, total = merged.counts()
    assert credit.dtype == torch.float64 and total.tolist() == reference.total.tolist()


def test_counts_and_state_before_any_update():
    meter = TopkAccuracy(k=(1, 5))
    assert all(math.isnan(v) for v in meter.compute().values())
    credit, total = meter.counts()
    assert credit.tolist() == [0.0, 0.0] and total.item() == 0
    macro = TopkAccuracy(k=(1, 3), average="macro", num_classes=4)
    assert macro.state().partial.shape == (2, 4) and macro.counts()[1].shape == (4,)
    assert all(math.isnan(v) for v in macro.compute().values())
    empty = torch.zeros(0, dtype=torch.long)
    assert all(math.isnan(f) for f in topk_accuracy(torch.zeros(0, 6), empty, average="macro"))
    assert all(math.isnan(f) for f in topk_accuracy(torch.zeros(0, 6), empty))


X, Y = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
BAD_INPUT = [  # (name, call, exception, words in the message)
    ("k float", lambda: topk_accuracy(X, Y, k=1.5), TypeError, "k must be an int"),
    ("k str", lambda: topk_accuracy(X, Y, k="a"), TypeError, "k must be an int"),
    ("k bool", lambda: topk_accuracy(X, Y, k=True), TypeError, "k must"),
    ("k in sequence", lambda: topk_accuracy(X, Y, k=(1, 2.0)), TypeError, "k must hold ints"),
    ("k empty", lambda: topk_accuracy(X, Y, k=()), ValueError, "non-empty"),
    ("k zero", lambda: topk_accuracy(X, Y, k=(1, 0)), ValueError, "k must be >= 1"),
    ("k > C", lambda: topk_accuracy(X, Y, k=7), ValueError, "number of classes (6), got k=7"),
    ("ignore_index None", lambda: topk_accuracy(X, Y, ignore_index=None), TypeError, "ignore_i"),
    ("ignore_index str", lambda: topk_accuracy(X, Y, ignore_index="a"), TypeError, "ignore_i"),
    ("ignore_index float", lambda: topk_accuracy(X, Y, ignore_index=1.5), TypeError, "ignore_"),
    ("ignore_index bool", lambda: topk_accuracy(X, Y, ignore_index=True), TypeError, "ignore_"),
    (
        "ignore_index tensor",
        lambda: topk_accuracy(X, Y, ignore_index=torch.tensor(1)),
        TypeError,
        "ignore_index",
    ),
    ("ignore_index 2**70", lambda: topk_accuracy(X, Y, ignore_index=2**70), ValueError, "int64"),
    ("target 6 of 6", lambda: topk_accuracy(X, torch.tensor([0, 6, 1, 2])), ValueError, "6"),
    ("target -5", lambda: topk_accuracy(X, torch.tensor([0, -5, 1, 2])), ValueError, "-5"),
    ("target float", lambda: topk_accuracy(X, Y.float()), TypeError, "target"),
    ("target shape", lambda: topk_accuracy(X, Y[:3]), ValueError, "target must have shape"),
    ("input int", lambda: topk_accuracy(Y[:, None], Y), TypeError, "input"),
    ("average", lambda: topk_accuracy(X, Y, average="weighted"), ValueError, "average"),
    ("meter k=0", lambda: TopkAccuracy(k=0), ValueError, "k must be >= 1"),
    ("meter k float", lambda: TopkAccuracy(k=1.5), TypeError, "k must be an int"),
    ("meter ignore_index", lambda: TopkAccuracy(ignore_index=None), TypeError, "ignore_index"),
    ("meter average", lambda: TopkAccuracy(average="none"), ValueError, "average"),
    ("macro no classes", lambda: TopkAccuracy(average="macro"), ValueError, "num_classes"),
    ("num_classes 0", lambda: TopkAccuracy(k=1, num_classes=0), ValueError, "num_classes"),
    ("num_classes float", lambda: TopkAccuracy(num_classes=6.0), TypeError, "num_classes"),
    ("k > num_classes", lambda: TopkAccuracy(k=5, num_classes=3), ValueError, "k=5"),
    ("update classes", lambda: TopkAccuracy(num_classes=5).update(X, Y), ValueError, "6 classes"),
    (
        "merge layout",
        lambda: TopkAccuracy(k=(1, 5)).merge(TopkAccuracy(k=(1,))),
        ValueError,
        "k=(1, 5)",
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "error", "words"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_is_a_clear_error(name, call, error, words):
    with pytest.raises(error, match=None) as info:
        call()
    assert words in str(info.value), str(info.value)


def test_later_updates_must_match_the_first_class_count():
    meter = TopkAccuracy(k=1)
    meter.update(X, Y)
    with pytest.raises(ValueError, match="counts 6"):
        meter.update(torch.randn(2, 5), torch.tensor([0, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_update_never_synchronises_and_equals_cpu():
    generator = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 3, (64, 10), generator=generator).half()
    target = torch.randint(0, 10, (64,), generator=generator)
    cpu = TopkAccuracy(k=(1, 5), average="macro", num_classes=10)
    cpu.update(scores, target)
    meters = [TopkAccuracy(k=(1, 5)), TopkAccuracy(k=(1, 5), average="macro", num_classes=10)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for meter in meters:
            meter.update(scores.cuda(), target.cuda())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert meters[1].compute() == pytest.approx(cpu.compute(), rel=1e-14)
    micro = TopkAccuracy(k=(1, 5))
    micro.update(scores, target)
    assert meters[0].compute() == micro.compute()
