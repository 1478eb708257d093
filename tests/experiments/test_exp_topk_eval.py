"""Evaluation records top-1 ... top-10 (#22's k study), checked against torchmetrics, and a run
recorded before (top-1/top-5 only) still resumes and reports."""

import json
import os

import pytest
import torch
import yaml
from torchmetrics.classification import MulticlassAccuracy

from smoothtopk.experiments.checkpoint import atomic_torch_save, load_checkpoint
from smoothtopk.experiments.config import resolve
from smoothtopk.experiments.datasets import build_data
from smoothtopk.experiments.models import build_model
from smoothtopk.experiments.records import EVAL_KS, read_config, read_metrics
from smoothtopk.experiments.report.write import write_report
from smoothtopk.experiments.rundir import resume_config
from smoothtopk.experiments.train import evaluate, fit, prepare

FAST = {"epochs": 1, "milestones": [1], "subset": "1000", "val_size": 200, "progress": False}


def _reference(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    metric = MulticlassAccuracy(num_classes=scores.shape[1], top_k=k, average="micro")
    return float(metric(scores, labels))


def test_evaluate_gives_every_k_as_torchmetrics_does():
    torch.manual_seed(0)
    x, y = torch.randn(300, 8), torch.randint(0, 20, (300,))
    model = torch.nn.Linear(8, 20)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    result = evaluate(model, loader, torch.device("cpu"), EVAL_KS)
    scores = model(x).detach()
    assert sorted(result["topk"]) == list(EVAL_KS)
    for k in EVAL_KS:
        assert result["topk"][k] == pytest.approx(_reference(scores, y, k), abs=1e-6), k
    assert (result["top1"], result["top5"]) == (result["topk"][1], result["topk"][5])
    assert result["correct"] == [result["top1"] * 300, result["top5"] * 300]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "ce"
    cfg = resolve("demo", None, {**FAST, "loss": "ce", "noise": 0.2})
    fit(prepare(cfg, str(run_dir)))
    return run_dir, cfg


def test_each_epoch_records_top1_to_top10_of_the_model_it_saved(short_run):
    run_dir, cfg = short_run
    record = read_metrics(str(run_dir))[-1]
    data = build_data("embedded", seed=cfg.data_seed, val_size=200, subset="1000")
    net = build_model(cfg.model, 100)
    net.load_state_dict(load_checkpoint(str(run_dir / "last.pt"))["model"])
    net.eval()
    images = torch.stack([data.test[i][0] for i in range(len(data.test))])
    labels = torch.tensor([data.test[i][1] for i in range(len(data.test))])
    with torch.no_grad():
        scores = net(images)
    for k in EVAL_KS:
        assert record[f"test_top{k}"] == pytest.approx(_reference(scores, labels, k), abs=1e-6)
    tops = [record[f"val_top{k}"] for k in EVAL_KS]
    assert tops == sorted(tops) and len({f"val_top{k}" for k in EVAL_KS} & set(record)) == 10
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"test_top{k}" for k in EVAL_KS} <= set(header)


def _as_recorded_before(run_dir) -> None:
    """Strip what this change added, so that the run reads as one recorded before it: the
    top-k fields beside top-1/top-5 (metrics and checkpoint) and the look-alike group size."""
    extra = {f"{s}_top{k}" for s in ("val", "test") for k in EVAL_KS if k not in (1, 5)}
    last = load_checkpoint(str(run_dir / "last.pt"))
    last["history"] = [{k: v for k, v in r.items() if k not in extra} for r in last["history"]]
    atomic_torch_save(str(run_dir / "last.pt"), last)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines = [{k: v for k, v in r.items() if k not in extra} for r in lines]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved.pop("lookalike_group_size", None)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    os.unlink(run_dir / "results.json")


def test_a_run_recorded_before_resumes_and_reports(tmp_path):
    run_dir = tmp_path / "old"
    fit(prepare(resolve("demo", None, {**FAST, "loss": "smooth-svm"}), str(run_dir)))
    _as_recorded_before(run_dir)
    cfg = resume_config(read_config(str(run_dir)), {"epochs": 2})
    fit(prepare(cfg, str(run_dir), resume=True))
    old, new = read_metrics(str(run_dir))
    assert "test_top10" not in old and "test_top10" in new and old["epoch"] == 1
    result = write_report([str(run_dir)], str(tmp_path / "report"))
    assert result["rows"][0]["n"] == 1  # the existing table reads both epochs
    topk = open(result["files"]["topk_table"]).read()
    assert "| 0 | L_{5,1} (alpha=1) | 1 |" in topk  # the k table: its epoch with top-k
