"""The long-tailed comparators in the runner: the training class counts reach the losses that
need them (after subsampling and label noise), one-epoch runs end to end, and CLI errors."""

import json

import pytest
import torch
from test_exp_cli import assert_one_line_error, run_cli

from smoothtopk import ldam_margins
from smoothtopk.experiments import sweep
from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import resolve
from smoothtopk.experiments.rundir import run_name
from smoothtopk.experiments.train import _build, fit, prepare
from smoothtopk.registry import LOSSES

LONG_TAIL = ("ce-logit-adjusted", "smooth-svm-ldam", "smoothed-calibrated-hinge-ldam")
TINY = {"epochs": 1, "milestones": [], "subset": "all", "val_size": 100, "batch_size": 100,
        "progress": False, "imbalance_ratio": 10.0, "noise": 0.2}  # fmt: skip


def test_exactly_the_long_tail_losses_need_class_counts():
    assert {n for n, s in LOSSES.items() if s.needs_class_counts} == set(LONG_TAIL)


@pytest.mark.parametrize("name", LONG_TAIL)
def test_one_epoch_run_trains_on_the_noisy_long_tailed_counts(tmp_path, name):
    cfg = resolve("demo", None, {**TINY, "loss": name})
    prepared = prepare(cfg, str(tmp_path / run_name(cfg)))
    labels = prepared.noisy.labels  # what the model is trained on
    expected = torch.bincount(labels, minlength=100).clamp_min(1)
    criterion = _build(prepared, torch.device("cpu"), False, 0).criterion
    assert torch.equal(criterion.class_counts, expected)
    assert expected.max() >= 5 * expected.min()  # long-tailed indeed
    assert not torch.equal(labels, prepared.data.train.targets)  # noisy, not the clean labels
    summary = fit(prepared)  # a non-finite training loss would raise FloatingPointError
    assert summary["status"] == "complete" and summary["loss"] == name
    assert summary["imbalance_ratio"] == 10.0 and 0 <= summary["test_top5"] <= 1


def test_the_run_loss_is_the_registry_loss_with_those_counts(tmp_path):
    cfg = resolve("demo", None, {**TINY, "loss": "smooth-svm-ldam", "k": 3, "tau": 0.5})
    prepared = prepare(cfg, str(tmp_path / "r"))
    criterion = _build(prepared, torch.device("cpu"), False, 0).criterion
    counts = torch.bincount(prepared.noisy.labels, minlength=100).clamp_min(1).double()
    scores = torch.randn(6, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 5, 17, 42, 99, 63])
    alpha = 1.0 * (counts.min() / counts) ** 0.25  # max_margin 1 (the registry default)
    expected = LOSSES["smooth-svm"].functional(scores, target, k=3, tau=0.5, alpha=alpha)
    torch.testing.assert_close(criterion(scores, target), expected)
    torch.testing.assert_close(alpha, ldam_margins(counts, 1.0, dtype=torch.float64))


def test_sweep_plans_the_long_tail_losses():
    named = sweep.expand_named(None, axes={"loss": list(LONG_TAIL), "imbalance_ratio": [10.0]})
    assert sorted(c.loss for c, _ in named) == sorted(LONG_TAIL)
    assert len({name for _, name in named}) == 3 and all("-lt10" in n for _, n in named)


@pytest.mark.parametrize(
    "argv, pattern",
    [(["--loss", "ce-logit-adjustd"], "unknown loss 'ce-logit-adjustd'"),
     (["--loss", "smooth-svm-ldam", "--tau", "0"], "tau must be > 0"),
     (["--loss", "smooth-svm-ldam", "--k", "100"], "k must satisfy"),
     (["--loss", "smoothed-calibrated-hinge-ldam", "--epsilon", "0"], "epsilon must be > 0"),
     (["--loss", "ce-logit-adjusted", "--tau-la", "-1"], "tau_la must be >= 0, got -1"),
     (["--loss", "ce-logit-adjusted", "--tau-la", "nan"], "tau_la must be >= 0, got nan"),
     (["--loss", "smooth-svm-ldam", "--max-margin", "-0.5"], "max_margin must be >= 0"),
     (["--loss", "smooth-svm-ldam", "--max-margin", "big"], "invalid float value: 'big'")],
)  # fmt: skip
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, argv, pattern):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--imbalance-ratio", "10", *argv)
    assert_one_line_error(code, err, pattern)
    assert not out.exists()


def test_cli_one_epoch_long_tailed_run(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--preset", "demo", "--epochs", "1", "--milestones",
            "--val-size", "100", "--batch-size", "100", "--no-progress", "--imbalance-ratio",
            "10", "--loss", "ce-logit-adjusted"]  # fmt: skip
    assert main(argv) in (0, None)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["loss"] == "ce-logit-adjusted"
    assert (out / "long_tail.json").exists()


def test_tau_la_and_max_margin_reach_the_loss_and_the_run_name():
    cfg = resolve("demo", None, {"loss": "smooth-svm-ldam", "max_margin": 0.25})
    assert cfg.loss_spec.build().max_margin == 0.25 and "-mm0.25-" in run_name(cfg)
    cfg = resolve("demo", None, {"loss": "smoothed-calibrated-hinge-ldam"})
    assert cfg.loss_spec.build().max_margin == LOSSES[cfg.loss].options["max_margin"]
    cfg = resolve("demo", None, {"loss": "ce-logit-adjusted", "tau_la": 2.0})
    assert cfg.loss_spec.build().tau_la == 2.0 and "-tla2-" in run_name(cfg)
    named = sweep.expand_named(None, axes={"loss": ["ce-logit-adjusted", "ce"],
                                           "tau_la": [0.5, 1.0]})  # fmt: skip
    assert sorted(c.tau_la for c, _ in named if c.loss == "ce-logit-adjusted") == [0.5, 1.0]
    assert len([c for c, _ in named if c.loss == "ce"]) == 1  # ce takes no tau_la


def test_bad_swept_value_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run_cli(capsys, "sweep", "--out", str(out), "--loss", "ce-logit-adjusted",
                           "--tau-la", "0.5,-1")  # fmt: skip
    assert_one_line_error(code, err, "tau_la must be >= 0, got -1")
    assert not out.exists()


def test_grid_selects_tau_la_and_max_margin_per_loss():
    grid = sweep.parse_grid(["ce-logit-adjusted:tau_la=0.5,2", "smooth-svm-ldam:max_margin=0.5,1"])
    named = sweep.expand_named(None, axes={"loss": list(LONG_TAIL[:2])}, grid=grid)
    assert sorted(n for _, n in named) == [
        "ce-logit-adjusted-tla0.5-noise0-all-seed0", "ce-logit-adjusted-tla2-noise0-all-seed0",
        "smooth-svm-ldam-k5-tau1-mm0.5-noise0-all-seed0",
        "smooth-svm-ldam-k5-tau1-mm1-noise0-all-seed0",
    ]  # fmt: skip
