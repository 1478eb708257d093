"""A short end-to-end run on the embedded data, resume, and the files a run leaves."""

import csv
import json
import os
import platform

import pytest
import torch

from smoothtopk.experiments.checkpoint import load_checkpoint
from smoothtopk.experiments.config import resolve
from smoothtopk.experiments.datasets import embedded
from smoothtopk.experiments.records import read_config
from smoothtopk.experiments.rundir import resume_config
from smoothtopk.experiments.train import fit, prepare

# a balanced 10-per-class subset of the training split keeps the test fast
FAST = {"epochs": 2, "milestones": [1], "subset": "1000", "val_size": 200, "progress": False}


def _train(run_dir, resume=False, **options):
    cfg = resolve("demo", None, {**FAST, **options})
    if resume and os.path.isdir(run_dir):
        cfg = resume_config(read_config(run_dir), {"epochs": options.get("epochs", 2)})
    return fit(prepare(cfg, str(run_dir), resume=resume))


@pytest.fixture(scope="module")
def smooth_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smooth"
    summary = _train(run_dir, loss="smooth-svm", noise=0.4)
    return run_dir, summary


def test_embedded_data_is_seeded_and_shaped():
    a = embedded.generate(0)
    assert a.train_images.shape == (5000, 3, 16, 16) and a.test_images.shape == (2000, 3, 16, 16)
    assert torch.bincount(a.train_labels).tolist() == [50] * 100
    embedded._generate.cache_clear()
    b = embedded.generate(0)
    assert torch.equal(a.train_images, b.train_images)
    assert not torch.equal(embedded.generate(1).test_images, a.test_images)
    # same-group classes look more alike than classes of different groups
    means = torch.stack([a.train_images[a.train_labels == c].mean(0).flatten() for c in range(100)])
    dist = torch.cdist(means, means)
    same = a.groups[:, None] == a.groups[None, :]
    off = ~torch.eye(100, dtype=torch.bool)
    assert dist[same & off].mean() < 0.8 * dist[~same].mean()


def test_end_to_end_files_and_metrics(smooth_run):
    run_dir, summary = smooth_run
    names = set(os.listdir(run_dir))
    expected = {"config.yaml", "env.json", "noise.pt", "noise.json", "metrics.csv"}
    expected |= {"metrics.jsonl", "last.pt", "best.pt", "results.json"}
    assert expected <= names
    assert not [n for n in names if n.startswith(".tmp-")]
    assert summary["status"] == "complete" and summary["epochs_done"] == 2
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["lr"] for x in lines] == pytest.approx([0.1, 0.01])
    for x in lines:
        assert x["val_total"] == 200 and x["test_total"] == 2000 and x["train_total"] == 1000
        assert x["test_top5"] == x["test_correct"][1] / 2000
        assert 0 <= x["test_top1"] <= x["test_top5"] <= 1
    best = max(lines, key=lambda x: (x["val_top5"], -x["epoch"]))
    assert summary["best_epoch"] == best["epoch"]
    assert summary["test_top5"] == best["test_top5"]
    # the smooth loss learned something in two epochs (chance: 5% top-5), although 40% of the
    # training labels went to consecutive-block classes, which are unrelated to the true ones
    assert lines[-1]["test_top5"] > 0.08
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch"] == torch.__version__
    # the machine: what can move the last digits of a run (docs/experiments.md)
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["python"] == platform.python_version() and env["arch"] == platform.machine()
    assert env["cpu_model"] and env["cpu_model"] != "unknown"
    cfg = read_config(str(run_dir))
    assert cfg.loss == "smooth-svm" and cfg.noise == 0.4 and cfg.k == 5


def test_noise_saved_with_the_run(smooth_run):
    run_dir, _ = smooth_run
    saved = torch.load(run_dir / "noise.pt", weights_only=True)
    assert torch.equal(saved["flipped"], saved["noisy_labels"] != saved["clean_labels"])
    assert saved["noisy_labels"].numel() == 1000
    summary = json.loads((run_dir / "noise.json").read_text())
    assert summary["effective_flip_rate"] == pytest.approx(0.32, abs=0.05)
    assert summary["expected_flip_rate"] == pytest.approx(0.32)
    assert summary["groups"] == "consecutive"


def test_checkpoints_load_with_weights_only(smooth_run):
    run_dir, summary = smooth_run
    last = load_checkpoint(str(run_dir / "last.pt"))
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert set(last["rng"]) >= {"torch", "python"}
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == summary["best_epoch"]


def test_resume_continues_where_it_stopped(tmp_path, smooth_run):
    reference_dir, _ = smooth_run
    run_dir = tmp_path / "resumed"
    _train(run_dir, loss="smooth-svm", noise=0.4, epochs=1)
    assert len(load_checkpoint(str(run_dir / "last.pt"))["history"]) == 1
    _train(run_dir, resume=True, epochs=2)
    ref = [json.loads(x) for x in (reference_dir / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("train_correct", "val_correct", "test_correct", "train_loss", "lr")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]
    a = torch.load(reference_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_to_change_the_experiment(smooth_run):
    run_dir, _ = smooth_run
    with pytest.raises(ValueError, match="noise"):
        resume_config(read_config(str(run_dir)), {"noise": 0.2})
