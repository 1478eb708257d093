"""The runner's imports run one way (docs/architecture.md): every room imports only rooms on
lower floors, so there is no cycle and no rule reaches up.

A room is a module (``train``) or a package (``datasets``: its modules are one room) or a
module of a package whose modules are rooms of their own (``report.selection``). Importing
``report.selection`` also runs ``report/__init__.py``, the room ``report``, which must
therefore sit below every room that imports one of its modules: it imports nothing."""

import ast
import pathlib

import smoothtopk.experiments as experiments

ROOT = pathlib.Path(experiments.__file__).parent
FLOORS = {
    "cli": 11, "sweep": 10, "report.write": 9, "report.tables": 8, "report.plots": 8,
    "workers": 7, "cluster": 7, "report.aggregate": 7, "train": 6, "report.load": 6,
    "report.selection": 5,
    "rundir": 4, "records": 3, "config": 2, "checkpoint": 2,
    "datasets": 1, "noise": 1, "models": 1, "losses": 1, "distributed": 1, "claims": 1,
    "mixing": 1,
    "loss_options": 0, "report": 0,
}  # fmt: skip


def _module(path: pathlib.Path) -> str:
    """``report/load.py`` -> ``report.load``; ``report/__init__.py`` -> ``report``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    """The room of a module: itself if it has a floor, else its package's room."""
    while module not in FLOORS and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def _package(path: pathlib.Path) -> list[str]:
    return list(path.relative_to(ROOT).parent.parts)


def _imports(path: pathlib.Path) -> set[str]:
    """The rooms that ``path`` imports with relative imports (``from .X import``,
    ``from ..X import``, ``from . import X``), resolved from its package."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        package = _package(path)
        base = package[: len(package) - (node.level - 1)]
        names = [node.module] if node.module else [a.name for a in node.names]
        out |= {room_of(".".join([*base, *n.split(".")])) for n in names}
    return out


def _files():
    return [p for p in ROOT.rglob("*.py") if room_of(_module(p)) in FLOORS]


def test_every_room_is_on_a_floor():
    rooms = {room_of(_module(p)) for p in ROOT.rglob("*.py")} - {""}
    assert rooms == set(FLOORS)


def test_imports_run_downward_only():
    upward = [
        f"{_module(p)} -> {room}"
        for p in _files()
        for room in _imports(p)
        if room != room_of(_module(p)) and FLOORS[room] >= FLOORS[room_of(_module(p))]
    ]
    assert upward == []


def test_the_report_package_imports_nothing_on_import():
    assert _imports(ROOT / "report" / "__init__.py") == set()
