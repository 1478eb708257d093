"""The package's loss contract for every comparator: reduction/weight/ignore_index, shapes,
Module vs functional, dtypes, registry, and argument errors."""

from __future__ import annotations

import pytest
import torch

from smoothtopk.comparators import (
    LOSSES,
    LabelSmoothingCrossEntropyLoss,
    SmoothedTopkCalibratedHingeLoss,
    TopkCalibratedHingeLoss,
    TopkHingeAlphaLoss,
    TopkHingeBetaLoss,
    TruncatedTopkEntropyLoss,
    label_smoothing_cross_entropy,
    ldam_class_margins,
    smoothed_topk_calibrated_hinge_loss,
    topk_calibrated_hinge_loss,
    topk_hinge_alpha_loss,
    topk_hinge_beta_loss,
    truncated_topk_entropy_loss,
)

C = 6


def _seeded():
    return torch.Generator().manual_seed(0)


# name -> (functional with fixed hyper-parameters, Module factory with the same ones)
LOSS_FNS = {
    "hinge-alpha": (
        lambda x, y, **kw: topk_hinge_alpha_loss(x, y, k=2, alpha=0.5, **kw),
        lambda **kw: TopkHingeAlphaLoss(k=2, alpha=0.5, **kw),
    ),
    "hinge-beta": (
        lambda x, y, **kw: topk_hinge_beta_loss(x, y, k=2, alpha=0.5, **kw),
        lambda **kw: TopkHingeBetaLoss(k=2, alpha=0.5, **kw),
    ),
    "trunc-entropy": (
        lambda x, y, **kw: truncated_topk_entropy_loss(x, y, k=3, **kw),
        lambda **kw: TruncatedTopkEntropyLoss(k=3, **kw),
    ),
    "calibrated-hinge": (
        lambda x, y, **kw: topk_calibrated_hinge_loss(x, y, k=2, **kw),
        lambda **kw: TopkCalibratedHingeLoss(k=2, **kw),
    ),
    "smoothed-calibrated-hinge": (
        lambda x, y, **kw: smoothed_topk_calibrated_hinge_loss(
            x, y, k=2, epsilon=0.3, n_samples=3, generator=_seeded(), **kw
        ),
        lambda **kw: SmoothedTopkCalibratedHingeLoss(
            k=2, epsilon=0.3, n_samples=3, generator=_seeded(), **kw
        ),
    ),
    "ce-label-smoothing": (
        lambda x, y, **kw: label_smoothing_cross_entropy(x, y, 0.1, **kw),
        lambda **kw: LabelSmoothingCrossEntropyLoss(0.1, **kw),
    ),
}
NAMES = list(LOSS_FNS)


def _data(n=9, dtype=torch.float64):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, C, generator=gen, dtype=dtype)
    y = torch.randint(0, C, (n,), generator=gen)
    return x, y


@pytest.mark.parametrize("name", NAMES)
def test_reduction_weight_ignore_index(name):
    fn, _ = LOSS_FNS[name]
    x, y = _data()
    y[[1, 4]] = -1
    w = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    valid = y != -1
    safe = torch.where(valid, y, 0)
    plain = fn(x, safe, reduction="none")
    per = fn(x, y, weight=w, ignore_index=-1, reduction="none")
    expected = torch.where(valid, plain * w[safe], 0.0)
    torch.testing.assert_close(per, expected)
    torch.testing.assert_close(fn(x, y, weight=w, ignore_index=-1, reduction="sum"), expected.sum())
    mean = fn(x, y, weight=w, ignore_index=-1, reduction="mean")
    torch.testing.assert_close(mean, expected.sum() / w[safe][valid].sum())
    unweighted = fn(x, y, ignore_index=-1)
    torch.testing.assert_close(unweighted, plain[valid].mean())


@pytest.mark.parametrize("name", NAMES)
def test_spatial_shapes_equal_flattening(name):
    fn, _ = LOSS_FNS[name]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, C, 2, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (3, 2, 4), generator=gen)
    flat_x = x.movedim(1, -1).reshape(-1, C)
    flat = fn(flat_x, y.reshape(-1), reduction="none")
    torch.testing.assert_close(fn(x, y, reduction="none"), flat.reshape(3, 2, 4))
    torch.testing.assert_close(fn(x, y), flat.mean())
    # a single score vector (C,) with a scalar target
    single = fn(x[0, :, 0, 0], y[0, 0, 0], reduction="none")
    assert single.shape == ()
    torch.testing.assert_close(single, fn(x[:1, :, 0, 0], y[:1, 0, 0], reduction="none")[0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_functional(name, reduction):
    fn, factory = LOSS_FNS[name]
    x, y = _data()
    w = torch.rand(C, dtype=torch.float64) + 0.5
    module = factory(weight=w, ignore_index=2, reduction=reduction)
    torch.testing.assert_close(
        module(x, y), fn(x, y, weight=w, ignore_index=2, reduction=reduction)
    )
    assert "weight" in dict(module.named_buffers())
    assert "reduction" in repr(module) and "weight=<(6,) tensor>" in repr(module)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_and_device_preserved(name, dtype):
    fn, _ = LOSS_FNS[name]
    x, y = _data(dtype=torch.float64)
    x = x.to(dtype).requires_grad_()
    out = fn(x, y)
    assert out.dtype == dtype and out.device == x.device
    out.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    # half precision is computed in float32 from the rounded inputs (the smoothed hinge draws
    # its noise in that working dtype too)
    working = torch.float64 if dtype == torch.float64 else torch.float32
    expected = fn(x.detach().to(working), y).float()
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_autocast_is_float32(name):
    fn, _ = LOSS_FNS[name]
    x, y = _data(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x.bfloat16(), y)
    assert out.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    fn, _ = LOSS_FNS[name]
    x, y = _data()
    if name == "smoothed-calibrated-hinge":
        # the noise comes from the device's generator, so compare two seeded CUDA runs
        kw = {"k": 2, "generator": torch.Generator("cuda").manual_seed(0)}
        out = smoothed_topk_calibrated_hinge_loss(x.cuda(), y.cuda(), **kw)
        kw["generator"] = torch.Generator("cuda").manual_seed(0)
        torch.testing.assert_close(
            out, smoothed_topk_calibrated_hinge_loss(x.cuda(), y.cuda(), **kw)
        )
        return
    out = fn(x.cuda(), y.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), fn(x, y))


def test_registry():
    assert {
        "hinge-alpha",
        "hinge-beta",
        "trunc-entropy",
        "calibrated-hinge",
        "smoothed-calibrated-hinge",
        "ce-label-smoothing",
    } <= set(LOSSES)
    x, y = _data()
    for name, cls in LOSSES.items():
        if name == "difftopk":
            continue
        criterion = cls()
        assert isinstance(criterion, torch.nn.Module)
        assert criterion(x, y).shape == ()


def test_label_smoothing_equals_torch_without_weight():
    x, y = _data()
    y[0] = -100
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            label_smoothing_cross_entropy(x, y, 0.2, reduction=reduction),
            torch.nn.functional.cross_entropy(x, y, reduction=reduction, label_smoothing=0.2),
        )


def test_ldam_class_margins():
    margins = ldam_class_margins([1, 16, 81], max_margin=0.6)
    torch.testing.assert_close(margins, torch.tensor([0.6, 0.3, 0.2]))
    module = SmoothedTopkCalibratedHingeLoss(k=1, class_margins=margins, scale=2.0)
    assert "class_margins" in dict(module.named_buffers()) and "scale=2.0" in repr(module)
    x, y = _data(dtype=torch.float32)
    assert torch.isfinite(module(x[:, :3], y % 3))


X, Y = _data()
W_BAD = torch.ones(C + 1, dtype=torch.float64)
BAD_ARGUMENTS = [
    (topk_hinge_alpha_loss, {"k": 0}, ValueError, "k"),
    (topk_hinge_alpha_loss, {"k": C}, ValueError, "k"),
    (topk_hinge_alpha_loss, {"k": 2.0}, TypeError, "k"),
    (topk_hinge_alpha_loss, {"alpha": -1.0}, ValueError, "alpha"),
    (topk_hinge_alpha_loss, {"alpha": "1"}, TypeError, "alpha"),
    (topk_hinge_alpha_loss, {"reduction": "avg"}, ValueError, "reduction"),
    (topk_hinge_beta_loss, {"k": True}, TypeError, "k"),
    (topk_hinge_beta_loss, {"weight": W_BAD}, ValueError, "weight"),
    (topk_hinge_beta_loss, {"alpha": float("nan")}, ValueError, "alpha"),
    (truncated_topk_entropy_loss, {"k": -1}, ValueError, "k"),
    (truncated_topk_entropy_loss, {"weight": [1.0] * C}, TypeError, "weight"),
    (topk_calibrated_hinge_loss, {"k": C}, ValueError, "k"),
    (topk_calibrated_hinge_loss, {"alpha": -0.1}, ValueError, "alpha"),
    (smoothed_topk_calibrated_hinge_loss, {"epsilon": 0.0}, ValueError, "epsilon"),
    (smoothed_topk_calibrated_hinge_loss, {"n_samples": 0}, ValueError, "n_samples"),
    (smoothed_topk_calibrated_hinge_loss, {"n_samples": 2.0}, TypeError, "n_samples"),
    (smoothed_topk_calibrated_hinge_loss, {"scale": -1.0}, ValueError, "scale"),
    (smoothed_topk_calibrated_hinge_loss, {"generator": 0}, TypeError, "generator"),
    (smoothed_topk_calibrated_hinge_loss, {"k": C}, ValueError, "k"),
    (
        smoothed_topk_calibrated_hinge_loss,
        {"class_margins": torch.ones(C - 1, dtype=torch.float64)},
        ValueError,
        "class_margins",
    ),
    (
        smoothed_topk_calibrated_hinge_loss,
        {"class_margins": torch.ones(C, dtype=torch.int64)},
        TypeError,
        "class_margins",
    ),
    (label_smoothing_cross_entropy, {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    (label_smoothing_cross_entropy, {"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    (label_smoothing_cross_entropy, {"label_smoothing": "x"}, TypeError, "label_smoothing"),
]


@pytest.mark.parametrize(
    ("fn", "kwargs", "error", "match"),
    BAD_ARGUMENTS,
    ids=[f"{f.__name__}-{next(iter(kw))}={kw[next(iter(kw))]!r}" for f, kw, _, _ in BAD_ARGUMENTS],
)
def test_bad_arguments(fn, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(X, Y, **kwargs)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: TopkHingeAlphaLoss(alpha=-1.0), ValueError, "alpha"),
        (lambda: TopkHingeBetaLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: TopkCalibratedHingeLoss(weight=[1.0]), TypeError, "weight"),
        (lambda: SmoothedTopkCalibratedHingeLoss(epsilon=-1.0), ValueError, "epsilon"),
        (lambda: SmoothedTopkCalibratedHingeLoss(class_margins=[0.1]), TypeError, "class_margins"),
        (lambda: SmoothedTopkCalibratedHingeLoss(generator=1), TypeError, "generator"),
        (
            lambda: LabelSmoothingCrossEntropyLoss(label_smoothing=2.0),
            ValueError,
            "label_smoothing",
        ),
        (lambda: ldam_class_margins([0, 3]), ValueError, "class_counts"),
        (lambda: ldam_class_margins([1, 3], max_margin=0.0), ValueError, "max_margin"),
    ],
)
def test_bad_module_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_target_and_input():
    with pytest.raises(ValueError, match="target"):
        topk_hinge_alpha_loss(X, torch.full_like(Y, C))
    with pytest.raises(TypeError, match="input"):
        topk_calibrated_hinge_loss(X.long(), Y)
