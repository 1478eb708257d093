"""Selection, the one owner of what is chosen and by which rule:

* **the best epoch of a run** (:func:`improves`, :func:`select_best`): the highest validation
  top-5, ties to the earliest epoch. Training keeps ``best.pt`` and ``results.json`` by it,
  the report reads each run at it;
* **the per-loss selection of a grid** (:func:`select_runs`): among the runs of one loss,
  setting and seed, the highest validation top-5 at its best epoch, then validation top-1,
  then the smaller options;
* **the two rules** (:data:`RULES`): by validation top-5 (the rule above, training's) or by
  validation top-1 (the same with the two metrics swapped); the report shows both;
* **what a grid may select** (:data:`SELECTABLE`, :func:`grid_options`), which the sweep's
  ``--grid`` checks against.

No test metric is read by any of these rules. A *run* here is anything with ``cfg`` (its
:class:`~smoothtopk.experiments.config.Config`) and ``best`` (its best epoch's record, or
``None`` before its first epoch), such as :class:`.load.RunResult`.
"""

from __future__ import annotations

import json
from collections import defaultdict

from .. import loss_options
from ..config import Config
from ..losses import loss_params
from ..rundir import RESUMABLE

#: options selected per loss by validation (a sweep's ``--grid``): the recipe's and the losses'
SELECTABLE = ("lr", "weight_decay", *loss_options.SELECTABLE)
_NOT_SETTING = {*SELECTABLE, *RESUMABLE, "preset", "seed", "loss", "k"}


# -- the best epoch of a run ----------------------------------------------------------------


#: the selection rules: the validation metric that picks the epoch and the configuration,
#: then the one that breaks its ties
RULES = {"val_top5": "val_top1", "val_top1": "val_top5"}


def improves(record: dict, best: dict | None, by: str = "val_top5") -> bool:
    """Whether the epoch ``record`` becomes a run's best epoch after ``best`` (the best so
    far, ``None`` before the first): a strictly higher validation top-5, so that of tied epochs
    the earliest stays.

    Example:
        >>> improves({"val_top5": 0.5}, None), improves({"val_top5": 0.5}, {"val_top5": 0.5})
        (True, False)
    """
    return best is None or record[by] > best[by]


def select_best(history: list[dict], by: str = "val_top5") -> dict | None:
    """The best epoch's record of ``history`` by :func:`improves` (``None`` if empty), the
    epoch with the highest ``by`` (a key of :data:`RULES`).

    Example:
        >>> select_best([{"epoch": 1, "val_top5": 0.4}, {"epoch": 2, "val_top5": 0.6},
        ...              {"epoch": 3, "val_top5": 0.6}])["epoch"]
        2
    """
    best = None
    for record in history:
        if improves(record, best, by):
            best = record
    return best


# -- what a grid may select -------------------------------------------------------------------


def grid_options(loss: str) -> tuple[str, ...]:
    """The options a ``--grid`` may give ``loss``: ``lr``, ``weight_decay`` and those of
    :data:`SELECTABLE` the loss uses (not ``k``, which defines the loss).

    Example:
        >>> grid_options("hinge-alpha"), grid_options("ce")
        (('lr', 'weight_decay', 'alpha'), ('lr', 'weight_decay', 'label_smoothing'))
    """
    return ("lr", "weight_decay") + tuple(p for p in loss_params(loss) if p in SELECTABLE)


# -- the per-loss selection of a grid -----------------------------------------------------------


def loss_group(cfg: Config) -> str:
    """The loss a selection chooses options for: ``ce``, ``smooth-svm (k=5)``."""
    return f"{cfg.loss} (k={cfg.k})" if "k" in loss_params(cfg.loss) else cfg.loss


def setting_of(cfg: Config) -> tuple:
    """What the candidates of one choice share: every option that changes a result (data set,
    noise, subset, epochs, ...) except the loss, the :data:`SELECTABLE` options and the seed."""
    values = cfg.to_dict()
    return tuple((k, json.dumps(values[k], default=str)) for k in sorted(values)
                 if k not in _NOT_SETTING)  # fmt: skip


def candidates(runs: list) -> dict[tuple, list]:
    """(loss group, setting, seed) -> the runs (with an epoch) that compete for it."""
    groups: dict[tuple, list] = defaultdict(list)
    for run in runs:
        if run.best is not None:
            groups[(loss_group(run.cfg), setting_of(run.cfg), run.cfg.seed)].append(run)
    return groups


def has_choices(runs: list) -> bool:
    """Whether some loss has several configurations for one setting and seed."""
    return any(len(members) > 1 for members in candidates(runs).values())


def _smaller_options(run) -> tuple:
    """The ties' order: the smaller options first (``None``, a loss's default, before any)."""
    values = (getattr(run.cfg, o) for o in SELECTABLE)
    return tuple((v is not None, 0.0 if v is None else v) for v in values)


def best_by(run, by: str = "val_top5") -> dict | None:
    """The record of a run's best epoch under rule ``by``: ``run.best`` for validation top-5
    (training's rule), else :func:`select_best` of its history."""
    return run.best if by == "val_top5" else select_best(run.history, by)


def select_runs(runs: list, by: str = "val_top5") -> dict[tuple, object]:
    """(loss group, setting, seed) -> the selected run.

    Each run's own epoch is its best (:func:`select_best`); among the candidates, the run with
    the highest validation top-5 at that epoch wins, ties broken by validation top-1, then by
    the smaller :data:`SELECTABLE` options. With ``by="val_top1"`` the two validation metrics
    swap roles (the epoch too is the best by validation top-1). No test metric is read.

    Example:
        >>> from types import SimpleNamespace as Run
        >>> run = lambda lr, v: Run(cfg=Config(lr=lr), best={"val_top5": v, "val_top1": 0})
        >>> picked = select_runs([run(0.1, 0.8), run(0.3, 0.9), run(0.03, 0.9)])
        >>> [r.cfg.lr for r in picked.values()]
        [0.03]
    """
    chosen = {}
    for key, members in candidates(runs).items():
        ordered = sorted(members, key=_smaller_options)
        ties = RULES[by]
        bests = {id(r): best_by(r, by) for r in ordered}
        chosen[key] = max(ordered, key=lambda r: (bests[id(r)][by], bests[id(r)][ties]))
    return chosen


def varied(runs: list) -> dict[str, list[str]]:
    """Loss group -> the :data:`SELECTABLE` options its runs differ in (what was selected)."""
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for run in runs:
        for option in SELECTABLE:
            values[loss_group(run.cfg)][option].add(getattr(run.cfg, option))
    return {g: [o for o in SELECTABLE if len(v[o]) > 1] for g, v in values.items()}
