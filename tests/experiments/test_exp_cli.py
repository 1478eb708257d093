"""Command-line errors: one line on stderr, exit status 2, nothing written."""

import os
import subprocess
import sys

import pytest

from smoothtopk.experiments.cli import main


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("smoothtopk: error: ")
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--loss", "focal"], "unknown loss 'focal'"),
        (["--noise", "1.5"], "noise level must be in [0, 1]"),
        (["--noise", "-0.2"], "noise level must be in [0, 1]"),
        (["--loss", "smooth-svm", "--k", "100"], "k must satisfy 1 <= k < number of classes (100)"),
        (["--loss", "hard-svm", "--k", "0"], "k must be >= 1"),
        (["--preset", "mnist"], "invalid choice"),
        (["--epochs", "many"], "invalid int value"),
        (["--noise-groups", "superclass", "--dataset", "folder", "--data-dir", "x"], "superclass"),
    ],
)
def test_bad_options(tmp_path, capsys, argv, pattern):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", str(out), *argv)
    assert_one_line_error(code, err, pattern)
    assert not out.exists()


def test_missing_data_directories_say_how_to_get_the_data(tmp_path, capsys):
    out = tmp_path / "run"
    missing = str(tmp_path / "data")
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--preset", "cifar100-noise",
                           "--data-dir", missing)  # fmt: skip
    assert_one_line_error(code, err, "CIFAR-100 not found")
    assert "--download" in err and "cs.toronto.edu" in err
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--preset", "imagenet-subsets",
                           "--data-dir", missing)  # fmt: skip
    assert_one_line_error(code, err, "ImageNet not found")
    assert "image-net.org" in err
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--dataset", "folder",
                           "--data-dir", missing)  # fmt: skip
    assert_one_line_error(code, err, "train/<class>/<image>")
    assert not out.exists() and not os.path.exists(missing)


def test_existing_run_directory_is_not_touched(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("loss: ce\n")
    (out / "metrics.csv").write_text("precious\n")
    before = sorted(os.listdir(out))
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--epochs", "1")
    # no checkpoint: --resume would be refused, so the ways out are the other two
    assert_one_line_error(code, err, "holds an unfinished run; pass --overwrite to start it over, "
                          "or --out DIR for a new run directory")  # fmt: skip
    assert "--resume" not in err
    assert sorted(os.listdir(out)) == before
    assert (out / "metrics.csv").read_text() == "precious\n"


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--overwrite")
    assert_one_line_error(code, err, "not a smoothtopk run")
    assert (out / "thesis.tex").read_text() == "x"


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown option(s) in the config file: learning_rate")
    bad.write_text("epochs: ten\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "'epochs' must be of type")
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "none.yaml"))
    assert_one_line_error(code, err, "config file not found")
    assert not (tmp_path / "r").exists()


def test_demo_and_report_errors(tmp_path, capsys):
    out = tmp_path / "demo"
    code, _, err = run_cli(capsys, "demo", "--out", str(out), "--noise", "0,2")
    assert_one_line_error(code, err, "noise level must be in [0, 1]")
    assert not out.exists()
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert_one_line_error(code, err, "not a smoothtopk run")
    code, _, err = run_cli(capsys, "frobnicate")
    assert_one_line_error(code, err, "invalid choice")


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "smoothtopk", "train", "--noise", "7"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "smoothtopk: error: noise level must be in [0, 1], got 7.0"


@pytest.mark.parametrize(
    "loss, option, a, b",
    [("smooth-svm", "alpha", 0.0, 1.0), ("hard-svm", "alpha", 0.0, 1.0),
     ("smooth-svm", "tau", 0.1, 1.0), ("hinge-alpha", "k", 2, 5),
     ("smoothed-calibrated-hinge", "epsilon", 0.5, 1.0),
     ("ce-label-smoothing", "label_smoothing", 0.1, 0.2)],
)  # fmt: skip
def test_default_run_directories_differ_in_every_option_of_the_loss(loss, option, a, b):
    from smoothtopk.experiments.config import resolve
    from smoothtopk.experiments.rundir import default_run_dir

    first = default_run_dir(resolve(None, None, {"loss": loss, option: a}))
    second = default_run_dir(resolve(None, None, {"loss": loss, option: b}))
    assert first != second


def test_default_run_directory_changes_with_every_option_that_changes_a_result():
    from smoothtopk.experiments.config import resolve
    from smoothtopk.experiments.rundir import RESUMABLE, default_run_dir

    base = default_run_dir(resolve())
    changed = {
        "lr": 0.05,
        "weight_decay": 0.0,
        "data_seed": 1,
        "batch_size": 32,
        "milestones": [5],
        "augment": False,
        "noise_seed": 3,
        "subsample_seed": 2,
        "model": "resnet18-cifar",
    }
    for name, value in changed.items():  # fmt: skip
        assert default_run_dir(resolve(None, None, {name: value})) != base, name
    kept = {"workers": 2, "device": "cpu", "progress": False, "checkpoint_every": 5}
    assert set(kept) <= set(RESUMABLE)  # these may change on resume, so the run keeps its home
    for name, value in kept.items():
        assert default_run_dir(resolve(None, None, {name: value})) == base, name


def test_every_option_takes_its_help_from_its_config_field():
    from smoothtopk.experiments import config
    from smoothtopk.experiments.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train._actions if a.dest in config.FIELDS}
    assert set(helps) == set(config.FIELDS)
    for name, text in helps.items():  # the field's help, then perhaps its default
        assert text.startswith(config.help_of(name)) and text, name
