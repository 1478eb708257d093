"""The command line's contract on bad input, case by case: one line ``smoothtopk: error: ...``
on stderr, exit status 2, and nothing written (every file of the tree keeps its bytes)."""

import os
import shutil

import pytest
import torch
from claim_holder import holding

from smoothtopk.experiments import rundir
from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import resolve
from smoothtopk.experiments.train import fit, prepare

FAST = {"epochs": 1, "subset": "1000", "val_size": 200, "progress": False, "device": "cpu"}


def snapshot(root) -> dict:
    """Every path under ``root`` (links as links) with its bytes: what "nothing written" keeps."""
    out = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(here, name)
            if os.path.islink(path):
                out[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[path] = f.read()
            else:
                out[path] = "dir"
    return out


def refuse(capsys, argv, root, pattern):
    """Run the CLI; assert the one-line error holding ``pattern`` and an untouched ``root``."""
    before = snapshot(root)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exc.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("smoothtopk: error: "), err
    assert pattern in lines[0], lines[0]
    assert snapshot(root) == before
    return lines[0]


# -- options and config files ---------------------------------------------------------------


def _yaml(tmp, text):
    path = tmp / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


OPTION_CASES = {
    "k >= C with ce": (lambda t: ["--loss", "ce", "--k", "100"], "k must satisfy 1 <= k <"),
    "k >= C, loss without k": (
        lambda t: ["--loss", "ce-label-smoothing", "--k", "100"],
        "number of classes (100), got 100",
    ),
    "unknown preset in the file beside --preset": (
        lambda t: ["--preset", "demo", "--config", _yaml(t, "preset: nope\n")],
        "'preset: nope' in the config file disagree",
    ),
    "preset of the file differs from --preset": (
        lambda t: ["--preset", "demo", "--config", _yaml(t, "preset: cifar100-noise\n")],
        "--preset demo and 'preset: cifar100-noise'",
    ),
    "unknown preset in the file alone": (
        lambda t: ["--config", _yaml(t, "preset: nope\n")],
        "unknown preset 'nope'",
    ),
    "config is a directory": (lambda t: ["--config", str(t)], "is a directory"),
    "binary config": (
        lambda t: ["--config", _yaml(t, b"\xff\xfe\x00\x01binary")],
        "c.yaml is not UTF-8 text",
    ),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_options_and_config_files(tmp_path, capsys, case):
    make, pattern = OPTION_CASES[case]
    argv = make(tmp_path)
    refuse(capsys, ["train", "--out", str(tmp_path / "run"), *argv], tmp_path, pattern)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "run"), "--device", "cuda"]
    refuse(capsys, argv, tmp_path, "CUDA is not available")


def test_preset_of_the_file_is_honoured_and_may_repeat_the_command_line():
    in_file = {"preset": "cifar100-noise", "noise": 0.2}
    cfg = resolve(None, dict(in_file), {})
    assert (cfg.preset, cfg.model, cfg.epochs) == ("cifar100-noise", "densenet-bc", 300)
    assert cfg.noise == 0.2  # the file wins over the preset
    assert resolve("cifar100-noise", dict(in_file), {"epochs": 3}).epochs == 3  # command line wins


# -- the output directory --------------------------------------------------------------------


def _under_a_file(t):
    (t / "file").write_text("x")
    return str(t / "file" / "run")


def _dangling(t):
    os.symlink(str(t / "gone"), str(t / "link"))
    return str(t / "link")


def _dangling_parent(t):
    os.symlink(str(t / "gone"), str(t / "link"))
    return str(t / "link" / "run")


def _read_only(t):
    ro = t / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores modes: a read-only mount does the job
        if os.access("/proc/sys", os.W_OK) or not os.path.isdir("/proc/sys"):
            pytest.skip("no unwritable directory available")
        return "/proc/sys/smoothtopk-run"
    return str(ro / "run")


OUT_CASES = {
    "under a file": (_under_a_file, "is a file, not a directory"),
    "dangling symlink": (_dangling, "is a dangling symbolic link"),
    "under a dangling symlink": (_dangling_parent, "is a dangling symbolic link"),
    "read-only": (_read_only, "is read-only or not writable"),
    "empty": (lambda t: "", "must not be empty"),
}


@pytest.mark.parametrize("command", ["train", "sweep", "demo"])
@pytest.mark.parametrize("case", list(OUT_CASES))
def test_unusable_out_is_named(tmp_path, capsys, case, command):
    make, pattern = OUT_CASES[case]
    out = make(tmp_path)
    line = refuse(capsys, [command, "--out", out, "--epochs", "1"], tmp_path, pattern)
    assert out in line
    try:
        os.chmod(tmp_path / "ro", 0o755)
    except FileNotFoundError:
        pass


def test_report_out_must_not_be_empty(tmp_path, capsys):
    refuse(capsys, ["report", str(tmp_path), "--out", ""], tmp_path, "must not be empty")


# -- checkpoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    fit(prepare(resolve("demo", None, FAST), str(run_dir)))
    return run_dir


def test_cpu_runs_train_channels_last(finished_run):
    """On the CPU the model trains channels-last (models.memory_format; NCHW max pooling is
    PyTorch's slow path there): every convolution weight of the saved model keeps that layout,
    and it is not merely contiguous (a 1x1 kernel would be both)."""
    model = torch.load(finished_run / "last.pt", weights_only=True)["model"]
    convolutions = [t for t in model.values() if t.ndim == 4 and t.shape[-1] > 1]
    assert convolutions
    for weight in convolutions:
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()


def _edit(key, value):
    def edit(ckpt):
        ckpt[key] = value

    return edit


def _shape(ckpt):
    name = next(n for n, t in ckpt["model"].items() if t.ndim == 2)
    ckpt["model"][name] = torch.zeros(3, 3)


def _missing_tensor(ckpt):
    ckpt["model"].pop(next(iter(ckpt["model"])))


def _momentum_shape(ckpt):
    state = ckpt["optimizer"]["state"]
    state[next(iter(state))]["momentum_buffer"] = torch.zeros(2)


def _mid_epoch_without_sums(ckpt):
    ckpt["step"] = 3


CHECKPOINT_CASES = {
    "epoch='one'": (_edit("epoch", "one"), "epoch 'one'"),
    "negative step": (_edit("step", -1), "must be integers >= 0"),
    "history not a list": (_edit("history", "x"), "history is not a list"),
    "history of another length": (_edit("history", []), "0 history records for 1"),
    "rng state damaged": (_edit("ranks", [{"rng": {"torch": torch.zeros(3)}}]), "random state"),
    "mid-epoch without partial sums": (_mid_epoch_without_sums, "partial sums"),
    "wrong-shaped tensor": (_shape, "does not fit this run's model"),
    "missing tensor": (_missing_tensor, "does not fit this run's model"),
    "wrong-shaped momentum": (_momentum_shape, "momentum buffer of shape (2,)"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint_is_refused_before_anything_is_written(tmp_path, capsys, finished_run, case):
    edit, pattern = CHECKPOINT_CASES[case]
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, last)
    argv = ["train", "--out", str(run_dir), "--resume", "--epochs", "2"]
    line = refuse(capsys, argv, tmp_path, pattern)
    assert str(last) in line
    assert not [n for n in os.listdir(run_dir) if n.startswith("env-resume")]


# -- resume needs something to resume ----------------------------------------------------------


def _no_last_pt(run_dir, finished_run):
    shutil.copytree(finished_run, run_dir)
    os.remove(run_dir / "last.pt")  # best.pt and results.json stay: they must not be replaced


RESUME_CASES = {
    "missing directory": (lambda d, f: None, "does not exist"),
    "empty directory": (lambda d, f: d.mkdir(), "is empty"),
    "run without last.pt": (_no_last_pt, "has no last.pt"),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_refuses_when_there_is_nothing_to_resume(tmp_path, capsys, finished_run, case):
    make, pattern = RESUME_CASES[case]
    run_dir = tmp_path / "run"
    make(run_dir, finished_run)
    argv = ["train", "--out", str(run_dir), "--resume", "--epochs", "2"]
    line = refuse(capsys, argv, tmp_path, pattern)
    assert "nothing to resume" in line and str(run_dir) in line


def test_demo_resume_refuses_a_missing_directory(tmp_path, capsys):
    refuse(
        capsys, ["demo", "--out", str(tmp_path / "d"), "--resume"], tmp_path, "nothing to resume"
    )


def test_sweep_restarts_a_run_killed_before_its_first_checkpoint(tmp_path, finished_run):
    from smoothtopk.experiments import rundir, sweep

    out = tmp_path / "sweep"
    configs = sweep.expand(None, None, {"loss": ["ce"]}, FAST)
    (out / rundir.run_name(configs[0])).mkdir(parents=True)
    (out / rundir.SWEEP).write_text("{}")
    shutil.copy(finished_run / "config.yaml", out / rundir.run_name(configs[0]) / "config.yaml")
    (planned,) = sweep.plan(str(out), configs)
    assert planned.status == "new" and planned.prepared.overwrite
    assert planned.prepared.resume_from is None


# -- values that pass a range check but that no training can use (#21) ------------------------

SMALL = ["--epochs", "1", "--subset", "1000", "--val-size", "200", "--device", "cpu"]
VALUE_CASES = {
    "subnormal tau": (["--loss", "smooth-svm", "--tau", "1e-320"], "tau must be >= 2.225e-308"),
    "infinite tau": (["--loss", "smooth-svm", "--tau", "inf"], "tau must be > 0, got inf"),
    "margin beyond float32": (["--loss", "smooth-svm-ldam", "--max-margin", "1e308"],
                              "max_margin must be at most 3.403e+38"),
    "infinite margin": (["--loss", "smooth-svm-ldam", "--max-margin", "inf"], "max_margin must"),
    "alpha beyond float32": (["--loss", "smooth-svm", "--alpha", "1e39"], "alpha must be at most"),
    "learning rate beyond float32": (["--lr", "1e308"], "the learning rate overflows float32"),
    "learning rate overflowing by gamma": (
        ["--lr", "1e30", "--gamma", "1e30", "--milestones", "1", "--epochs", "2"],
        "lr * gamma from epoch 2 is 1e+60",
    ),
    "weight decay beyond float32": (["--weight-decay", "1e39"], "weight_decay must be at most"),
    "seed of 65 bits": (["--seed", str(2**64)], "seed must be an integer in [0, 2**63 - 1]"),
    "negative seed": (["--seed", "-1"], "seed must be an integer in [0, 2**63 - 1], got -1"),
    "noise seed of 71 bits": (["--noise-seed", str(2**70)], "noise_seed must be an integer"),
    "data seed of 65 bits": (["--data-seed", str(2**64)], "data_seed must be an integer"),
    "device cuda:x": (["--device", "cuda:x"], "device must be auto, cpu, cuda or cuda:N"),
    "logit adjustment overflowing with the class counts": (
        ["--loss", "ce-logit-adjusted", "--tau-la", "1e38"],
        "ce-logit-adjusted (tau_la=1e+38): the loss is not finite on zero scores",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_values_no_training_can_use_are_refused_before_writing(tmp_path, capsys, case):
    argv, pattern = VALUE_CASES[case]
    refuse(capsys, ["train", "--out", str(tmp_path / "run"), *SMALL, *argv], tmp_path, pattern)


@pytest.mark.parametrize("case", ["subnormal tau", "seed of 65 bits", "margin beyond float32"])
def test_sweep_refuses_them_too(tmp_path, capsys, case):
    argv, pattern = VALUE_CASES[case]
    refuse(capsys, ["sweep", "--out", str(tmp_path / "s"), *SMALL, *argv], tmp_path, pattern)


@pytest.mark.parametrize(
    "values",
    [{"loss": "smooth-svm", "tau": 2.3e-308}, {"seed": 2**63 - 1, "noise_seed": 0},
     {"lr": 3e38, "gamma": 0.1}, {"loss": "smooth-svm-ldam", "max_margin": 3e38},
     {"lr": 1e30, "gamma": 1e30, "milestones": [20], "epochs": 20}],
)  # fmt: skip
def test_the_limits_themselves_are_accepted(values):
    resolve(None, None, values)  # no ValueError: the checks refuse only what cannot train


# -- one train per run directory ---------------------------------------------------------------


def test_a_second_train_into_a_running_trains_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with holding(out) as first:  # the first train, running in another process
        line = refuse(
            capsys, ["train", "--out", str(out), *SMALL], tmp_path, "is in use by a train"
        )
        assert f"process {first.pid} on " in line


def test_a_train_that_finished_during_the_checks_is_not_overwritten(tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    from smoothtopk.experiments import train

    out = tmp_path / "run"
    real = train.prepare

    def prepare_then_the_other_finishes(*args, **kwargs):
        prepared = real(*args, **kwargs)  # this train's checks: a new run directory
        out.mkdir()
        (out / "config.yaml").write_text("loss: ce\n")  # the other train, done meanwhile
        (out / "results.json").write_text("{}")
        return prepared

    monkeypatch.setattr(train, "prepare", prepare_then_the_other_finishes)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(out), *SMALL])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1 and "already exists" in lines[0], lines
    assert sorted(os.listdir(out)) == ["config.yaml", "results.json"]  # no lock file left
    assert (out / "results.json").read_text() == "{}"


# -- every reason at once ---------------------------------------------------------------------


def test_bad_values_of_the_command_line_are_reported_together(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "run"), "--epochs", "one", "--tau", "x", "--los", "ce"]
    line = refuse(capsys, argv, tmp_path, "3 problems: ")
    for reason in ("(1) argument --epochs: invalid int value: 'one'",
                   "(2) argument --tau: invalid float value: 'x'",
                   "(3) unrecognized arguments: --los ce"):  # fmt: skip
        assert reason in line


def test_bad_options_and_a_used_out_are_reported_together(tmp_path, capsys, finished_run):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    argv = ["train", "--out", str(out), "--tau", "0", "--noise", "2", "--epochs", "0"]
    line = refuse(capsys, argv, tmp_path, "4 problems: ")
    for reason in ("epochs must be >= 1, got 0", "tau must be > 0, got 0.0",
                   "noise level must be in [0, 1], got 2.0",
                   f"run directory {out} already exists and holds a finished run"):  # fmt: skip
        assert reason in line


def test_a_sweep_reports_every_bad_run_at_once(tmp_path, capsys):
    argv = ["sweep", "--out", str(tmp_path / "s"), "--loss", "smooth-svm,ce", "--tau", "1e-320,1,0",
            "--epochs", "0"]  # fmt: skip
    line = refuse(capsys, argv, tmp_path, "3 problems: ")  # each reason once, not once per run
    for reason in ("epochs must be >= 1, got 0", "tau must be >= 2.225e-308", "got 1e-320",
                   "tau must be > 0, got 0.0"):  # fmt: skip
        assert reason in line


def test_an_existing_default_directory_says_what_to_do(tmp_path, capsys, finished_run,
                                                       monkeypatch):  # fmt: skip
    """``--device cuda`` (or any option that may change on resume) names the same default
    directory as the run that is there: the refusal says so and lists every way out."""
    monkeypatch.chdir(tmp_path)
    options = {"epochs": 1, "subset": "1000", "val_size": 200, "device": "cuda"}
    shutil.copytree(finished_run, rundir.default_run_dir(resolve(None, None, options)))
    argv = ["train", "--epochs", "1", "--subset", "1000", "--val-size", "200", "--device", "cuda"]
    line = refuse(
        capsys,
        argv,
        tmp_path,
        "already exists and holds a finished run (the default "
        "--out of these options: --device, --epochs and the other options that may "
        "change on resume do not change it); pass --resume to continue it with more "
        "--epochs, --overwrite to start it over, or --out DIR for a new run directory",
    )
    if not torch.cuda.is_available():  # the other reason, in the same line
        assert line.startswith("smoothtopk: error: 2 problems: (1) ") and "(2) device cuda" in line


# -- reports ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_report_refuses_an_unusable_out(tmp_path, capsys, finished_run, case):
    make, pattern = OUT_CASES[case]
    out = make(tmp_path)
    refuse(capsys, ["report", str(finished_run), "--out", out], tmp_path, pattern)
    if os.path.isdir(tmp_path / "ro"):
        os.chmod(tmp_path / "ro", 0o755)


def test_report_names_a_corrupt_metrics_file(tmp_path, capsys, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{bad\n")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    pattern = f"{run / 'metrics.jsonl'} line {len(lines)} is not JSON"
    refuse(capsys, ["report", str(run), "--out", str(tmp_path / "rep")], tmp_path, pattern)
