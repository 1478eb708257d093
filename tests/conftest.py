"""Shared fixtures: the backends of the smooth loss that run on this machine's CPU."""

import os
import tempfile

import pytest

# Inductor's on-disk cache outlives a run and is keyed without our operators' schemas: a graph
# cached by another checkout (another schema of smoothtopk::forward) would be reused. Each test
# session compiles into a directory of its own.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = tempfile.TemporaryDirectory(prefix="smoothtopk-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE.name  # removed at exit

from smoothtopk import backends  # noqa: E402
from smoothtopk.backends import cpu as cpu_backend  # noqa: E402

BACKENDS = ("cpu", "pytorch")
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
#: every backend of :mod:`smoothtopk.backends`; Triton on CPU tensors in the interpreter session
ALL_BACKENDS = [*BACKENDS, pytest.param("triton", marks=pytest.mark.interpreted)]


def pytest_collection_modifyitems(config, items):
    """``interpreted`` tests need Triton's interpreter, which is chosen at process start: they
    run in a session of their own (``make test`` starts it) and are skipped in any other."""
    if INTERPRETING:
        return
    skip = pytest.mark.skip(
        reason="Triton-interpreter test: run by `TRITON_INTERPRET=1 pytest -m interpreted` "
        "(make test does)"
    )
    for item in items:
        if item.get_closest_marker("interpreted"):
            item.add_marker(skip)


@pytest.fixture(params=ALL_BACKENDS)
def every_backend(request, monkeypatch):
    """The backend contract suite (tests/test_backend_contract.py): each of ``cpu``,
    ``pytorch`` and ``triton`` forced by SMOOTHTOPK_BACKEND; ``triton`` in the interpreter
    session only (and skipped without Triton)."""
    if request.param == "cpu" and cpu_backend.load() is None:
        pytest.skip("the fused CPU kernel could not be built (see test_cpu_kernel.py)")
    if request.param == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv(backends.ENV, request.param)
    return request.param


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test once with the fused CPU kernel and once with the PyTorch implementation
    (the one used on other devices and the reference), forced by SMOOTHTOPK_BACKEND."""
    if request.param == "cpu" and cpu_backend.load() is None:
        pytest.skip("the fused CPU kernel could not be built (see test_cpu_kernel.py)")
    monkeypatch.setenv(backends.ENV, request.param)
    return request.param
