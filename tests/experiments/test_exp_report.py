import csv
import json
import os

import pytest
import yaml

from smoothtopk.experiments.config import Config
from smoothtopk.experiments.records import write_metrics
from smoothtopk.experiments.report.write import write_report


def fake_run(root, loss, noise, seed=0, top5=(0.5, 0.7, 0.6), epochs=3, subset="all"):
    run_dir = os.path.join(root, f"{loss}-{noise}-{seed}-{subset}")
    os.makedirs(run_dir)
    cfg = Config(loss=loss, noise=noise, seed=seed, epochs=epochs, subset=subset, model="small-cnn")
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    history = []
    for e, v in enumerate(top5, start=1):
        history.append({"epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "train_top1": 0.1,
                        "train_top5": 0.3, "val_top1": v / 2, "val_top5": v,
                        "test_top1": v / 2 - 0.01 * e, "test_top5": v - 0.01 * e,
                        "epoch_seconds": 1.0})  # fmt: skip
    write_metrics(run_dir, history)
    return run_dir


def test_report_table_csv_and_plots(tmp_path):
    root = str(tmp_path / "runs")
    for noise in (0.0, 0.4):
        fake_run(root, "ce", noise)
        fake_run(root, "smooth-svm", noise, top5=(0.6, 0.8, 0.8))
    out = str(tmp_path / "report")
    result = write_report([root], out)
    table = result["table"]
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| noise | CE top-1 | CE top-5 | L_{5,1} (alpha=1) top-1 | L_{5,1} (alpha=1) top-5 |"
    )
    # best validation top-5: epoch 2 for both (ties keep the earliest): test = v - 0.02
    assert lines[2] == "| 0 | 33.0 | 68.0 | 38.0 | 78.0 |"
    assert lines[3].startswith("| 0.4 |")
    with open(result["files"]["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["best_epoch"] == "2"
    for name in ("accuracy_plot", "curves_plot"):
        with open(result["files"][name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.basename(result["files"]["accuracy_plot"]) == "accuracy_vs_noise.png"
    assert open(os.path.join(out, "results.md")).read() == table


def test_report_averages_seeds_and_marks_unfinished_runs(tmp_path):
    root = str(tmp_path)
    a = fake_run(root, "ce", 0.2, seed=0, top5=(0.5,), epochs=1)
    b = fake_run(root, "ce", 0.2, seed=1, top5=(0.7, 0.6), epochs=5)
    result = write_report([a, b], str(tmp_path / "out"))
    assert "(n=2)" in result["table"] and "not finished" in result["table"]
    row = result["rows"][0]
    assert row["test_top5"] == pytest.approx(100 * ((0.5 - 0.01) + (0.7 - 0.01)) / 2)


def test_report_by_subset(tmp_path):
    root = str(tmp_path)
    for subset in ("128k", "64k", "all"):
        fake_run(root, "ce", 0.0, subset=subset)
    result = write_report([root], str(tmp_path / "out"))
    assert result["axis"] == "subset"
    assert [r["subset"] for r in result["rows"]] == ["64k", "128k", "all"]
    assert result["files"]["accuracy_plot"].endswith("accuracy_vs_subset.png")


def test_report_rejects_non_runs(tmp_path):
    with pytest.raises(ValueError, match="not a smoothtopk run"):
        write_report([str(tmp_path)], str(tmp_path / "out"))


def _write_env(run_dir, **fields):
    env = {"cpu_model": "CPU A", "arch": "x86_64", "cpu_capability": "AVX2", "torch_threads": 1,
           "torch": "2.14.1", "python": "3.11.7", **fields}  # fmt: skip
    with open(os.path.join(run_dir, "env.json"), "w") as f:
        json.dump(env, f)


def test_report_names_the_machine_of_its_runs(tmp_path):
    root = str(tmp_path / "runs")
    for noise in (0.0, 0.4):
        _write_env(fake_run(root, "ce", noise))
    result = write_report([root], str(tmp_path / "report"))
    assert "Machine: CPU A (x86_64), AVX2, 1 thread(s), torch 2.14.1" in result["table"]
    assert "Note" not in result["table"] and len(result["machines"]) == 1


def test_report_says_when_runs_come_from_different_machines(tmp_path):
    root = str(tmp_path / "runs")
    _write_env(fake_run(root, "ce", 0.0))
    _write_env(fake_run(root, "ce", 0.4), cpu_capability="AVX512")
    resumed = fake_run(root, "ce", 0.8)
    _write_env(resumed)
    with open(os.path.join(resumed, "env-resume-1700000000.json"), "w") as f:
        json.dump({"cpu_model": "CPU B", "cpu_capability": "AVX2"}, f)
    fake_run(root, "ce", 0.2)  # an older run: no environment record
    result = write_report([root], str(tmp_path / "report"))
    note = [line for line in result["table"].splitlines() if line.startswith("Note")]
    assert len(note) == 1 and "runs from 3 machines" in note[0], result["table"]
    assert "CPU A (x86_64), AVX2, 1 thread(s), torch 2.14.1, Python 3.11.7 (2 runs)" in note[0]
    assert "AVX512, 1 thread(s)" in note[0] and "CPU B (?)" in note[0]
    assert "1 run unknown" in note[0]
    assert len(result["machines"]) == 3
