"""Shared fixtures: the backends of the smooth loss that run on this machine's CPU."""

import pytest

from smoothtopk import _backend, cpu_kernel

BACKENDS = ("cpu", "pytorch")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test once with the fused CPU kernel and once with the PyTorch implementation
    (the one used on other devices and the reference), forced by SMOOTHTOPK_BACKEND."""
    if request.param == "cpu" and cpu_kernel.load() is None:
        pytest.skip("the fused CPU kernel could not be built (see test_cpu_kernel.py)")
    monkeypatch.setenv(_backend.ENV, request.param)
    return request.param
