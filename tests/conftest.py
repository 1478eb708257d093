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

from backend_suite import ALL_BACKENDS, force  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


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


@pytest.fixture(autouse=True)
def _fresh_plans():
    """Every test checks and chooses its calls afresh: tests stub backends (their availability,
    their self-checks), and a plan remembered by an earlier test would bypass the stub."""
    from smoothtopk import smooth_topk

    smooth_topk.clear_plans()
    yield
    smooth_topk.clear_plans()
