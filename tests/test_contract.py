"""The loss contract, run over every loss of the registry :data:`smoothtopk.registry.LOSSES`.

The calling convention of ``F.cross_entropy`` (reductions, ``weight``, ``ignore_index``,
spatial and unbatched shapes, dtypes, autocast, devices), Module = functional, one shared table
of bad arguments, keyword-only hyper-parameters, ``torch.compile`` and gradcheck. The smooth loss
runs once per backend of ``backend_suite.ALL_BACKENDS`` (Triton in the interpreter session,
with its default options only, and in float32 where the others run float64). Loss-specific
guarantees live beside each loss (``test_api.py``, ``test_edge_cases.py``, ``comparators/``).
References: the loss itself on the rows that remain (flattening, dropping ignored rows),
``F.cross_entropy``, and the brute-force reference of each registry entry.
"""

from __future__ import annotations

import importlib
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from backend_suite import (
    ALL_BACKENDS,
    few,
    force,
    only_some_when_interpreted,
    precise_dtype,
    require,
)
from smoothtopk.registry import LOSSES

C = 7
NAN, INF = math.nan, math.inf
#: the hyper-parameters of the small case, for the losses that take them
SMALL = {"k": 3, "tau": 0.5, "alpha": 0.7, "epsilon": 0.3, "n_samples": 3,
         "label_smoothing": 0.2, "tau_la": 1.5, "max_margin": 0.6,
         "class_counts": torch.tensor([40, 3, 17, 1, 8, 60, 2])}  # fmt: skip
COMMON = ("weight", "ignore_index", "reduction")


class Case:
    """A registered loss with the small-case hyper-parameters (``options``) and, for the smooth
    loss, a forced backend. A stochastic loss gets a freshly seeded generator at every call,
    so that each call is the same function."""

    def __init__(self, name: str, backend: str | None = None, **options):
        self.spec = LOSSES[name]
        self.backend = backend
        self.options = {p: v for p, v in SMALL.items() if p in self.spec.options} | options
        self.id = "-".join([name, *(f"{p}{v}" for p, v in options.items()), backend or ""])

    @property
    def dtype(self) -> torch.dtype:
        """The precise dtype of the case: float64, or float32 on a backend without it."""
        return torch.float64 if self.backend is None else precise_dtype(self.backend)

    def opts(self, device="cpu") -> dict:
        if self.spec.stochastic:
            return {**self.options, "generator": torch.Generator(device).manual_seed(0)}
        return dict(self.options)

    def __call__(self, x, y, **kwargs):
        return self.spec.functional(x, y, **self.opts(x.device), **kwargs)

    def module(self, **kwargs):
        return self.spec.module(**self.opts(), **kwargs)


def _cases():
    for name in LOSSES:
        if name != "smooth-svm":
            yield pytest.param(Case(name), id=Case(name).id)
            continue
        for param in ALL_BACKENDS:  # Triton's interpreter: the default options only
            backend = param.values[0]
            variants = [Case(name, backend)]
            if not few(backend):
                variants.append(Case(name, backend, k=1, tau=2.0))
            yield from (pytest.param(case, marks=param.marks, id=case.id) for case in variants)


CASES = list(_cases())
SPECS = [pytest.param(spec, id=name) for name, spec in LOSSES.items()]
OURS = [pytest.param(spec, id=name) for name, spec in LOSSES.items() if not spec.torch_contract]


@pytest.fixture(params=CASES)
def case(request, monkeypatch):
    """Each case, with the smooth loss's backend forced by SMOOTHTOPK_BACKEND."""
    case = request.param
    if case.backend is not None:
        force(case.backend, monkeypatch)
    return case


def data(n=6, dtype=torch.float64, seed=0, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, generator=generator, dtype=dtype) * scale
    y = torch.randint(0, C, (n,), generator=generator)
    return x, y


def test_options_are_the_defaults_of_functional_and_module():
    for name, spec in LOSSES.items():
        criterion = spec.build()
        x, y = data()
        assert criterion(x, y).shape == () and isinstance(criterion, torch.nn.Module), name
        if spec.torch_contract:
            continue
        functional = inspect.signature(spec.functional).parameters.values()
        keyword = {p.name: p.default for p in functional if p.kind is p.KEYWORD_ONLY}
        module = inspect.signature(spec.module).parameters.values()
        constructor = {p.name: p.default for p in module}
        for common in COMMON:
            assert keyword.pop(common) == constructor.pop(common), (name, common)
        if spec.probability_targets:  # F.cross_entropy's label_smoothing, off by default
            smoothing = keyword.pop("label_smoothing"), constructor.pop("label_smoothing")
            assert smoothing == (0.0, 0.0), name
        assert keyword == constructor == dict(spec.options), name


@pytest.mark.parametrize("ignore_index", [-100, 9, 4])
def test_reductions_weight_and_ignore_index(case, ignore_index):
    """Each reduction is the weighted sum (mean) of the per-sample losses, value and gradient,
    with the ignored rows (their target ``ignore_index``, -100 or a class) at weight 0."""
    if case.backend is not None and ignore_index == 9:
        only_some_when_interpreted(case.backend, "ignore_index -100 and 4 (a class)")
    x, y = data(dtype=case.dtype)
    x.requires_grad_(True)
    per_sample = case(x, y, reduction="none", ignore_index=-1)  # nothing ignored
    y = y.clone()  # (the per-sample losses saved the original for their gradient)
    y[[1, 4]] = ignore_index
    valid = y != ignore_index
    weight = torch.linspace(0.5, 2.0, C, dtype=case.dtype)
    w = weight[y.where(valid, 0)] * valid
    kw = {"ignore_index": ignore_index, "weight": weight}
    grad_out = torch.linspace(-1.0, 2.0, len(y), dtype=case.dtype)  # for "none"
    expected = {
        "none": per_sample * w,
        "sum": (per_sample * w).sum(),
        "mean": (per_sample * w).sum() / w.sum(),
    }
    for reduction, reference in expected.items():
        value = case(x, y, reduction=reduction, **kw)
        torch.testing.assert_close(value, reference)
        upstream = grad_out if reduction == "none" else None
        (grad,) = torch.autograd.grad(value, x, upstream)
        (reference_grad,) = torch.autograd.grad(reference, x, upstream, retain_graph=True)
        torch.testing.assert_close(grad, reference_grad)
    unweighted = case(x, y, ignore_index=ignore_index)
    torch.testing.assert_close(unweighted, per_sample[valid].mean())


def test_all_ignored_and_empty_batch_behave_like_cross_entropy(case):
    x, _ = data(dtype=case.dtype)
    y = torch.full((6,), -100)
    assert torch.isnan(case(x, y)) and torch.isnan(F.cross_entropy(x, y))
    assert case(x, y, reduction="sum") == 0
    empty = torch.zeros(0, C, dtype=case.dtype, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    for reduction in ("none", "sum", "mean"):
        expected = F.cross_entropy(empty, target, reduction=reduction)
        torch.testing.assert_close(
            case(empty, target, reduction=reduction), expected, equal_nan=True
        )
    case(empty, target, reduction="sum").backward()
    assert empty.grad.shape == (0, C)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_ignored_row_with_nan_scores_and_nan_weight_contributes_nothing(case, reduction):
    x, y = data(n=3, dtype=case.dtype)
    y[0], y[2] = 1 + (y[0] % (C - 1)), 1 + (y[2] % (C - 1))  # no counted row of class 0
    poisoned = x.clone()
    poisoned[1] = NAN
    poisoned.requires_grad_(True)
    y[1] = -100
    weight = torch.linspace(0.5, 2.0, C, dtype=case.dtype)
    weight[0] = NAN  # the class of no counted row (and the placeholder of the ignored one)
    clean = x.clone().requires_grad_(True)  # the same rows (a stochastic loss: the same noise)
    value = case(poisoned, y, weight=weight, reduction=reduction)
    expected = case(clean, y, weight=weight, reduction=reduction)
    assert torch.isfinite(value).all()
    if reduction == "none":
        assert value[1] == 0
    torch.testing.assert_close(value, expected)
    if case.spec.torch_contract:  # F.cross_entropy's gradient is NaN on the ignored NaN row
        return
    value.sum().backward()
    expected.sum().backward()
    assert (poisoned.grad[1] == 0).all()
    torch.testing.assert_close(poisoned.grad, clean.grad)


def test_spatial_shape_equals_flattening_and_unbatched(case):
    if case.backend is not None:  # flattening happens before the backend is chosen
        only_some_when_interpreted(case.backend, "flattening is the same Python on every backend")
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, C, 3, 4, generator=generator, dtype=case.dtype)
    y = torch.randint(0, C, (2, 3, 4), generator=generator)
    flat_x, flat_y = x.movedim(1, -1).reshape(-1, C), y.reshape(-1)
    none = case(x, y, reduction="none")
    assert none.shape == (2, 3, 4)
    torch.testing.assert_close(none.reshape(-1), case(flat_x, flat_y, reduction="none"))
    torch.testing.assert_close(case(x, y), case(flat_x, flat_y))
    single = case(flat_x[0], flat_y[0], reduction="none")  # (C,) with a scalar target
    assert single.shape == ()
    torch.testing.assert_close(single, case(flat_x[:1], flat_y[:1], reduction="none")[0])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_functional_and_holds_weight_as_buffer(case, reduction):
    if case.backend is not None:
        only_some_when_interpreted(case.backend, "the Modules are the same Python on every backend")
    x, y = data(dtype=case.dtype)
    weight = torch.linspace(0.5, 2.0, C, dtype=case.dtype)
    module = case.module(weight=weight, ignore_index=2, reduction=reduction)
    torch.testing.assert_close(
        module(x, y), case(x, y, weight=weight, ignore_index=2, reduction=reduction)
    )
    assert "weight" in dict(module.named_buffers())
    assert module.to(torch.float32).weight.dtype == torch.float32
    if not case.spec.torch_contract:
        assert "reduction" in repr(module) and f"weight=<({C},) tensor>" in repr(module)
        assert "ignore_index=2" in repr(module)
        assert all(f"{p}=" in repr(module) for p in case.options)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_dtype_preserved_and_low_precision_computed_in_float32(case, dtype, reduction):
    if case.backend is not None:
        require(case.backend, dtype)
        if reduction == "mean":
            only_some_when_interpreted(case.backend, "the reduction none (mean: its own test)")
    x, y = data(dtype=torch.float32, scale=1000.0)  # representable in float16, not its exp
    x = x.to(dtype).requires_grad_(True)
    out = case(x, y, reduction=reduction)
    assert out.dtype == F.cross_entropy(x, y).dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    working = torch.float64 if dtype == torch.float64 else torch.float32
    if case.spec.float32_only:
        working = torch.float32
    torch.testing.assert_close(out, case(x.detach().to(working), y, reduction=reduction).to(dtype))
    out.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_autocast_promotes_like_cross_entropy(case):
    linear = torch.nn.Linear(8, C)
    generator = torch.Generator().manual_seed(2)
    inputs, y = torch.randn(5, 8, generator=generator), torch.randint(0, C, (5,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = linear(inputs)
        ours = case(logits, y)
        ce = F.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16
    assert ours.dtype == ce.dtype == torch.float32
    ours.backward()
    assert linear.weight.grad is not None


@pytest.mark.parametrize("spec", SPECS)
def test_meta_device_gives_shapes_and_gradient_shapes(spec):
    case = Case(spec.name)
    x = torch.empty(4, C, 2, device="meta", requires_grad=True)
    y = torch.zeros(4, 2, dtype=torch.long, device="meta")
    options = {p: v for p, v in case.options.items() if p != "generator"}
    out = spec.functional(x, y, **options, weight=torch.ones(C, device="meta"), reduction="none")
    assert out.shape == (4, 2) and out.device.type == "meta"
    out.sum().backward()
    assert x.grad.shape == x.shape and x.grad.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", SPECS)
def test_cuda_matches_cpu(spec):
    case = Case(spec.name)
    x, y = data(n=64, dtype=torch.float32)
    xc = x.cuda().requires_grad_(True)
    out = case(xc, y.cuda())
    assert out.device.type == "cuda"
    out.backward()
    if spec.stochastic:  # the noise comes from the device's generator: two seeded CUDA runs
        torch.testing.assert_close(out, case(x.cuda(), y.cuda()), rtol=0, atol=0)
        return
    xx = x.clone().requires_grad_(True)
    expected = case(xx, y)
    expected.backward()
    torch.testing.assert_close(out.cpu(), expected)
    torch.testing.assert_close(xc.grad.cpu(), xx.grad)


def test_gradcheck_and_gradgradcheck(case):
    if case.spec.float32_only:
        pytest.skip("computed in float32: a float64 finite difference would judge its rounding")
    if case.backend is not None:
        require(case.backend, torch.float64)  # finite differences need float64
    # well-separated scores: no ties, no hinge at its kink
    x, y = data(n=4, seed=3, scale=3.0)
    x.requires_grad_(True)

    def f(scores):
        return case(scores, y, reduction="none")

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_torch_compile_fullgraph(case):
    if case.backend is not None:
        only_some_when_interpreted(case.backend, "compiled: test_backend_contract.py's one case")
    torch._dynamo.reset()  # the backend is read while tracing: no graph from another case
    x, y = data(n=8, dtype=torch.float32)
    options = dict(case.options)  # a stochastic loss draws from the global RNG here

    def step(scores, target):
        return case.spec.functional(scores, target, **options)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(0)
    value = compiled(a, y)
    value.backward()
    torch.manual_seed(0)
    expected = step(b, y)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.values[0].reference])
@pytest.mark.parametrize("num_classes", [2, 5])
def test_matches_its_reference(spec, num_classes):
    module, function = spec.reference.split(":")
    reference = getattr(importlib.import_module(module), function)
    options = {p: v for p, v in Case(spec.name).options.items()}
    if "k" in options:
        options["k"] = min(options["k"], num_classes - 1)
    if "class_counts" in options:
        options["class_counts"] = options["class_counts"][:num_classes]
    generator = torch.Generator().manual_seed(num_classes)
    x = torch.randn(5, num_classes, generator=generator, dtype=torch.float64) * 2
    y = torch.randint(0, num_classes, (5,), generator=generator)
    got = spec.functional(x, y, **options, reduction="none")
    rows = zip(x.tolist(), y.tolist(), strict=True)
    expected = [reference(row, target, **options) for row, target in rows]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# Bad arguments: one table for every loss of the package (PyTorch's cross-entropy has its own).

X, Y = data(n=4)


#: ``option`` values of :func:`_bad` for the two kinds of target a loss may take
#: (``registry.LossEntry.probability_targets``)
PROBABILITIES, INDICES_ONLY = "probability targets", "class indices only"


def _applies(option, spec) -> bool:
    if option is None:
        return True
    if option in (PROBABILITIES, INDICES_ONLY):
        return spec.probability_targets == (option == PROBABILITIES)
    return option in spec.options


def _bad(description, error, match, call=None, at_construction=True, option=None, **kwargs):
    """``call(x, y) -> (input, target)`` replaces the inputs; ``kwargs`` are passed to the loss
    (and, ``at_construction``, to its Module); ``option``: only for losses that take it."""
    return description, (call, kwargs, error, match, at_construction), option


def _target(values):
    return lambda x, y: (x, torch.tensor(values))


BAD = [
    _bad("k=0", ValueError, "k", k=0, option="k"),
    _bad("k=-3", ValueError, "k", k=-3, option="k"),
    _bad("k=C", ValueError, "k", k=C, option="k", at_construction=False),
    _bad("k>C", ValueError, "k", k=C + 2, option="k", at_construction=False),
    _bad("k float", TypeError, "k", k=2.0, option="k"),
    _bad("k bool", TypeError, "k", k=True, option="k"),
    _bad("k str", TypeError, "k", k="a", option="k"),
    _bad("reduction avg", ValueError, "reduction", reduction="avg"),
    _bad("reduction None", ValueError, "reduction", reduction=None),
    _bad("weight shape", ValueError, "weight", weight=torch.ones(C - 1), at_construction=False),
    _bad("weight dtype", TypeError, "weight", weight=torch.ones(C, dtype=torch.long),
         at_construction=False),  # fmt: skip
    _bad("weight list", TypeError, "weight", weight=[1.0] * C),
    _bad("float target", TypeError, "target", lambda x, y: (x, y.float()), option=INDICES_ONLY),
    _bad("float target of the indices' shape", ValueError, "class indices are an integer dtype",
         lambda x, y: (x, y.float()), option=PROBABILITIES),
    _bad("probabilities of another shape", ValueError, "input's shape",
         lambda x, y: (x, torch.rand(x.shape[0], x.shape[1] + 1)), option=PROBABILITIES),
    _bad("label_smoothing 1.5", ValueError, "label_smoothing", option=PROBABILITIES,
         label_smoothing=1.5),
    _bad("label_smoothing str", TypeError, "label_smoothing", option=PROBABILITIES,
         label_smoothing="0.1"),
    _bad("bool target", TypeError, "target", lambda x, y: (x, y > 0)),
    _bad("target list", TypeError, "target", lambda x, y: (x, y.tolist())),
    _bad("target 2-D", ValueError, "target", lambda x, y: (x, y[:, None])),
    _bad("batch mismatch", ValueError, "target", lambda x, y: (x, y[:3])),
    _bad("spatial mismatch", ValueError, "target",
         lambda x, y: (torch.randn(2, C, 3), torch.zeros(2, 4, dtype=torch.long))),  # fmt: skip
    _bad("target >= C", ValueError, "target", _target([0, 1, 2, C])),
    _bad("target < 0", ValueError, "target", _target([0, -1, 2, 3])),
    _bad("integer input", TypeError, "input", lambda x, y: (x.long(), y)),
    _bad("input list", TypeError, "input", lambda x, y: (x.tolist(), y)),
    _bad("scalar input", ValueError, "input", lambda x, y: (x[0, 0], y[0])),
    *[_bad(f"ignore_index {v!r}", TypeError, "ignore_index", ignore_index=v)
      for v in (None, "a", 1.5, True, torch.tensor(1))],  # fmt: skip
    _bad("ignore_index 2**70", ValueError, "ignore_index", ignore_index=2**70),
    *[_bad(f"{p} {v!r}", error, p, option=p, **{p: v})
      for p, values in {"tau": [0.0, -1.0, INF, NAN, "1"], "alpha": [-0.1, NAN, INF, "1"],
                        "epsilon": [0.0, -1.0], "scale": [-1.0], "n_samples": [0, 2.0],
                        "tau_la": [-1.0, NAN, INF, "1"], "max_margin": [-0.1, NAN, INF, "1"],
                        "generator": [0], "label_smoothing": [1.5, -0.1, "x"]}.items()
      for v in values
      for error in [TypeError if isinstance(v, str) or p in ("generator",)
                    or (p == "n_samples" and isinstance(v, float)) else ValueError]],
    _bad("class_margins shape", ValueError, "class_margins", option="class_margins",
         class_margins=torch.ones(C - 1, dtype=torch.float64), at_construction=False),
    _bad("class_margins dtype", TypeError, "class_margins", option="class_margins",
         class_margins=torch.ones(C, dtype=torch.long), at_construction=False),
    _bad("class_margins list", TypeError, "class_margins", option="class_margins",
         class_margins=[0.1] * C),
    *[_bad(f"class_counts {d}", ValueError, "class_counts", option="class_counts",
           class_counts=torch.tensor(v)) for d, v in {"zero": [5, 0, 1, 1, 1, 1, 1],
           "negative": [5, 1, -2, 1, 1, 1, 1], "nan": [5, 1, 1, NAN, 1, 1, 1],
           "inf": [5, 1, 1, 1, INF, 1, 1], "2-D": [[1] * C]}.items()],
    _bad("class_counts shape", ValueError, "class_counts", option="class_counts",
         class_counts=torch.ones(C - 1), at_construction=False),
    _bad("class_counts bool", TypeError, "class_counts", option="class_counts",
         class_counts=torch.ones(C, dtype=torch.bool)),
    _bad("class_counts str", TypeError, "class_counts", option="class_counts",
         class_counts="balanced"),
]  # fmt: skip


BAD_CALLS = [
    pytest.param(spec, *bad, id=f"{spec.name}-{description}")
    for spec in LOSSES.values()
    if not spec.torch_contract
    for description, bad, option in BAD
    if _applies(option, spec)
]


@pytest.mark.parametrize(("spec", "call", "kwargs", "error", "match", "at_construction"), BAD_CALLS)
def test_bad_arguments(spec, call, kwargs, error, match, at_construction):
    x, y = call(X, Y) if call else (X, Y)
    options = {p: v for p, v in Case(spec.name).opts().items() if p not in kwargs}
    with pytest.raises(error, match=match):
        spec.functional(x, y, **options, **kwargs)
    if at_construction and kwargs:  # the Module checks its arguments when it is built
        with pytest.raises(error, match=match):
            spec.module(**options, **kwargs)
        return
    module = spec.module(**options, **kwargs) if not call else spec.module(**options)
    with pytest.raises(error, match=match):
        module(x, y)


@pytest.mark.parametrize("spec", OURS)
def test_hyper_parameters_are_keyword_only(spec):
    with pytest.raises(TypeError, match="keyword"):
        spec.functional(X, Y, torch.ones(C))  # the F.cross_entropy(x, y, weight) habit
    assert spec.functional(X, Y, **Case(spec.name).options).shape == ()
