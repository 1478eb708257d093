"""The package as a user gets it: the built wheel in a fresh virtual environment outside the
source tree, and the library and its tests on a torch without Triton.

The fresh environment takes torch and the other dependencies from this environment's
site-packages through a path file (``deps.pth``): a path line puts the directory on
``sys.path`` without running its ``.pth`` files, so the editable install of the source tree
stays out and ``import smoothtopk`` can only find the wheel.
"""

import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CALL = """
import sys, warnings
warnings.simplefilter("error")  # a kernel that cannot be built (no csrc in the wheel) warns
import torch, smoothtopk
from smoothtopk import smooth_topk_svm_loss
from smoothtopk.backends import cpu
assert smoothtopk.__file__.startswith(sys.prefix), smoothtopk.__file__
assert cpu.load() is not None
x = torch.randn(4, 10, requires_grad=True)
smooth_topk_svm_loss(x, torch.tensor([0, 1, 2, 3]), k=3).backward()
assert torch.isfinite(x.grad).all()
print("wheel ok", smoothtopk.__file__)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--quiet", "-w", str(out), str(ROOT)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("smoothtopk-*.whl")
    return path


def test_the_wheel_holds_the_kernel_source_the_license_and_type_hints(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "smoothtopk/backends/csrc/smooth_topk_cpu.cpp" in names
    assert "smoothtopk/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


@pytest.mark.slow
def test_the_wheel_works_in_a_fresh_environment_outside_the_source_tree(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
               "--quiet", str(wheel)]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=300)
    run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    called = subprocess.run([python, "-c", CALL], env=env, **run)
    assert called.returncode == 0 and "wheel ok" in called.stdout, called.stderr[-3000:]
    helped = subprocess.run([env_dir / "bin" / "smoothtopk", "--help"], env=env, **run)
    assert helped.returncode == 0 and "demo" in helped.stdout, helped.stderr[-3000:]


HIDE_TRITON = """
import sys
sys.modules["triton"] = None  # `import triton` fails, importlib.util.find_spec("triton") is None
"""


@pytest.mark.slow
def test_without_triton_the_library_and_its_tests_run(tmp_path):
    """A torch without Triton (CPU-only wheels, macOS): collection of the whole suite and the
    package's doctests, the backend and Triton tests (skipped, saying why) and a loss call."""
    (tmp_path / "sitecustomize.py").write_text(HIDE_TRITON)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    run = dict(cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    pytest_command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs"]
    collected = subprocess.run([*pytest_command, "--collect-only", "-n", "0"], **run)
    assert collected.returncode == 0, collected.stdout[-3000:]
    assert "triton: not installed" in collected.stdout
    files = ["tests/test_triton_kernel.py", "tests/test_backend.py", "src/smoothtopk"]
    ran = subprocess.run([*pytest_command, "-q", *files, "-k", "not inductor"], **run)
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert "could not import 'triton'" in ran.stdout  # the Triton tests' skip reason
    call = textwrap.dedent("""
        import torch
        from smoothtopk import smooth_topk_svm_loss
        from smoothtopk.backends import triton
        assert not triton.TRITON_INSTALLED
        print(float(smooth_topk_svm_loss(torch.zeros(2, 5), torch.tensor([0, 1]), k=2)))
    """)
    assert subprocess.run([sys.executable, "-c", call], **run).returncode == 0
