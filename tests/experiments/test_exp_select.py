"""Per-loss selection on clean validation (``smoothtopk sweep --grid``, the ``noise-select`` and
``subsets-select`` presets): the choice follows validation top-5 only, the report gives the test
accuracy of the chosen runs and the paired difference to cross-entropy."""

import csv
import json
import os

import pytest
import torch
import yaml

from smoothtopk.experiments import sweep
from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import Config, resolve
from smoothtopk.experiments.datasets import build_data, embedded
from smoothtopk.experiments.records import write_metrics
from smoothtopk.experiments.report.load import load_run
from smoothtopk.experiments.report.selection import select_runs
from smoothtopk.experiments.report.write import write_report
from smoothtopk.experiments.train import prepare

TINY = ["--epochs", "1", "--milestones", "--val-size", "100", "--batch-size", "50",
        "--no-progress"]  # fmt: skip


def fake_run(root, loss, noise, seed, val5, test5, **options):
    """A finished run directory whose epochs have validation top-5 ``val5`` and test top-5
    ``test5`` (top-1: half of them)."""
    cfg = Config(loss=loss, noise=noise, seed=seed, epochs=len(val5), model="small-cnn", **options)
    tag = "-".join(f"{k}{v:g}" for k, v in sorted(options.items()))
    run_dir = os.path.join(root, f"{loss}-{noise:g}-{seed}-{tag}")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    history = [
        {"epoch": e, "lr": cfg.lr, "train_loss": 1.0, "train_top1": 0.1, "train_top5": 0.3,
         "val_top1": v / 2, "val_top5": v, "test_top1": t / 2, "test_top5": t,
         "epoch_seconds": 1.0}
        for e, (v, t) in enumerate(zip(val5, test5, strict=True), start=1)
    ]  # fmt: skip
    write_metrics(run_dir, history)
    return run_dir


# For each (loss, noise, seed): the candidates as {options: (val top-5 per epoch, test top-5)}.
# Validation prefers the first candidate, test the second, at every cell.
CELLS = {
    ("ce", 0.0, 0): {(("lr", 0.03),): ([0.80, 0.82], [0.50, 0.51]),
                     (("lr", 0.3),): ([0.79, 0.81], [0.90, 0.91])},
    ("ce", 0.0, 1): {(("lr", 0.3),): ([0.85, 0.84], [0.55, 0.95]),
                     (("lr", 0.03),): ([0.70, 0.83], [0.99, 0.99])},
    ("smooth-svm", 0.0, 0): {(("tau", 1.0),): ([0.90, 0.70], [0.60, 0.99]),
                             (("tau", 10.0),): ([0.89, 0.89], [0.95, 0.95])},
    ("smooth-svm", 0.0, 1): {(("tau", 10.0),): ([0.60, 0.93], [0.40, 0.52]),
                             (("tau", 0.1),): ([0.92, 0.10], [0.97, 0.97])},
}  # fmt: skip


def _write_cells(root, cells=CELLS, swap_test=False):
    """The runs of ``cells``; ``swap_test`` gives every candidate another one's test curve."""
    expected = {}
    for (loss, noise, seed), candidates in cells.items():
        items = list(candidates.items())
        tests = [t for _, (_, t) in items]
        if swap_test:
            tests = tests[1:] + tests[:1]
        for i, ((options, (val5, _)), test5) in enumerate(zip(items, tests, strict=True)):
            path = fake_run(root, loss, noise, seed, val5, test5, **dict(options))
            if i == 0:  # validation's choice, at its best validation epoch
                epoch = max(range(len(val5)), key=lambda e: (val5[e], -e))
                expected[(loss, seed)] = (path, test5[epoch])
    return expected


def test_selection_follows_validation_and_test_never_chooses(tmp_path):
    expected = _write_cells(str(tmp_path / "a"))
    result = write_report([str(tmp_path / "a")], str(tmp_path / "ra"), select=True)
    rows = {r["loss"]: r for r in result["selection_rows"]}
    assert set(rows) == {"ce", "smooth-svm (k=5)"}
    for loss, group in (("ce", "ce"), ("smooth-svm", "smooth-svm (k=5)")):
        picked = [expected[(loss, s)] for s in (0, 1)]
        assert rows[group]["runs"] == ";".join(p for p, _ in picked)
        tests = [100 * t for _, t in picked]
        assert rows[group]["test_top5"] == pytest.approx(sum(tests) / 2)
        assert rows[group]["test_top5_std"] == pytest.approx(abs(tests[0] - tests[1]) / 2**0.5)
    assert rows["ce"]["selected"] == "seed 0: lr=0.03; seed 1: lr=0.3"
    assert rows["smooth-svm (k=5)"]["selected"] == "seed 0: tau=1; seed 1: tau=10"
    # paired difference, seed by seed, of the validation choices' test top-5
    diffs = [100 * (expected[("smooth-svm", s)][1] - expected[("ce", s)][1]) for s in (0, 1)]
    assert rows["smooth-svm (k=5)"]["diff_test_top5"] == pytest.approx(sum(diffs) / 2)
    assert rows["ce"]["diff_test_top5"] is None

    # the same validation curves with the test curves swapped: the same choices
    _write_cells(str(tmp_path / "b"), swap_test=True)
    swapped = write_report([str(tmp_path / "b")], str(tmp_path / "rb"), select=True)
    names = [[os.path.basename(p) for p in r["runs"].split(";")] for r in result["selection_rows"]]
    again = [[os.path.basename(p) for p in r["runs"].split(";")] for r in swapped["selection_rows"]]
    assert names == again
    assert [r["test_top5"] for r in swapped["selection_rows"]] != [
        r["test_top5"] for r in result["selection_rows"]
    ]


def test_selection_files_and_every_candidate_listed(tmp_path):
    expected = _write_cells(str(tmp_path / "runs"))
    result = write_report([str(tmp_path / "runs")], str(tmp_path / "report"))  # auto: a grid
    files = result["files"]
    table = open(files["selection_table"]).read()
    assert table == result["selection_table"]
    assert table.splitlines()[0] == "## Selected by validation top-5"
    assert table.splitlines()[2].startswith("| noise | loss | selected (per seed) | n |")
    assert "## Selected by validation top-1" in table
    assert "| 0 | smooth-svm (k=5) | seed 0: tau=1; seed 1: tau=10 | 2 |" in table
    with open(files["selection_candidates"]) as f:
        candidates = list(csv.DictReader(f))
    assert len(candidates) == 8
    chosen = sorted(c["run"] for c in candidates if c["selected"] == "True")
    assert chosen == sorted(p for p, _ in expected.values())
    with open(files["selection_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["selected_by"], r["loss"]) for r in rows] == [
        ("val_top5", "ce"), ("val_top5", "smooth-svm (k=5)"),
        ("val_top1", "ce"), ("val_top1", "smooth-svm (k=5)"),
    ]  # fmt: skip
    with open(files["selection_plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the results table keeps the two learning rates of CE apart instead of averaging them
    assert "CE [lr=0.03] top-1" in result["table"] and "CE [lr=0.3] top-1" in result["table"]


def test_selection_ties_go_to_validation_top1_then_the_smaller_options(tmp_path):
    a = fake_run(str(tmp_path), "ce", 0.0, 0, [0.8], [0.1], lr=0.3)
    b = fake_run(str(tmp_path), "ce", 0.0, 0, [0.8], [0.9], lr=0.03)
    (picked,) = select_runs([load_run(a), load_run(b)]).values()
    assert picked.path == b
    with open(os.path.join(a, "metrics.jsonl")) as f:
        row = json.loads(f.readline())
    row["val_top1"] = 0.5  # a's validation top-1 is now higher: it wins the tie
    write_metrics(a, [row])
    (picked,) = select_runs([load_run(a), load_run(b)]).values()
    assert picked.path == a


def _results(out):
    runs = {}
    for name in os.listdir(out):
        path = os.path.join(out, name, "results.json")
        if os.path.isfile(path):
            with open(path) as f:
                runs[os.path.join(out, name)] = json.load(f)
    return runs


def _selection_csv(out, by="val_top5"):
    with open(os.path.join(out, "report", "selection.csv")) as f:
        return [r for r in csv.DictReader(f) if r["selected_by"] == by]


def _validation_choice(results, **where):
    """The run of ``results`` matching ``where`` with the best validation top-5 (then top-1)."""
    mine = {p: r for p, r in results.items() if all(r[k] == v for k, v in where.items())}
    assert len(mine) > 1
    return max(sorted(mine), key=lambda p: (mine[p]["val_top5"], mine[p]["val_top1"]))


def test_sweep_grid_cli_trains_the_grid_and_reports_the_selection(tmp_path, capsys):
    out = str(tmp_path / "sweep")
    args = ["sweep", "--out", out, "--loss", "ce,smooth-svm", "--grid", "smooth-svm:tau=0.1,10",
            "--grid", "ce:lr=0.03,0.3", "--noise", "0.5", "--seed", "0,1", "--subset", "200",
            *TINY]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted(
        ["report", "sweep.json", ".lock"]
        + [f"ce-noise0.5-200-seed{s}-lr{lr}" for s in (0, 1) for lr in ("0.03", "0.3")]
        + [f"smooth-svm-k5-tau{t}-alpha1-noise0.5-200-seed{s}" for s in (0, 1) for t in (0.1, 10)]
    )
    table = open(os.path.join(out, "report", "selection.md")).read()
    assert table in printed
    rows, results = _selection_csv(out), _results(out)
    assert [r["loss"] for r in rows] == ["ce", "smooth-svm (k=5)"]
    for row, loss in zip(rows, ("ce", "smooth-svm"), strict=True):
        picked = row["runs"].split(";")
        assert picked == [_validation_choice(results, loss=loss, seed=s) for s in (0, 1)]
        tests = [100 * results[p]["test_top1"] for p in picked]
        assert float(row["test_top1"]) == pytest.approx(sum(tests) / 2, abs=0.006)
    ce_runs, svm_runs = (r["runs"].split(";") for r in rows)
    diffs = [100 * (results[s]["test_top5"] - results[c]["test_top5"])
             for c, s in zip(ce_runs, svm_runs, strict=True)]  # fmt: skip
    assert float(rows[1]["diff_test_top5"]) == pytest.approx(sum(diffs) / 2, abs=0.006)


def test_subsets_preset_runs_small_with_the_same_selection(tmp_path):
    out = str(tmp_path / "subsets")
    args = ["sweep", "--preset", "subsets-select", "--out", out, "--subset", "200,400",
            "--seed", "0", "--grid", "ce:lr=0.1,0.3", "--grid", "smooth-svm:tau=1;lr=0.1",
            *TINY]  # fmt: skip
    assert main(args) == 0
    rows, results = _selection_csv(out), _results(out)
    assert [(r["subset"], r["loss"], r["candidates"]) for r in rows] == [
        ("200", "ce", "2"), ("200", "smooth-svm (k=5)", "1"),
        ("400", "ce", "2"), ("400", "smooth-svm (k=5)", "1"),
    ]  # fmt: skip
    assert os.path.isfile(os.path.join(out, "report", "selection_vs_subset.png"))
    assert {r["noise"] for r in results.values()} == {0.0} and len(results) == 6
    for row in rows[0], rows[2]:
        assert row["runs"] == _validation_choice(results, loss="ce", subset=row["subset"])


def test_presets_size_and_subsets_fit_the_embedded_data():
    for name, axis, values in (("noise-select", "noise", sweep.NOISE_LEVELS),
                               ("subsets-select", "subset", sweep.SUBSETS)):  # fmt: skip
        named = sweep.expand_named(name)
        assert len(named) == 5 * 3 * (3 + 9)
        assert {getattr(c, axis) for c, _ in named} == set(values)
        assert {(c.loss, c.tau, c.lr) for c, _ in named if c.loss == "smooth-svm"} == {
            ("smooth-svm", t, lr) for t in (0.1, 1.0, 10.0) for lr in (0.03, 0.1, 0.3)
        }
        assert len({n for _, n in named}) == len(named)
    vals = []
    for subset in sweep.SUBSETS:
        data = build_data("embedded", subset=subset)
        counts = torch.bincount(data.train.targets, minlength=100)
        if subset != "all":
            assert counts.tolist() == [int(subset) // 100] * 100
        vals.append(data.val.indices)
    assert all(torch.equal(v, vals[0]) for v in vals)  # one validation set for every subset


def test_validation_labels_stay_clean_under_label_noise(tmp_path):
    cfg = resolve(None, None, {"noise": 0.8, "progress": False})
    prepared = prepare(cfg, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")
    clean = embedded.generate(cfg.data_seed).train_labels
    train, val = prepared.data.train, prepared.data.val
    assert (prepared.noisy.labels != clean[train.indices]).float().mean() > 0.5
    assert torch.equal(val.targets, clean[val.indices])
    assert [val[i][1] for i in range(len(val))] == clean[val.indices].tolist()


def test_yaml_grid_is_the_cli_grid():
    grid = sweep.parse_grid(["smooth-svm:tau=0.1,1", "ce:lr=0.05,0.1"])
    cli = sweep.expand_named(None, None, {"loss": ["ce", "smooth-svm"]}, {}, grid)
    text = {"loss": ["ce", "smooth-svm"],
            "grid": {"ce": {"lr": [0.05, 0.1]}, "smooth-svm": {"tau": [0.1, 1]}}}  # fmt: skip
    assert sweep.expand_named(None, text) == cli
    assert [n for _, n in cli][:2] == ["ce-noise0-all-seed0-lr0.05", "ce-noise0-all-seed0-lr0.1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "smooth-svm"], "--grid needs LOSS:OPTION=V,V"),
        (["--grid", "ce:tau=1"], "'tau' is not an option of ce"),
        (["--grid", "smooth-svm:k=3"], "'k' is not an option of smooth-svm"),
        (["--grid", "nope:lr=1"], "unknown loss 'nope'"),
        (["--grid", "ce:lr=0.1", "--grid", "ce:lr=0.2"], "gives ce twice"),
        (["--grid", "ce:lr=0.1;lr=0.2"], "lr is given twice"),
        (["--grid", "ce:lr=x"], "bad value"),
        (["--grid", "ce:lr"], "expected OPTION=V,V"),
        (["--grid", "ce:lr=-1"], "lr must be > 0"),
        (["--loss", "ce", "--grid", "smooth-svm:tau=1"], "does not train"),
        (["--loss", "smooth-svm", "--tau", "1,2", "--grid", "smooth-svm:tau=1"], "give it once"),
        (["--lr", "0.1", "--grid", "ce:lr=0.2"], "--lr is fixed"),
        (["--preset", "noise-select", "--tau", "1,2"], "give it once"),
    ],
)
def test_grid_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = str(tmp_path / "sweep")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--out", out, *args, *TINY])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothtopk: error: ") and message in err and err.count("\n") == 1
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "grid, message",
    [
        ([1, 2], "must map losses"),
        ({"ce": [0.1]}, "ce must map options"),
        ({"ce": {"lr": []}}, "empty"),
        ({"ce": {"lr": "fast"}}, "'lr' must be of type"),
        ({"hinge-alpha": {"tau": [1]}}, "'tau' is not an option of hinge-alpha"),
    ],
)
def test_yaml_grid_bad_input(tmp_path, capsys, grid, message):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"loss": ["ce", "hinge-alpha"], "grid": grid}))
    out = str(tmp_path / "sweep")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--out", out, "--config", str(path), *TINY])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not os.path.exists(out)


def test_report_select_flag_pairs_single_configurations_with_ce(tmp_path, capsys):
    root = str(tmp_path / "runs")
    for seed, (ce5, svm5) in enumerate(((0.50, 0.70), (0.60, 0.65))):
        fake_run(root, "ce", 0.4, seed, [0.8], [ce5])
        fake_run(root, "smooth-svm", 0.4, seed, [0.8], [svm5])
    assert main(["report", root, "--out", str(tmp_path / "plain")]) == 0
    assert not os.path.exists(tmp_path / "plain" / "selection.md")  # one configuration each
    assert main(["report", root, "--out", str(tmp_path / "paired"), "--select"]) == 0
    assert "Δ top-5 vs CE" in capsys.readouterr().out
    with open(tmp_path / "paired" / "selection.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["selected_by"] == "val_top5"]
    # per seed: +20 and +5 points -> 12.5 ± 10.61; 95 % interval 12.5 ± 12.706 * 10.61 / √2
    assert [r["diff_test_top5"] for r in rows] == ["", "12.50"]
    assert rows[1]["diff_test_top5_std"] == "10.61"
    assert rows[1]["diff_test_top5_seeds"] == "20.00;5.00"
    table = (tmp_path / "paired" / "selection.md").read_text()
    assert (rows[1]["diff_test_top5_low"], rows[1]["diff_test_top5_high"]) == ("-82.79", "107.79")
    assert rows[1]["diff_test_top5_verdict"] == "within seed noise"
    assert "| +12.5 [-82.8, +107.8] within seed noise (+20.0, +5.0) |" in table
