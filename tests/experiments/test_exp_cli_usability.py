"""The command line as a new user meets it: ``--help`` and argument errors without importing
torch, a one-line hint without the ``experiments`` extra, no abbreviated options, defaults in
``--help``, the loss of ``train`` said when not chosen, percent in the epoch lines, and one
``--noise`` syntax."""

import os
import subprocess
import sys
import textwrap

import pytest

from smoothtopk.experiments import cli
from smoothtopk.experiments.train import epoch_line

HEAVY = ("torch", "torchvision", "yaml", "tqdm", "matplotlib")


def python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["train", "--help"], ["sweep", "--help"], ["demo", "--help"],
     ["report", "--help"], ["train", "--epochs", "one"], ["train", "--los", "ce"]],
)  # fmt: skip
def test_help_and_argument_errors_import_no_heavy_module(argv):
    result = python(f"""
        import sys
        from smoothtopk.experiments.cli import main
        try:
            main({argv!r})
        except SystemExit as exit:
            print("exit", exit.code)
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)  # fmt: skip
    assert result.returncode == 0, result.stderr
    *_, code, loaded = result.stdout.strip().splitlines()
    assert loaded == "[]", (argv, loaded)
    assert code == ("exit 0" if "--help" in argv else "exit 2")


def without(tmp_path, module: str) -> dict:
    """An environment whose Python cannot import ``module`` (as if it were not installed)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("module, dist", [("yaml", "pyyaml"), ("torchvision", "torchvision")])
@pytest.mark.parametrize("command", ["train", "sweep", "demo"])
def test_without_the_extra_one_line_says_how_to_install_it(tmp_path, module, dist, command):
    out = tmp_path / "run"
    env = without(tmp_path, module)
    result = subprocess.run([sys.executable, "-m", "smoothtopk", command, "--out", str(out)],
                            capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smoothtopk: error: ") and f"({dist} not installed)" in lines[0]
    assert lines[0].endswith('pip install "smoothtopk[experiments]"')
    assert not out.exists()
    shown = subprocess.run([sys.executable, "-m", "smoothtopk", command, "--help"],
                           capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert shown.returncode == 0 and "usage: smoothtopk" in shown.stdout, shown.stderr


def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("smoothtopk: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "argv, abbreviated",
    [(["train", "--los", "smooth-svm"], "--los"), (["train", "--epoch", "1"], "--epoch"),
     (["sweep", "--over"], "--over"), (["demo", "--epoch", "1"], "--epoch"),
     (["report", ".", "--sel"], "--sel")],
)  # fmt: skip
def test_abbreviated_options_are_errors(tmp_path, capsys, argv, abbreviated):
    line = one_line_error(capsys, [*argv, "--out", str(tmp_path / "out")])
    assert f"unrecognized arguments: {abbreviated}" in line
    assert not (tmp_path / "out").exists()


def help_text(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # one line: argparse wraps where it likes


@pytest.mark.parametrize(
    "command, expected",
    [("train", "--lr LR initial learning rate (default: 0.1)"),
     ("train", "--epochs EPOCHS number of epochs (default: 15)"),
     ("train", "the learning rate is multiplied by gamma (default: 8 12)"),
     ("train", "--tau TAU temperature of smooth-svm (default: 1)"),
     ("train", "--augment, --no-augment training augmentation (random crop and flip) "
               "(default: True)"),
     ("train", "in a collective before the job fails (default: 600)"),
     ("sweep", "--jobs N worker processes of --launcher local (1: one run after another) "
               "(default: 1)"),
     ("sweep", "--launcher {local,submitit} local: worker processes here; submitit: jobs "
               "through submitit (the cluster extra: pip install \"smoothtopk[cluster]\") "
               "(default: local)"),
     ("sweep", "--out DIR directory of the sweep's runs and report (default: runs/sweep)"),
     ("demo", "--out DIR directory of the demo's runs and report (default: runs/demo)")],
)  # fmt: skip
def test_help_shows_defaults(capsys, command, expected):
    assert expected in help_text(capsys, command)


def test_a_cluster_sweep_without_submitit_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    out = tmp_path / "sweep"
    line = one_line_error(capsys, ["sweep", "--launcher", "submitit", "--out", str(out)])
    assert line.endswith('--launcher submitit needs submitit: pip install "smoothtopk[cluster]"')
    assert not out.exists()


def test_help_does_not_invent_a_default(capsys):
    text = help_text(capsys, "train")
    assert "(default: None)" not in text and "(default: False)" not in text


def test_train_says_which_loss_it_trains_when_none_is_chosen(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("smoothtopk.experiments.train.fit", lambda prepared, log: {})
    small = ["--epochs", "1", "--subset", "1000", "--val-size", "200", "--device", "cpu"]
    assert cli.main(["train", "--out", str(tmp_path / "a"), *small]) == 0
    err = capsys.readouterr().err
    assert "smoothtopk: no --loss given: training the default loss, CE (ce)" in err
    assert cli.main(["train", "--out", str(tmp_path / "b"), "--loss", "ce", *small]) == 0
    assert "--loss" not in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("loss: smooth-svm\n")
    assert cli.main(["train", "--out", str(tmp_path / "c"), "--config",
                     str(tmp_path / "c.yaml"), *small]) == 0  # fmt: skip
    assert "--loss" not in capsys.readouterr().err


def test_epoch_lines_are_in_percent():
    record = {"epoch": 3, "lr": 0.1, "train_loss": 3.21, "val_top1": 0.288, "val_top5": 0.614,
              "test_top1": 0.2805, "test_top5": 0.6, "epoch_seconds": 1.5}  # fmt: skip
    line = epoch_line(record, 15)
    assert "val top-1 28.80% top-5 61.40%" in line
    assert "test top-1 28.05% top-5 60.00%" in line
    assert "0.288" not in line and "0.2805" not in line


@pytest.mark.parametrize(
    "argv, axes",
    [(["demo", "--noise", "0.2,0.4"], {"noise": [0.2, 0.4]}),
     (["demo", "--noise", "0.4"], {"noise": [0.4]}),
     (["demo"], {}),
     (["sweep", "--noise", "0.2,0.4"], {"noise": [0.2, 0.4]})],
)  # fmt: skip
def test_noise_is_a_comma_separated_list_in_demo_and_sweep(monkeypatch, argv, axes):
    seen = {}

    def run_sweep(parser, preset, yaml_values, given_axes, *rest, **kw):
        seen.update(given_axes)
        return 0

    monkeypatch.setattr(cli, "_run_sweep", run_sweep)
    assert cli.main(argv) == 0
    assert seen == axes


def test_noise_takes_one_value_in_train_and_names_sweep_for_several(tmp_path, capsys):
    line = one_line_error(capsys, ["train", "--noise", "0,0.2", "--out", str(tmp_path / "r")])
    assert "argument --noise: one value, got '0,0.2'" in line
    assert "smoothtopk sweep --noise 0,0.2" in line
    line = one_line_error(capsys, ["demo", "--noise", "0", "0.2", "--out", str(tmp_path / "r")])
    assert "unrecognized arguments: 0.2" in line  # the old demo syntax: refused, not guessed
    assert not (tmp_path / "r").exists()
