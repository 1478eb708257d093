"""Run archives (#22: "keep the run records needed to re-select"): ``smoothtopk report RUNS
--archive FILE.runs.jsonl.gz`` keeps what a report reads of every run in one small file, and
``smoothtopk report FILE.runs.jsonl.gz`` gives the same tables and selections as the run
directories did; bad names and bad files are one-line errors with nothing written."""

import gzip
import json
import os

import pytest
import yaml

from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import Config, from_saved
from smoothtopk.experiments.records import EVAL_KS, read_archive, write_metrics
from smoothtopk.experiments.report.write import write_report


def fake_run(root, loss, seed, lr, noise):
    """A finished run of 3 epochs whose accuracies depend on every argument (the selection
    has something to choose), with an environment record and a noise summary."""
    run_dir = os.path.join(root, f"{loss}-{noise}-{seed}-{lr}")
    os.makedirs(run_dir)
    cfg = Config(loss=loss, seed=seed, noise=noise, lr=lr, epochs=3, model="small-cnn")
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    with open(os.path.join(run_dir, "env.json"), "w") as f:
        json.dump({"cpu_model": "Test CPU", "arch": "x86_64", "torch_threads": 1}, f)
    with open(os.path.join(run_dir, "noise.json"), "w") as f:
        json.dump({"effective_flip_rate": noise * 0.9}, f)
    shift = _shift(loss, seed, lr)
    history = []
    for e in range(1, 4):
        record = {"epoch": e, "lr": lr, "train_loss": 1.0 / (e + shift), "train_top1": 0.1 * e,
                  "train_top5": 0.3 * e, "epoch_seconds": 1.0 + shift}  # fmt: skip
        for j in EVAL_KS:
            record[f"val_top{j}"] = 0.1 * e + j / 50 + shift - noise / 3
            record[f"test_top{j}"] = 0.2 + j / 50 + e / 100 + shift / 2 - noise / 4
        history.append(record)
    write_metrics(run_dir, history)
    return run_dir


def _shift(loss, seed, lr) -> float:
    return (seed * 7 + round(lr * 100) * 3 + len(loss)) % 11 / 100


@pytest.fixture
def runs(tmp_path):
    root = str(tmp_path / "runs")
    for loss in ("ce", "smooth-svm"):
        for noise in (0.0, 0.4):
            for seed in (0, 1, 2):
                for lr in (0.03, 0.1):
                    fake_run(root, loss, seed, lr, noise)
    return root


def _files(report_dir) -> dict:
    names = ("results.md", "selection.md", "topk.md", "selection_candidates.csv")
    return {name: open(os.path.join(report_dir, name)).read() for name in names}


def test_the_archive_reports_as_the_run_directories(runs, tmp_path, capsys):
    archive = str(tmp_path / "study.runs.jsonl.gz")
    assert main(["report", runs, "--out", str(tmp_path / "from-dirs"), "--archive", archive]) == 0
    assert f"wrote {archive}" in capsys.readouterr().out
    assert main(["report", archive]) == 0  # default: study-report beside the archive
    from_dirs, from_archive = _files(tmp_path / "from-dirs"), _files(tmp_path / "study-report")
    for name in ("results.md", "selection.md", "topk.md"):
        assert from_archive[name] == from_dirs[name], name
    # the candidates name their runs: the archive's runs as FILE:NAME
    assert from_archive["selection_candidates.csv"].count(f"{archive}:") == 24
    assert "Test CPU" in from_archive["results.md"]  # the machines' note survives


def test_the_archive_holds_each_run_once_and_is_deterministic(runs, tmp_path):
    first, second = str(tmp_path / "a.runs.jsonl.gz"), str(tmp_path / "b.runs.jsonl.gz")
    assert main(["report", runs, "--out", str(tmp_path / "r1"), "--archive", first]) == 0
    assert main(["report", first, "--out", str(tmp_path / "r2"), "--archive", second]) == 0
    assert open(first, "rb").read() == open(second, "rb").read()  # re-archiving is the identity
    entries = read_archive(first)
    assert len(entries) == len({e["name"] for e in entries}) == 24
    saved = yaml.safe_load(open(os.path.join(runs, "ce-0.4-1-0.1", "config.yaml")))
    entry = next(e for e in entries if e["name"] == "ce-0.4-1-0.1")
    assert from_saved(entry["config"]) == from_saved(saved)
    assert entry["noise"] == {"effective_flip_rate": pytest.approx(0.36)}
    want = 0.1 * 3 + 5 / 50 + _shift("ce", 1, 0.1) - 0.4 / 3  # the record, to 6 decimals
    assert entry["metrics"][2]["val_top5"] == round(want, 6) != want


def test_write_report_reads_archives_and_directories_together(runs, tmp_path):
    archive = str(tmp_path / "part.runs.jsonl.gz")
    ce_runs = [os.path.join(runs, d) for d in sorted(os.listdir(runs)) if d.startswith("ce-")]
    assert main(["report", *ce_runs, "--out", str(tmp_path / "ce"), "--archive", archive]) == 0
    smooth = [os.path.join(runs, d) for d in sorted(os.listdir(runs)) if d.startswith("smooth")]
    mixed = write_report([archive, *smooth], str(tmp_path / "mixed"))
    whole = write_report([runs], str(tmp_path / "whole"))
    assert mixed["selection_table"] == whole["selection_table"]


def _assert_one_line_error(capsys, argv, pattern):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and pattern in err[0], err


def test_bad_archive_names_and_files(runs, tmp_path, capsys):
    out = str(tmp_path / "report")
    wrong = ["report", runs, "--out", out, "--archive", str(tmp_path / "runs.json")]
    _assert_one_line_error(capsys, wrong, "must end in .runs.jsonl.gz")
    assert not os.path.exists(out)  # nothing written
    broken = tmp_path / "broken.runs.jsonl.gz"
    broken.write_bytes(b"not gzip")
    _assert_one_line_error(capsys, ["report", str(broken), "--out", out], "is not a run archive")
    bad_line = tmp_path / "line.runs.jsonl.gz"
    bad_line.write_bytes(gzip.compress(b'{"name": "x"}\n'))
    _assert_one_line_error(capsys, ["report", str(bad_line), "--out", out], "line 1 is not a run")
    assert not os.path.exists(out)
