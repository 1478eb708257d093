"""The one table of loss options (experiments/loss_options.py): every entry is validated,
named in run names and swept, without a second list to keep in step."""

import pytest

from smoothtopk import registry
from smoothtopk.experiments import loss_options, sweep
from smoothtopk.experiments.config import resolve
from smoothtopk.experiments.rundir import run_name


@pytest.mark.parametrize("name", loss_options.NAMES)
def test_every_option_refuses_a_negative_value_by_name(name):
    with pytest.raises(ValueError, match=rf"^{name} must "):
        resolve(None, None, {name: -1})


def _a_loss_using(name: str) -> str:
    return next(loss for loss, entry in registry.LOSSES.items() if name in entry.options)


@pytest.mark.parametrize("name", loss_options.NAMES)
def test_every_option_is_a_sweep_axis_and_names_its_runs(name):
    loss = _a_loss_using(name)
    values = [2, 3] if name == "k" else [0.25, 0.5]
    configs = sweep.expand("demo", None, {"loss": [loss], name: values}, {})
    assert [getattr(c, name) for c in configs] == values
    names = [run_name(c) for c in configs]
    short = loss_options.OPTIONS[name].short
    assert names[0] != names[1]
    assert f"-{short}{values[0]:g}-" in names[0] and f"-{short}{values[1]:g}-" in names[1]


def test_an_option_a_loss_does_not_use_does_not_multiply_its_runs():
    configs = sweep.expand("demo", None, {"loss": ["ce"], "tau": [0.1, 1.0]}, {})
    assert len(configs) == 1 and "tau" not in run_name(configs[0])


def test_unknown_options_are_refused_by_name():
    with pytest.raises(TypeError, match="unknown loss option"):
        loss_options.with_defaults({"beta": 1.0})
