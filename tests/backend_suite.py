"""The backends the suites run on, and what each computes: one list, one owner.

``ALL_BACKENDS`` is the one list of backends (``tests/conftest.py``'s fixture ``every_backend``
and ``test_contract.py``'s cases are parametrized over it): adding a backend adds its name here.
The helpers let a test run in each backend's precise dtype, skip what a backend cannot compute
by design, and give the backend run in Triton's interpreter few examples. A plain module, not
the conftest: test modules import it (``from conftest import`` would find whichever conftest
was imported last).
"""

import pytest
import torch

from smoothtopk import backends
from smoothtopk.backends import cpu as cpu_backend

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


def auto_reaches_triton(monkeypatch):
    """``auto`` with the CPU kernel out of the way, so that CPU tensors (in the interpreter)
    reach the Triton backend as CUDA tensors do, in a process with no self-check made yet;
    returns the Triton backend module (whose self-checks a test may then watch)."""
    from smoothtopk.backends import triton as triton_backend

    monkeypatch.delenv(backends.ENV, raising=False)
    monkeypatch.setattr(backends.cpu, "unavailable", lambda scores, k: "out of the way")
    monkeypatch.setattr(triton_backend, "_CHECKED", {})
    return triton_backend
