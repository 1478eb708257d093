"""The core library's imports run one way (docs/architecture.md): every room imports only rooms
on lower floors — no cycle, no rule reaching up — and nothing of the core imports the runner.

The runner's own floors are tested in ``tests/experiments/test_exp_architecture.py``.
"""

import ast
import pathlib

import smoothtopk

ROOT = pathlib.Path(smoothtopk.__file__).parent
FLOORS = {
    "_validation": 0,
    "_convention": 1, "margins": 1,
    "backends._abi": 2, "backends.polynomial": 2, "backends.anchors": 2,
    "backends._cpu_build": 2, "backends.triton_jit": 2, "hard_topk": 2, "metrics": 2,
    "backends.pytorch": 3, "backends.every_class": 3, "backends.triton_every_class_jit": 3,
    "backends.cpu": 4, "backends.triton": 4,  # the Triton backend's self-check uses pytorch
    "backends": 5,
    "smooth_topk": 6,
    "linear": 7,  # probability targets: the unfused loss per chunk
    "modules": 8,
    "comparators": 9,
    "registry": 10,
    "": 11,  # the package's __init__: public names, imported lazily
    "experiments": 12,
    "__main__": 13,  # the command: python -m smoothtopk
}  # fmt: skip


def _module(path: pathlib.Path) -> str:
    """``backends.cpu`` for ``src/smoothtopk/backends/cpu.py``; ``backends`` for its package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    """The room (a key of FLOORS) that a module belongs to: the longest known prefix."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in FLOORS:
            return ".".join(parts[:end])
    return "" if module == "" else module


def _imports(path: pathlib.Path) -> set[str]:
    """The modules of the package that ``path`` imports (relative or absolute), by name."""
    here = _module(path).split(".") if _module(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            prefix = [*base, *(node.module.split(".") if node.module else [])]
            if node.module:
                found.add(".".join(prefix))
            for alias in node.names:
                candidate = ".".join([*prefix, alias.name])
                if (ROOT / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    ROOT / candidate.replace(".", "/")
                ).is_dir():
                    found.add(candidate)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found |= {n[len("smoothtopk.") :] for n in names if n.startswith("smoothtopk.")}
    return found


def _core_files():
    return [p for p in ROOT.rglob("*.py") if "experiments" not in p.relative_to(ROOT).parts]


def test_every_core_module_is_on_a_floor():
    assert {_room(_module(p)) for p in _core_files()} <= set(FLOORS)


def test_core_imports_run_downward_only():
    upward = []
    for path in _core_files():
        room = _room(_module(path))
        for target in _imports(path):
            other = _room(target)
            if other != room and FLOORS[other] >= FLOORS[room]:
                upward.append(f"{_module(path) or 'smoothtopk'} -> {target}")
    assert upward == []


def test_the_core_never_imports_the_runner():
    reaching = [
        f"{_module(path)} -> {target}"
        for path in _core_files()
        if path.stem != "__main__"
        for target in _imports(path)
        if _room(target) == "experiments"
    ]
    assert reaching == []


def test_an_upward_import_would_be_seen():
    """The test's own parser resolves the relative forms the package uses."""
    probe = ROOT / "backends" / "_abi.py"
    assert "_convention" in _imports(probe)
    assert {"backends.cpu", "backends.pytorch", "backends.triton"} <= _imports(
        ROOT / "backends" / "__init__.py"
    )
    assert "backends.pytorch" in _imports(ROOT / "smooth_topk.py")
