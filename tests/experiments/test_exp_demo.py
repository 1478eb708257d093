"""The demo, shrunk: the sweep preset demo-sweep at 1 noise level x 2 losses, one epoch, in 2
worker processes; running it again trains nothing and reports the same table."""

import os

from smoothtopk.experiments import rundir, sweep

SMALL = {"epochs": 1, "milestones": [], "subset": "1000", "val_size": 200, "progress": False}


def test_demo_sweep_in_worker_processes_then_resume(tmp_path):
    out = str(tmp_path / "demo")
    configs = sweep.expand("demo-sweep", None, {"noise": [0.5]}, SMALL)
    assert [(c.loss, c.preset) for c in configs] == [("ce", "demo"), ("smooth-svm", "demo")]
    runs = sweep.plan(out, configs)
    assert not os.path.exists(out)  # planning writes nothing
    result = sweep.run(out, runs, progress=False, log=lambda _: None, jobs=2)
    lines = [line for line in result["table"].splitlines() if line.startswith("|")]
    assert lines[0].startswith("| noise | CE top-1 | CE top-5 | L_{5,1} (alpha=1) top-1")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 0.5"]
    assert "*" not in result["table"]
    for cfg in configs:
        assert rundir.is_finished(os.path.join(out, rundir.run_name(cfg)))
    assert os.path.isfile(os.path.join(out, "report", "accuracy_vs_noise.png"))
    # running a finished demo again trains nothing and reports the same table
    again = sweep.run(out, sweep.plan(out, configs), progress=False, log=lambda _: None, jobs=1)
    assert again["trained"] == [] and again["table"] == result["table"]


def test_demo_command_is_the_demo_sweep_preset(tmp_path, monkeypatch, capsys):
    from smoothtopk.experiments.cli import main

    seen = {}

    def fake_run(out, runs, **kw):
        seen.update(out=out, runs=runs, **kw)
        return {"table": "", "files": {}, "trained": [], "skipped": [], "seconds": 0.0}

    monkeypatch.setattr(sweep, "run", fake_run)
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--noise", "0.5,0.5", "--epochs", "1"]) == 0
    names = [os.path.basename(r.run_dir) for r in seen["runs"]]
    assert names == ["ce-noise0.5-all-seed0", "smooth-svm-k5-tau1-alpha1-noise0.5-all-seed0"]
    assert {(r.cfg.epochs, r.cfg.preset) for r in seen["runs"]} == {(1, "demo")}
    assert seen["jobs"] is None  # one worker per core
    assert not os.path.exists(out)  # only sweep.run (replaced here) writes
