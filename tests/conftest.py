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

import torch  # noqa: E402

from smoothtopk import backends  # noqa: E402
from smoothtopk.backends import cpu as cpu_backend  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
#: every backend of :mod:`smoothtopk.backends`, the one list the backend suites run over: adding a
#: backend adds its name here. Triton runs on CPU tensors in the interpreter session only.
ALL_BACKENDS = [
    pytest.param("cpu"),
    pytest.param("pytorch"),
    pytest.param("triton", marks=pytest.mark.interpreted),
]
#: the backends that run in Triton's interpreter, where a row costs ~0.1 s: the suites give
#: them few examples (``few``)
INTERPRETED = {
    param.values[0]
    for param in ALL_BACKENDS
    if any(mark.name == "interpreted" for mark in param.marks)
}


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
    """Run a test once per backend (``cpu``, ``pytorch``, ``triton``), forced by
    SMOOTHTOPK_BACKEND; ``triton`` in the interpreter session only (and skipped without
    Triton). The value is the backend's name."""
    return force(request.param, monkeypatch)


def force(backend: str, monkeypatch) -> str:
    """Force ``backend`` for the test (SMOOTHTOPK_BACKEND); skip it if the backend is missing
    here (the CPU kernel not built, Triton not installed)."""
    if backend == "cpu" and cpu_backend.load() is None:
        pytest.skip("the fused CPU kernel could not be built (see test_cpu_kernel.py)")
    if backend == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv(backends.ENV, backend)
    return backend


# What a backend computes is its own ``unavailable``'s answer, asked here only about the two
# documented limits (dtype and k: Triton takes no float64 and k <= 32), so that a test changes
# dtype or skips for those and for nothing else.


def _unavailable(backend: str, dtype: torch.dtype, k: int) -> str | None:
    """Why ``backend`` cannot compute scores of this dtype with this ``k``; None if it can."""
    return backends.module(backend).unavailable(torch.zeros(1, k + 1, dtype=dtype), k)


def computes(backend: str, dtype: torch.dtype, k: int = 1) -> bool:
    """Whether the backend computes scores of this dtype with this ``k``."""
    return _unavailable(backend, dtype, k) is None


def precise_dtype(backend: str) -> torch.dtype:
    """The most precise dtype the backend computes: float64, or float32 (Triton). Tests that
    use float64 as "the precise dtype" run in it, with the bounds of that dtype."""
    return torch.float64 if computes(backend, torch.float64) else torch.float32


def require(backend: str, dtype: torch.dtype = torch.float32, k: int = 1) -> None:
    """Skip a case the backend cannot compute by design (float64 or k > 32 on Triton), with
    the backend's reason."""
    reason = _unavailable(backend, dtype, k)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def few(backend: str) -> bool:
    """Whether the backend runs in Triton's interpreter (~0.1 s a row): few, small examples."""
    return backend in INTERPRETED


def only_some_when_interpreted(backend: str, why: str) -> None:
    """Skip this case for a backend run in Triton's interpreter, which runs some of the cases
    of the test (``why`` says which, and why those suffice)."""
    if few(backend):
        pytest.skip(f"{backend} in Triton's interpreter (~0.1 s a row): {why}")
