"""Shared fixtures: the two implementations of the smooth loss on the CPU."""

import pytest

from smoothtopk import cpu_kernel

BACKENDS = ("fused", "pytorch")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test once with the fused CPU kernel and once with the PyTorch implementation
    (the one used on other devices)."""
    if request.param == "fused":
        monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "1")
        if cpu_kernel.load() is None:
            pytest.skip("the fused CPU kernel could not be built (see test_cpu_kernel.py)")
    else:
        monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
    return request.param
