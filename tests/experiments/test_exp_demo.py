"""The demo sweep machinery, shrunk: 1 noise level x 2 losses, one epoch, 2 worker processes."""

import os

from smoothtopk.experiments import demo

SMALL = {"epochs": 1, "milestones": [], "subset": "1000", "val_size": 200}


def test_demo_sweep_in_worker_processes_then_resume(tmp_path):
    out = str(tmp_path / "demo")
    runs = demo.plan(out, (0.5,), overrides=SMALL)
    assert not os.path.exists(out)  # planning writes nothing
    result = demo.run(out, runs, progress=False, log=lambda _: None, jobs=2)
    lines = result["table"].strip().splitlines()
    assert lines[0].startswith("| noise | CE top-1 | CE top-5 | L_{5,1} (alpha=1) top-1")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 0.5"]
    assert "*" not in result["table"]
    for name in ("ce-noise0.5", "smooth-svm-noise0.5"):
        assert os.path.isfile(os.path.join(out, name, "results.json"))
    assert os.path.isfile(os.path.join(out, "report", "accuracy_vs_noise.png"))
    # resuming a finished demo trains nothing and reports the same table
    again = demo.run(out, demo.plan(out, (0.5,), resume=True, overrides=SMALL),
                     progress=False, log=lambda _: None, jobs=1)  # fmt: skip
    assert again["table"] == result["table"]
