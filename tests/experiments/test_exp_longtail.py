"""The long-tailed protocol (``--imbalance-ratio``): CIFAR-100-LT's profile, its seeded class
order, balanced validation and test, the per-class metrics, the sweep axis and CLI errors."""

import csv
import json
import os
from decimal import Decimal, getcontext

import pytest
import torch
import yaml
from exp_data_writers import write_cifar100
from test_exp_cli import assert_one_line_error, run_cli

from smoothtopk.experiments import sweep
from smoothtopk.experiments.checkpoint import load_checkpoint
from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import Config, resolve
from smoothtopk.experiments.datasets import build_data, embedded
from smoothtopk.experiments.datasets.common import (
    class_thirds,
    long_tail_counts,
    long_tail_indices,
    long_tail_order,
)
from smoothtopk.experiments.models import build_model
from smoothtopk.experiments.records import write_metrics
from smoothtopk.experiments.report.write import write_report
from smoothtopk.experiments.rundir import run_name
from smoothtopk.experiments.train import fit, prepare


def exact_profile(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """max(1, floor(n_max R^(-r/(C-1)))) in 50-digit decimal arithmetic."""
    getcontext().prec = 50
    base = Decimal(ratio)
    return [
        max(1, int(Decimal(n_max) * base ** (Decimal(-r) / Decimal(num_classes - 1))))
        for r in range(num_classes)
    ]


def test_profile_is_cifar100_lt():
    # the training-set sizes of CIFAR-100-LT in the literature (Cao et al. 2019 and after)
    assert sum(long_tail_counts(500, 100, 100)) == 10847
    assert sum(long_tail_counts(500, 100, 50)) == 12608
    assert sum(long_tail_counts(500, 100, 10)) == 19573
    assert long_tail_counts(500, 100, 100)[::99] == [500, 5]
    for n_max, ratio in [(39, 10), (39, 100), (45, 3.7), (500, 100), (10, 10), (8, 1000)]:
        assert long_tail_counts(n_max, 100, ratio) == exact_profile(n_max, 100, ratio)
    assert long_tail_counts(7, 100, 1.0) == [7] * 100


@pytest.fixture(scope="module")
def balanced():
    return build_data("embedded")


def test_embedded_counts_follow_the_formula(balanced):
    gen = embedded.generate(0)
    n_max = int(torch.bincount(balanced.train.targets, minlength=100).min())
    for ratio in (10.0, 100.0, 1.0):
        lt = build_data("embedded", imbalance_ratio=ratio)
        counts = torch.bincount(lt.train.targets, minlength=100)
        assert counts[lt.class_order].tolist() == exact_profile(n_max, 100, ratio)
        # a subsample of the balanced training split, with its true labels
        assert set(lt.train.indices.tolist()) <= set(balanced.train.indices.tolist())
        assert torch.equal(lt.train.targets, gen.train_labels[lt.train.indices])
        # validation and test untouched (test: 20 per class)
        assert torch.equal(lt.val.indices, balanced.val.indices)
        assert torch.equal(lt.val.targets, balanced.val.targets)
        assert torch.equal(lt.test.images, balanced.test.images)
        assert torch.bincount(lt.test.targets).tolist() == [20] * 100
    lt10 = build_data("embedded", imbalance_ratio=10.0)
    lt100 = build_data("embedded", imbalance_ratio=100.0)
    assert set(lt100.train.indices.tolist()) < set(lt10.train.indices.tolist())  # nested
    assert torch.equal(lt10.class_order, lt100.class_order)


def test_class_order_is_seeded_and_ignores_the_groups():
    targets = torch.arange(100).repeat(10)
    _, order = long_tail_indices(targets, 100, 10.0, seed=0)
    assert torch.equal(order, long_tail_order(100, 0))
    assert torch.equal(order, long_tail_indices(targets, 100, 10.0, seed=0)[1])
    assert not torch.equal(order, long_tail_indices(targets, 100, 10.0, seed=1)[1])
    assert sorted(order.tolist()) == list(range(100))
    head = order[:34]
    # ordered by look-alike group or by label block, the 34 head classes would span 7 groups
    assert len(set(embedded.superclasses()[head].tolist())) >= 12
    assert len(set((head // 5).tolist())) >= 12


def test_class_thirds_split_by_training_count():
    gen = torch.Generator().manual_seed(3)
    for num in (3, 7, 100):
        counts = torch.randint(1, 6, (num,), generator=gen)  # many ties
        order = torch.randperm(num, generator=gen)
        thirds = class_thirds(counts, order)
        sizes = torch.bincount(thirds, minlength=3).tolist()
        assert sizes == [sum(1 for p in range(num) if p * 3 // num == t) for t in range(3)]
        for a in range(num):
            for b in range(num):
                if thirds[a] < thirds[b]:
                    assert counts[a] >= counts[b]
                    if counts[a] == counts[b]:  # ties follow the class order
                        assert (order == a).nonzero() < (order == b).nonzero()
    assert torch.bincount(class_thirds(torch.ones(100, dtype=torch.int64))).tolist() == [34, 33, 33]


def test_image_folders_and_cifar100(tmp_path, folder_dir):
    root, _ = folder_dir  # 6 classes, 10 training images each
    plain = build_data("folder", root, val_per_class=2)
    lt = build_data("folder", root, val_per_class=2, imbalance_ratio=4.0)
    assert torch.bincount(lt.train.targets)[lt.class_order].tolist() == exact_profile(8, 6, 4.0)
    assert torch.equal(lt.val.indices, plain.val.indices)
    assert torch.bincount(lt.val.targets).tolist() == [2] * 6
    assert set(lt.train.indices.tolist()) <= set(plain.train.indices.tolist())
    write_cifar100(str(tmp_path / "c"), per_class_train=8)
    plain = build_data("cifar100", str(tmp_path / "c"), val_size=100)
    lt = build_data("cifar100", str(tmp_path / "c"), val_size=100, imbalance_ratio=5.0)
    n_max = int(torch.bincount(plain.train.targets, minlength=100).min())
    assert torch.bincount(lt.train.targets)[lt.class_order].tolist() == exact_profile(
        n_max, 100, 5.0
    )
    assert torch.equal(lt.val.indices, plain.val.indices)
    assert torch.equal(lt.test.targets, plain.test.targets)


@pytest.fixture(scope="module")
def lt_run(tmp_path_factory):
    options = {"epochs": 1, "milestones": [], "subset": "1000", "val_size": 200, "noise": 0.2,
               "progress": False, "imbalance_ratio": 10.0, "loss": "smooth-svm"}  # fmt: skip
    cfg = resolve("demo", None, options)
    run_dir = tmp_path_factory.mktemp("lt") / run_name(cfg)
    prepared = prepare(cfg, str(run_dir))
    return run_dir, fit(prepared), prepared


def _brute_force(run_dir, prepared):
    """Per-class top-5 hits of the saved model on the test set, with torch.topk."""
    net = build_model("small-cnn", 100)
    net.load_state_dict(load_checkpoint(str(run_dir / "last.pt"))["model"])
    net.eval()
    test = prepared.data.test
    with torch.no_grad():
        top = net(test.images).topk(5, dim=1).indices
    hit1 = (top[:, 0] == test.targets).double()
    hit5 = (top == test.targets[:, None]).any(1).double()
    per_class = [torch.zeros(100, dtype=torch.float64).index_add_(0, test.targets, h) / 20
                 for h in (hit1, hit5)]  # fmt: skip
    return per_class


def test_end_to_end_records_macro_and_thirds(lt_run):
    run_dir, summary, prepared = lt_run
    assert "-lt10-" in run_dir.name
    (record,) = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per1, per5 = _brute_force(run_dir, prepared)
    tail = json.loads((run_dir / "long_tail.json").read_text())
    assert record["test_macro_top1"] == pytest.approx(float(per1.mean()), abs=1e-12)
    assert record["test_macro_top5"] == pytest.approx(float(per5.mean()), abs=1e-12)
    assert record["test_top5"] == pytest.approx(float(per5.mean()), abs=1e-12)  # balanced test
    for name in ("head", "medium", "tail"):
        mine = torch.tensor(tail["thirds"][name])
        assert record[f"test_{name}_top5"] == pytest.approx(float(per5[mine].mean()), abs=1e-12)
    assert [len(tail["thirds"][n]) for n in ("head", "medium", "tail")] == [34, 33, 33]
    # the thirds are by training count: the profile of 10 images per class at R = 10
    counts = torch.tensor(tail["train_counts"])
    assert counts[tail["class_order"]].tolist() == exact_profile(10, 100, 10.0)
    assert min(counts[tail["thirds"]["head"]]) >= max(counts[tail["thirds"]["medium"]])
    assert min(counts[tail["thirds"]["medium"]]) >= max(counts[tail["thirds"]["tail"]])
    for key in ("val_macro_top1", "val_macro_top5", "val_head_top5", "val_tail_top5"):
        assert 0 <= record[key] <= 1
    results = json.loads((run_dir / "results.json").read_text())
    assert results["imbalance_ratio"] == 10.0 and results["train_images"] == int(counts.sum())
    for key in ("test_macro_top1", "test_macro_top5", "test_head_top5", "test_tail_top5"):
        assert results[key] == record[key]
    # the label noise acts on the subsampled training labels
    noise = torch.load(run_dir / "noise.pt")
    assert torch.equal(noise["indices"], prepared.data.train.indices)
    assert torch.bincount(noise["clean_labels"], minlength=100).tolist() == tail["train_counts"]


def test_report_shows_the_long_tailed_table(lt_run, tmp_path):
    run_dir, _, _ = lt_run
    result = write_report([str(run_dir)], str(tmp_path / "report"))
    table = (tmp_path / "report" / "long_tail.md").read_text()
    assert "| imbalance R | loss | top-1 | top-5 | macro top-1 | macro top-5 | head top-5" in table
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert f"| {100 * record['test_tail_top5']:.1f} |" in table
    assert "Long-tailed protocol" in result["table"]
    assert result["rows"][0]["dataset"] == "embedded LT10"  # its own data set in the main table


@pytest.mark.parametrize(
    "value, pattern",
    [("0.5", "imbalance_ratio must be a finite number >= 1, got 0.5"),
     ("nan", "imbalance_ratio must be a finite number >= 1, got nan"),
     ("inf", "imbalance_ratio must be a finite number >= 1, got inf"),
     ("ten", "invalid float value: 'ten'")],
)  # fmt: skip
def test_bad_ratio_is_one_line_and_writes_nothing(tmp_path, capsys, value, pattern):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--imbalance-ratio", value)
    assert_one_line_error(code, err, pattern)
    code, _, err = run_cli(capsys, "sweep", "--out", str(out), "--imbalance-ratio", f"10,{value}")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_ratio_in_a_config_file(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("imbalance_ratio: true\n")
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), "--config",
                           str(tmp_path / "c.yaml"))  # fmt: skip
    assert_one_line_error(code, err, "imbalance_ratio")
    assert not (tmp_path / "r").exists()


def test_sweep_axis_plans_one_run_per_ratio(tmp_path):
    assert sweep.parse_list("imbalance_ratio", "10,100") == [10.0, 100.0]
    fixed = {"subset": "1000", "val_size": 200, "epochs": 1, "progress": False}
    axes = {"loss": ["ce", "smooth-svm"], "imbalance_ratio": [10.0, 100.0]}
    configs = sweep.expand(None, {}, axes, fixed)
    names = [run_name(c) for c in configs]
    assert names == ["ce-noise0-1000-lt10-seed0", "ce-noise0-1000-lt100-seed0",
                     "smooth-svm-k5-tau1-alpha1-noise0-1000-lt10-seed0",
                     "smooth-svm-k5-tau1-alpha1-noise0-1000-lt100-seed0"]  # fmt: skip
    out = tmp_path / "sweep"
    runs = sweep.plan(str(out), configs)
    assert [r.status for r in runs] == ["new"] * 4
    assert len(runs[1].prepared.data.train) < len(runs[0].prepared.data.train)
    assert not out.exists() and not os.listdir(tmp_path)


def _fake_lt_run(root, ratio, seed, head, noise=0.0):
    """A finished one-epoch run directory with long-tailed metrics (head top-5 ``head``)."""
    run_dir = os.path.join(root, f"ce-lt{ratio}-seed{seed}-noise{noise}")
    os.makedirs(run_dir)
    cfg = Config(
        loss="ce", seed=seed, epochs=1, imbalance_ratio=ratio, model="small-cnn", noise=noise
    )
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    row = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_top1": 0.1, "train_top5": 0.3,
           "val_top1": 0.2, "val_top5": 0.5, "test_top1": 0.2, "test_top5": 0.5,
           "epoch_seconds": 1.0, "test_macro_top1": 0.2, "test_macro_top5": 0.5,
           "test_head_top5": head, "test_medium_top5": 0.4, "test_tail_top5": 0.1}  # fmt: skip
    write_metrics(run_dir, [row])


def test_report_runs_along_the_imbalance_ratio(tmp_path):
    root = str(tmp_path / "runs")
    for ratio, heads in ((10.0, (0.8, 0.6)), (100.0, (0.9, 0.9))):
        for seed, head in enumerate(heads):
            _fake_lt_run(root, ratio, seed, head)
    result = write_report([root], str(tmp_path / "report"))
    assert result["axis"] == "imbalance_ratio"
    assert [(r["dataset"], r["imbalance_ratio"], r["n"]) for r in result["rows"]] == [
        ("embedded", 10.0, 2), ("embedded", 100.0, 2)
    ]  # fmt: skip
    assert result["table"].splitlines()[0] == "| imbalance_ratio | CE top-1 | CE top-5 |"
    assert os.path.isfile(tmp_path / "report" / "accuracy_vs_imbalance_ratio.png")
    lines = (tmp_path / "report" / "long_tail.md").read_text().splitlines()
    # head top-5 over two seeds: 70 ± 14.1 (sample std of 80, 60) at R = 10, 90 ± 0 at R = 100
    assert lines[2] == ("| 10 | CE | 20.0 ± 0.0 | 50.0 ± 0.0 | 20.0 ± 0.0 | 50.0 ± 0.0 | "
                        "70.0 ± 14.1 | 40.0 ± 0.0 | 10.0 ± 0.0 | 2 |")  # fmt: skip


def test_noise_and_ratio_both_varied_keep_the_ratio_as_data_set(tmp_path):
    root = str(tmp_path / "runs")
    _fake_lt_run(root, 10.0, 0, 0.5)
    _fake_lt_run(root, 100.0, 0, 0.5, noise=0.2)
    result = write_report([root], str(tmp_path / "report"), select=True)
    assert result["axis"] == "noise"
    assert [(r["dataset"], r["noise"]) for r in result["rows"]] == [
        ("embedded LT10", 0.0), ("embedded LT100", 0.2)
    ]  # fmt: skip
    # the selection table names the ratio of each row as its setting
    settings = [(r["setting"], r["noise"]) for r in result["selection_rows"]]
    assert settings == [("imbalance_ratio=10.0", 0.0), ("imbalance_ratio=100.0", 0.2)]


# -- per-loss selection under the long-tailed protocol (the ``longtail-select`` preset) ------


def test_longtail_preset_is_every_long_tailed_loss_on_the_grid():
    named = sweep.expand_named("longtail-select")
    assert len({n for _, n in named}) == len(named)
    configs = [c for c, _ in named]
    assert {c.imbalance_ratio for c in configs} == {10.0, 100.0}
    assert {c.seed for c in configs} == {0, 1, 2} and {c.noise for c in configs} == {0.0}
    per_loss = {loss: {(c.tau, c.lr) for c in configs if c.loss == loss}
                for loss in {c.loss for c in configs}}  # fmt: skip
    assert set(per_loss) == {"ce", "smooth-svm", "ce-logit-adjusted", "smooth-svm-ldam",
                             "smoothed-calibrated-hinge-ldam"}  # fmt: skip
    lrs = {0.03, 0.1, 0.3}
    for loss in ("smooth-svm", "smooth-svm-ldam"):  # tau on powers of ten x the learning rates
        assert per_loss[loss] == {(t, lr) for t in (0.1, 1.0, 10.0) for lr in lrs}
    for loss in ("ce", "ce-logit-adjusted", "smoothed-calibrated-hinge-ldam"):
        assert {lr for _, lr in per_loss[loss]} == lrs and len(per_loss[loss]) == 3
    assert len(configs) == 2 * 3 * (3 + 9 + 3 + 9 + 3)


# (loss, lr, ratio, seed) -> (val top-5, test top-5, test macro top-5, test tail top-5)
LT_CELLS = {
    ("ce", 0.1, 10.0, 0): (0.70, 0.60, 0.61, 0.20), ("ce", 0.3, 10.0, 0): (0.65, 0.90, 0.91, 0.90),
    ("ce", 0.1, 10.0, 1): (0.60, 0.80, 0.81, 0.80), ("ce", 0.3, 10.0, 1): (0.75, 0.50, 0.52, 0.10),
    ("smooth-svm-ldam", 0.1, 10.0, 0): (0.80, 0.70, 0.72, 0.40),
    ("smooth-svm-ldam", 0.3, 10.0, 0): (0.10, 0.99, 0.99, 0.99),
    ("smooth-svm-ldam", 0.1, 10.0, 1): (0.20, 0.99, 0.99, 0.99),
    ("smooth-svm-ldam", 0.3, 10.0, 1): (0.85, 0.60, 0.63, 0.30),
}  # fmt: skip


def _fake_selection_run(root, loss, lr, ratio, seed, val5, test5, macro5, tail5):
    run_dir = os.path.join(root, f"{loss}-lt{ratio:g}-seed{seed}-lr{lr:g}")
    os.makedirs(run_dir)
    cfg = Config(loss=loss, seed=seed, lr=lr, epochs=1, imbalance_ratio=ratio, model="small-cnn")
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    row = {"epoch": 1, "lr": lr, "train_loss": 1.0, "train_top1": 0.1, "train_top5": 0.3,
           "val_top1": val5 / 2, "val_top5": val5, "test_top1": test5 / 2, "test_top5": test5,
           "epoch_seconds": 1.0, "test_macro_top1": macro5 / 2, "test_macro_top5": macro5,
           "test_head_top5": 0.95, "test_medium_top5": 0.5, "test_tail_top5": tail5}  # fmt: skip
    write_metrics(run_dir, [row])


def test_selection_gives_the_macro_and_tail_accuracy_of_validations_choice(tmp_path):
    root = str(tmp_path / "runs")
    for (loss, lr, ratio, seed), values in LT_CELLS.items():
        _fake_selection_run(root, loss, lr, ratio, seed, *values)
        _fake_selection_run(root, loss, lr, 100.0, seed, *values)  # a second setting
    result = write_report([root], str(tmp_path / "report"))
    rows = [r for r in result["selection_rows"] if r["imbalance_ratio"] == 10.0]
    assert [r["loss"] for r in rows] == ["ce", "smooth-svm-ldam (k=5)"]
    assert [r["selected"] for r in rows] == ["seed 0: lr=0.1; seed 1: lr=0.3",
                                             "seed 0: lr=0.1; seed 1: lr=0.3"]  # fmt: skip
    # validation's choices: CE (61, 52) macro top-5 / (20, 10) tail; LDAM (72, 63) / (40, 30);
    # macro top-1 is half the macro top-5: LDAM (36, 31.5) -> 33.75 ± 3.18
    ce, ldam = rows
    assert ce["test_macro_top5"] == pytest.approx(56.5)
    assert ce["test_macro_top5_std"] == pytest.approx(9 / 2**0.5)
    assert ldam["test_tail_top5"] == pytest.approx(35.0)
    assert ldam["diff_test_macro_top5"] == pytest.approx(11.0)
    assert ldam["diff_test_tail_top5"] == pytest.approx(20.0)
    assert ldam["diff_test_tail_top5_std"] == pytest.approx(0.0)
    assert ce["diff_test_macro_top5"] is None
    table = (tmp_path / "report" / "selection.md").read_text()
    assert table.splitlines()[2].startswith("| imbalance_ratio | loss | selected (per seed) |")
    assert "| macro top-1 | macro top-5 | head top-5 | medium top-5 | tail top-5 |" in table
    assert table.splitlines()[5].endswith(
        "| 33.8 ± 3.2 | 67.5 ± 6.4 | 95.0 ± 0.0 | 50.0 ± 0.0 | 35.0 ± 7.1 | "
        "+11.0 [+11.0, +11.0] clear (+11.0, +11.0) | +20.0 [+20.0, +20.0] clear (+20.0, +20.0) |"
    )
    assert os.path.isfile(tmp_path / "report" / "selection_vs_imbalance_ratio.png")
    with open(tmp_path / "report" / "selection_candidates.csv") as f:
        candidates = list(csv.DictReader(f))
    assert {c["imbalance_ratio"] for c in candidates} == {"10.0", "100.0"}


def test_longtail_preset_runs_small_end_to_end(tmp_path):
    out = str(tmp_path / "lt")
    args = ["sweep", "--preset", "longtail-select", "--out", out, "--loss", "ce,smooth-svm-ldam",
            "--imbalance-ratio", "10", "--seed", "0", "--grid", "ce:lr=0.1,0.3",
            "--grid", "smooth-svm-ldam:tau=1;lr=0.1", "--epochs", "1", "--milestones",
            "--val-size", "100", "--batch-size", "50", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    with open(os.path.join(out, "report", "selection.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["selected_by"] == "val_top5"]
    assert [(r["loss"], r["candidates"]) for r in rows] == [
        ("ce", "2"),
        ("smooth-svm-ldam (k=5)", "1"),
    ]
    results = {}
    for name in os.listdir(out):
        if os.path.isfile(os.path.join(out, name, "results.json")):
            with open(os.path.join(out, name, "results.json")) as f:
                results[os.path.join(out, name)] = json.load(f)
    ce_runs = sorted(p for p in results if os.path.basename(p).startswith("ce-"))
    assert len(ce_runs) == 2 and all("-lt10-" in p for p in ce_runs)
    best = max(ce_runs, key=lambda p: (results[p]["val_top5"], results[p]["val_top1"]))
    assert rows[0]["runs"] == best
    ldam = results[rows[1]["runs"]]
    for metric in ("test_macro_top5", "test_tail_top5"):
        assert float(rows[1][metric]) == pytest.approx(100 * ldam[metric], abs=0.006)
    diff = 100 * (ldam["test_tail_top5"] - results[best]["test_tail_top5"])
    assert float(rows[1]["diff_test_tail_top5"]) == pytest.approx(diff, abs=0.006)
