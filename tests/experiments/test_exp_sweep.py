"""``smoothtopk sweep`` and the comparator losses in the experiment runner, on tiny embedded
runs (200 training images, 1 epoch)."""

import os

import pytest
import torch

from smoothtopk import registry
from smoothtopk.experiments import sweep
from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import resolve
from smoothtopk.experiments.losses import LOSSES, build_loss, loss_params
from smoothtopk.experiments.models import build_model
from smoothtopk.registry import comparators

COMPARATORS = comparators()

TINY = ["--epochs", "1", "--milestones", "--subset", "200", "--val-size", "100",
        "--batch-size", "50", "--no-progress"]  # fmt: skip
FIXED = {"epochs": 1, "milestones": [], "subset": "200", "val_size": 100, "batch_size": 50,
         "progress": False}  # fmt: skip


def _results(out):
    return {
        d: os.path.getmtime(os.path.join(out, d, "results.json"))
        for d in os.listdir(out)
        if os.path.isfile(os.path.join(out, d, "results.json"))
    }


def test_sweep_cli_mean_std_then_resume_skips_finished_runs(tmp_path, capsys):
    out = str(tmp_path / "sweep")
    args = ["sweep", "--out", out, "--loss", "ce,hinge-alpha", "--noise", "0,0.5",
            "--seed", "0,1", *TINY]  # fmt: skip
    assert main(args) == 0
    first = _results(out)
    assert len(first) == 8
    assert "hinge-alpha-k5-alpha1-noise0.5-200-seed1" in first
    table = open(os.path.join(out, "report", "results.md")).read()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0] == ("| noise | CE top-1 | CE top-5 | hinge-alpha (k=5, alpha=1) top-1 | "
                        "hinge-alpha (k=5, alpha=1) top-5 |")  # fmt: skip
    assert len(lines) == 4 and all(" ± " in line and "(n=2)" in line for line in lines[2:])
    csv = open(os.path.join(out, "report", "results.csv")).read().splitlines()
    assert "test_top1_std" in csv[0].split(",") and len(csv) == 5
    assert os.path.isfile(os.path.join(out, "report", "accuracy_vs_noise.png"))
    capsys.readouterr()

    # interrupted: one run lost its results (as if killed before the end); another never ran
    lost = "ce-noise0.5-200-seed1"
    os.remove(os.path.join(out, lost, "results.json"))
    assert main(args) == 0
    text = capsys.readouterr()
    again = _results(out)
    assert again[lost] > first[lost]
    assert {d: t for d, t in again.items() if d != lost} == {
        d: t for d, t in first.items() if d != lost
    }  # the finished runs were not re-run
    assert "7 already complete" in text.out and "1 runs trained" in text.out


def test_sweep_resumes_a_partial_sweep_in_worker_processes(tmp_path):
    out = str(tmp_path / "sweep")
    small = sweep.expand(None, None, {"loss": ["ce"], "seed": [0]}, FIXED)
    sweep.run(out, sweep.plan(out, small), progress=False, log=lambda _: None)
    before = _results(out)
    assert list(before) == ["ce-noise0-200-seed0"]
    configs = sweep.expand(None, None, {"loss": ["ce", "smooth-svm"], "seed": [0],
                                        "tau": [0.1, 1.0]}, FIXED)  # fmt: skip
    assert len(configs) == 3  # tau multiplies smooth-svm only
    logged = []
    runs = sweep.plan(out, configs)
    assert [r.status for r in runs] == ["complete", "new", "new"]
    result = sweep.run(out, runs, jobs=2, progress=False, log=logged.append)
    assert [os.path.basename(p) for p in result["skipped"]] == ["ce-noise0-200-seed0"]
    assert sorted(os.path.basename(p) for p in result["trained"]) == [
        "smooth-svm-k5-tau0.1-alpha1-noise0-200-seed0",
        "smooth-svm-k5-tau1-alpha1-noise0-200-seed0",
    ]
    assert _results(out)["ce-noise0-200-seed0"] == before["ce-noise0-200-seed0"]
    assert sum(line.startswith("train ") for line in logged) == 2
    assert "L_{5,0.1} (alpha=1) top-1" in result["table"]


def test_demo_full_preset_plans_every_loss_noise_and_seed():
    configs = sweep.expand("demo-full")
    assert len(configs) == len(LOSSES) * 5 * 5
    assert {c.loss for c in configs} == set(LOSSES)
    assert {c.noise for c in configs} == {0.0, 0.2, 0.4, 0.6, 0.8}
    assert {c.seed for c in configs} == {0, 1, 2, 3, 4}
    # each seed its own noise draw (#22), the same for every loss at that seed
    assert {(c.seed, c.noise_draw_seed) for c in configs if c.noise} == {
        (seed, seed) for seed in range(5)
    }
    assert all(c.preset == "demo" and c.dataset == "embedded" for c in configs)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "ce,nope"], "unknown loss 'nope'"),
        (["--noise", "0,,1"], "comma-separated"),
        (["--seed", "x"], "bad value"),
        (["--loss", "ce-label-smoothing", "--label-smoothing", "1.5"], "label_smoothing"),
        (["--loss", "hinge-alpha", "--k", "100"], "k must satisfy"),
        (["--jobs", "0"], "--jobs"),
    ],
)
def test_sweep_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = str(tmp_path / "sweep")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--out", out, *args, *TINY])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothtopk: error: ") and message in err and err.count("\n") == 1
    assert not os.path.exists(out)


def test_overwrite_plans_a_sweep_directory_that_does_not_exist_yet(tmp_path):
    """``demo --overwrite`` into a new path (``make demo-check`` in a fresh clone, where
    ``runs/`` does not exist) plans its runs and writes nothing (it read the missing directory
    to look for claimed runs)."""
    out = tmp_path / "runs" / "demo-check"
    runs = sweep.plan(str(out), sweep.expand(None, None, {}, FIXED), overwrite=True)
    assert len(runs) == len(sweep.expand(None, None, {}, FIXED)) and runs
    assert not (tmp_path / "runs").exists()


def test_sweep_refuses_a_directory_that_is_not_a_sweep(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(ValueError, match="not a sweep directory"):
        sweep.plan(str(tmp_path / "other"), sweep.expand(None, None, {}, FIXED))


@pytest.mark.parametrize("name", list(COMPARATORS))
def test_each_comparator_builds_by_name_and_trains_one_step(name):
    cfg = resolve("demo", None, {"loss": name, "k": 3, "alpha": 0.5, "epsilon": 0.5,
                                 "label_smoothing": 0.2})  # fmt: skip
    criterion = build_loss(name, cfg.loss_spec.options)
    assert isinstance(criterion, COMPARATORS[name])
    for param in loss_params(name):
        given = getattr(cfg, param)  # None (max_margin): the registry's default of the loss
        expected = registry.LOSSES[name].options[param] if given is None else given
        assert getattr(criterion, param) == expected
    torch.manual_seed(0)
    model = build_model("small-cnn", 100)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 100, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = criterion(model(x), y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
