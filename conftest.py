"""Collection rules for the whole tree (``tests/`` and the package's doctests).

Triton is optional (torch's CPU-only wheels and macOS have none): without it the module of
``triton.jit`` kernels cannot be imported, so its doctests are not collected, and the Triton
tests skip with the reason (``tests/test_optional_triton.py`` runs this case in CI).
"""

import importlib.util

TRITON = importlib.util.find_spec("triton") is not None
#: the modules of ``triton.jit`` kernels (imported on first use by ``backends/triton.py``)
TRITON_JIT = ["src/smoothtopk/backends/triton_jit.py",
              "src/smoothtopk/backends/triton_every_class_jit.py"]  # fmt: skip
collect_ignore = [] if TRITON else TRITON_JIT


def pytest_report_header(config):
    if not TRITON:
        return "triton: not installed: the Triton kernel's tests and doctests are skipped"
    return None
