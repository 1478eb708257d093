"""The runner's imports run one way (docs/architecture.md): every room imports only rooms on
lower floors, so there is no cycle and no rule reaches up."""

import ast
import pathlib

import smoothtopk.experiments as experiments

ROOT = pathlib.Path(experiments.__file__).parent
FLOORS = {
    "cli": 7, "sweep": 6, "workers": 5, "train": 4, "report": 4, "rundir": 3, "records": 3,
    "config": 2, "checkpoint": 2,
    "datasets": 1, "noise": 1, "models": 1, "losses": 1, "distributed": 1,
    "loss_options": 0,
}  # fmt: skip


def _imports(path: pathlib.Path) -> set[str]:
    """The rooms that ``path`` imports with ``from . import X`` or ``from .X import ...``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            out |= {n.split(".")[0] for n in names}
    return out


def test_every_room_is_on_a_floor():
    rooms = {p.stem for p in ROOT.glob("*.py")} - {"__init__"} | {"datasets"}
    assert rooms == set(FLOORS)


def test_imports_run_downward_only():
    upward = [
        f"{p.stem} -> {room}"
        for p in ROOT.glob("*.py")
        if p.stem in FLOORS
        for room in _imports(p)
        if FLOORS[room] >= FLOORS[p.stem]
    ]
    assert upward == []
