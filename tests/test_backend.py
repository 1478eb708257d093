"""The backend seam (smoothtopk.backends): SMOOTHTOPK_BACKEND, errors, a GPU-clean PyTorch path."""

import os

import pytest
import torch

from memory_probe import OperatorNames
from smoothtopk import _validation, backends, smooth_topk_svm_loss
from smoothtopk.backends import cpu as cpu_backend
from smoothtopk.backends import triton as triton_backend


def _data(n=6, c=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=generator), torch.randint(0, c, (n,), generator=generator)


def test_auto_uses_the_fused_kernel_on_cpu_and_pytorch_elsewhere(monkeypatch):
    monkeypatch.delenv(backends.ENV, raising=False)
    if cpu_backend.load() is None:
        pytest.skip("the fused CPU kernel could not be built")
    assert backends.select(torch.zeros(2, 10), 3).NAME == "cpu"
    assert backends.select(torch.zeros(2, 10, device="meta"), 3).NAME == "pytorch"
    assert backends.select(torch.zeros(2, 300), 150).NAME == "pytorch"  # beyond the kernel's k


def test_forced_backends_agree(monkeypatch):
    x, y = _data()
    results = {}
    for name in ("cpu", "pytorch"):
        monkeypatch.setenv(backends.ENV, name)
        scores = x.clone().requires_grad_(True)
        value = smooth_topk_svm_loss(scores, y, k=3, tau=0.5)
        value.backward()
        results[name] = (value, scores.grad)
    torch.testing.assert_close(results["cpu"], results["pytorch"])


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setenv(backends.ENV, "cpu")
    with pytest.raises(RuntimeError, match="SMOOTHTOPK_BACKEND=cpu cannot compute"):
        smooth_topk_svm_loss(torch.zeros(2, 300), torch.tensor([0, 1]), k=150)


def test_forced_pytorch_never_builds_the_cpu_kernel(monkeypatch):
    monkeypatch.setenv(backends.ENV, "pytorch")
    monkeypatch.setattr(cpu_backend, "load", lambda: pytest.fail("the kernel was loaded"))
    assert backends.select(torch.zeros(2, 10), 3).NAME == "pytorch"
    smooth_topk_svm_loss(*_data(), k=3).item()


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_retired_cpu_kernel_switch_is_refused(monkeypatch, value):
    monkeypatch.delenv(backends.ENV, raising=False)
    monkeypatch.setenv("SMOOTHTOPK_CPU_KERNEL", value)
    with pytest.raises(
        ValueError, match="SMOOTHTOPK_CPU_KERNEL is retired: use SMOOTHTOPK_BACKEND"
    ):
        smooth_topk_svm_loss(*_data(), k=3)


@pytest.mark.parametrize("value", ["cuda", "fused", "1"])
def test_unknown_backend_name_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(backends.ENV, value)
    with pytest.raises(ValueError, match="SMOOTHTOPK_BACKEND"):
        smooth_topk_svm_loss(*_data(), k=3)


@pytest.mark.parametrize("k", [1, 5, 12])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_pytorch_path_never_copies_from_the_host_or_syncs(monkeypatch, k, reduction):
    # The one documented host read (the target range, CPU tensors only) is switched to the
    # device assertion of accelerators, so that the rest of the call is what a GPU runs.
    monkeypatch.setenv(backends.ENV, "pytorch")
    monkeypatch.setattr(_validation, "checks_eagerly", lambda target: False)
    x, y = _data(c=1000)
    x.requires_grad_(True)
    y[0] = -100
    with OperatorNames() as recorder:
        value = smooth_topk_svm_loss(x, y, k=k, weight=torch.rand(1000), reduction=reduction)
        value.sum().backward()
    assert not recorder.names & {"lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "item"}
    assert "_assert_async" in recorder.names  # the target check is there, asynchronously


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cpu", "pytorch"])
def test_fullgraph_inductor_at_a_padded_width(monkeypatch, name):
    monkeypatch.setenv(backends.ENV, name)
    if name == "cpu" and cpu_backend.load() is None:
        pytest.skip("the fused CPU kernel could not be built")
    torch._dynamo.reset()
    x, y = _data(n=8, c=1000)

    def step(scores, target):
        return smooth_topk_svm_loss(scores, target, k=5, tau=0.5, reduction="sum")

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    value = compiled(a, y)
    value.backward()
    expected = step(b, y)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(a.grad, b.grad)


def test_forced_triton_on_cpu_without_the_interpreter_says_why(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs CPU tensors")
    monkeypatch.setenv(backends.ENV, "triton")
    why = "TRITON_INTERPRET" if triton_backend.TRITON_INSTALLED else "triton is not installed"
    with pytest.raises(RuntimeError, match=f"SMOOTHTOPK_BACKEND=triton.*{why}"):
        smooth_topk_svm_loss(*_data(), k=3)
