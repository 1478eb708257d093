"""A process that holds a run directory's claim (``experiments.claims``) while a test runs: the
one helper of the runner tests that need "another trainer" (a plain module, not a conftest)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

CODE = """
import sys, time
from smoothtopk.experiments import claims
with claims.claimed(sys.argv[1], sys.argv[2]):
    print("held", flush=True); time.sleep(120)
"""


@contextlib.contextmanager
def holding(run_dir, user: str = "train"):
    """Another process that holds ``run_dir``'s claim until the block ends (then killed)."""
    other = subprocess.Popen([sys.executable, "-c", CODE, str(run_dir), user],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "held"
        yield other
    finally:
        other.kill()
        other.wait()
