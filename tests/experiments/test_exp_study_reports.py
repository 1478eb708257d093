"""The report's files of #22's studies, from small fake run records: the k study's table and
accuracy-vs-k plot, and the training accuracy against epochs (the non-smooth losses)."""

import json
import os

import pytest
import yaml

from smoothtopk.experiments.config import Config
from smoothtopk.experiments.records import EVAL_KS, write_metrics
from smoothtopk.experiments.report import plots
from smoothtopk.experiments.report.write import write_report


def fake_run(root, loss, seed=0, k=5, noise=0.0, lr=0.1, epochs=3, base=0.5, train=0.2):
    """A finished run: validation top-k rises, then falls at the last epoch; test top-k is
    ``base + k/100 + epoch/1000 + seed/100``; training top-1 ``train * epoch``."""
    run_dir = os.path.join(root, f"{loss}-k{k}-{noise}-{seed}-{lr}")
    os.makedirs(run_dir)
    cfg = Config(loss=loss, k=k, seed=seed, noise=noise, lr=lr, epochs=epochs, model="small-cnn")
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    history = []
    for e in range(1, epochs + 1):
        val = 0.1 * e if e < epochs else 0.05  # best validation: the epoch before the last
        record = {"epoch": e, "lr": lr, "train_loss": 1.0 / e, "train_top1": train * e / 10,
                  "train_top5": min(1.0, 3 * train * e / 10), "epoch_seconds": 1.0}  # fmt: skip
        for j in EVAL_KS:
            record[f"val_top{j}"] = val + j / 100 + lr / 10
            record[f"test_top{j}"] = base + j / 100 + e / 1000 + seed / 100
        history.append(record)
    write_metrics(run_dir, history)
    return run_dir


@pytest.fixture
def captured(monkeypatch):
    """The figures the report draws (name of the plotting function -> figure)."""
    figures = []
    original = plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or original(fig))
    return figures


def _curves(axes) -> dict:
    """Curve label -> its line in a panel (plain lines and error-bar plots)."""
    found = {x.get_label(): x for x in axes.lines if not x.get_label().startswith("_")}
    return found | {c.get_label(): c.lines[0] for c in axes.containers}


def _styles(fig) -> dict[str, tuple]:
    """Curve label -> (colour, marker) over the figure's first panel."""
    return {name: (x.get_color(), x.get_marker()) for name, x in _curves(fig.axes[0]).items()}


def test_k_study_table_and_curves(tmp_path, captured):
    root = str(tmp_path / "runs")
    for seed in (0, 1):
        fake_run(root, "ce", seed)
        for k in (1, 2, 5, 10):
            fake_run(root, "smooth-svm", seed, k=k, base=0.4 + k / 100)
    result = write_report([root], str(tmp_path / "report"))
    table = open(result["files"]["topk_table"]).read()
    assert table.index("final epoch") < table.index("best validation top-k")
    lines = [x for x in table.splitlines() if x.startswith("| 0 |")]
    order = [x.split(" | ")[1] for x in lines[:5]]
    assert order == ["CE", *(f"L_{{{k},1}} (alpha=1)" for k in (1, 2, 5, 10))]
    # final epoch 3: CE test top-k = 0.5 + k/100 + 0.003 + seed/100 -> mean over seeds 0, 1
    cells = lines[0].split(" | ")
    assert cells[3:5] == ["51.8 ± 0.7", "52.8 ± 0.7"] and cells[-1] == "60.8 ± 0.7 |"
    # best validation top-k: epoch 2 for every k (test: + 0.002 instead of + 0.003)
    assert lines[5].split(" | ")[3] == "51.7 ± 0.7"
    assert os.path.basename(result["files"]["topk_plot"]) == "accuracy_vs_k.png"
    with open(result["files"]["topk_plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    figure = next(f for f in captured if "evaluation k" in f.axes[0].get_xlabel())
    styles = _styles(figure)
    assert len(styles) == 5 and len(set(styles.values())) == 5
    assert len({c for c, _ in styles.values()}) == 5 and len({m for _, m in styles.values()}) == 5
    curve = _curves(figure.axes[0])["CE"]
    assert list(curve.get_xdata()) == list(EVAL_KS)
    assert list(curve.get_ydata()) == pytest.approx([50.8 + k for k in EVAL_KS])


def test_no_k_table_for_runs_recorded_with_top1_and_top5_only(tmp_path):
    run_dir = fake_run(str(tmp_path / "runs"), "ce")
    records = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    extra = {f"{s}_top{k}" for s in ("val", "test") for k in EVAL_KS if k not in (1, 5)}
    old = [{k: v for k, v in r.items() if k not in extra} for r in records]
    write_metrics(run_dir, old)
    result = write_report([run_dir], str(tmp_path / "report"))
    assert "topk_table" not in result["files"] and result["rows"][0]["n"] == 1


def test_training_accuracy_of_the_selected_runs_per_loss(tmp_path, captured):
    root = str(tmp_path / "runs")
    losses = ("hard-svm", "hinge-alpha", "hinge-beta", "trunc-entropy")
    for index, loss in enumerate(losses):
        for seed in (0, 1):
            for lr in (0.03, 0.1):  # the grid: lr 0.1 has the better validation top-5
                fake_run(root, loss, seed, lr=lr, train=0.1 * (index + 1) + lr)
    result = write_report([root], str(tmp_path / "report"))
    assert os.path.basename(result["files"]["training_accuracy_plot"]) == "training_accuracy.png"
    figure = next(f for f in captured if "training top-1" in f.axes[0].get_ylabel())
    styles = _styles(figure)
    assert sorted(styles) == sorted(f"{loss} (k=5)" for loss in losses)
    assert len({c for c, _ in styles.values()}) == 4 and len({m for _, m in styles.values()}) == 4
    curve = _curves(figure.axes[0])["hinge-beta (k=5)"]
    assert list(curve.get_xdata()) == [1, 2, 3]
    # the selected lr 0.1 of hinge-beta: training top-1 = (0.3 + 0.1) * epoch / 10, in %
    assert list(curve.get_ydata()) == pytest.approx([4.0, 8.0, 12.0])
    top5 = _curves(figure.axes[1])["hinge-beta (k=5)"]
    assert list(top5.get_ydata()) == pytest.approx([12.0, 24.0, 36.0])
