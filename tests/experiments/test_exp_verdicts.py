"""The report's two selections, both ends and its verdicts (#22 item 2): per loss the test
accuracy at the best validation epoch and at the final epoch, selected by validation top-5 and
by validation top-1, and the paired difference to CE with its 95 % t-interval and verdict."""

import os

import pytest
import yaml

from smoothtopk.experiments.config import Config
from smoothtopk.experiments.records import write_metrics
from smoothtopk.experiments.report.aggregate import paired_interval, t975
from smoothtopk.experiments.report.write import write_report


def run(root, loss, seed, epochs, **options):
    """A finished run; ``epochs``: (val top-1, val top-5, test top-1, test top-5) per epoch."""
    cfg = Config(loss=loss, noise=0.4, seed=seed, epochs=len(epochs), model="small-cnn",
                 **options)  # fmt: skip
    tag = "-".join(f"{k}{v:g}" for k, v in sorted(options.items()))
    path = os.path.join(root, f"{loss}-{seed}-{tag}")
    os.makedirs(path)
    with open(os.path.join(path, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    write_metrics(path, [
        {"epoch": e, "lr": cfg.lr, "train_loss": 1.0, "train_top1": 0.1, "train_top5": 0.3,
         "val_top1": v1, "val_top5": v5, "test_top1": t1, "test_top5": t5, "epoch_seconds": 1.0}
        for e, (v1, v5, t1, t5) in enumerate(epochs, start=1)
    ])  # fmt: skip
    return path


def test_both_rules_and_both_ends(tmp_path):
    root = str(tmp_path / "runs")
    for seed in (0, 1, 2):
        # lr 0.03 wins on validation top-5 (epoch 1), lr 0.3 on validation top-1 (epoch 2)
        run(root, "ce", seed, [(0.30, 0.90, 0.31, 0.91), (0.20, 0.80, 0.21, 0.81)], lr=0.03)
        run(root, "ce", seed, [(0.10, 0.70, 0.11, 0.71), (0.40, 0.85, 0.41, 0.86)], lr=0.3)
        # the smooth loss: 2 points more at its best, 10 + seed more at the end
        run(root, "smooth-svm", seed, [(0.30, 0.95, 0.33, 0.93), (0.25, 0.90, 0.31 + seed / 100,
                                       0.91 + seed / 100)], tau=1.0)  # fmt: skip
        run(root, "smooth-svm", seed, [(0.0, 0.1, 0.0, 0.1)] * 2, tau=10.0)
    result = write_report([root], str(tmp_path / "report"))
    top5 = {r["loss"]: r for r in result["selection_rows"]}
    top1 = {r["loss"]: r for r in result["selection_rows_top1"]}
    assert top5["ce"]["selected"].startswith("seed 0: lr=0.03")
    assert top1["ce"]["selected"].startswith("seed 0: lr=0.3")
    assert top5["ce"]["test_top5"] == pytest.approx(91.0)  # best epoch (1) by val top-5
    assert top5["ce"]["final_test_top5"] == pytest.approx(81.0)  # its last epoch
    assert top1["ce"]["test_top5"] == pytest.approx(86.0)  # best epoch (2) by val top-1
    svm = top5["smooth-svm (k=5)"]
    assert svm["diff_test_top5"] == pytest.approx(2.0)
    assert svm["diff_test_top5_verdict"] == "clear"  # +2 at every seed: the interval is [2, 2]
    assert svm["diff_final_test_top5_seeds"] == pytest.approx([10.0, 11.0, 12.0])
    assert svm["diff_final_test_top5_verdict"] == "clear"
    half = t975(2) * 1.0 / 3**0.5  # std of (10, 11, 12) is 1
    assert svm["diff_final_test_top5_low"] == pytest.approx(11.0 - half)
    table = result["selection_table"]
    assert "## Selected by validation top-1" in table
    assert "| Δ final top-1 | Δ final top-5 |" in table
    assert "| n | val top-5 | test top-1 |" in table and "| n | val top-1 | test top-1 |" in table
    assert "+11.0 [+8.5, +13.5] clear (+10.0, +11.0, +12.0)" in table
    assert "mean ± t(0.975, n−1) · s / √n" in table


def test_one_seed_cells_print_no_plus_minus(tmp_path):
    root = str(tmp_path / "runs")
    for lr in (0.03, 0.3):
        run(root, "ce", 0, [(0.3, 0.9, 0.3, 0.9)], lr=lr)
        run(root, "smooth-svm", 0, [(0.3, 0.9, 0.35, 0.95)], lr=lr)
    run(root, "ce", 1, [(0.3, 0.9, 0.3, 0.9)], lr=0.03)  # a second seed for CE only
    result = write_report([root], str(tmp_path / "report"))
    svm = next(line for line in result["selection_table"].splitlines() if "smooth-svm" in line)
    assert "±" not in svm and "+5.0 one seed" in svm
    assert "| 90.0 ± 0.0 |" in result["selection_table"]  # two seeds: a spread of 0 is shown


def test_interval_and_verdicts():
    assert t975(1) == 12.706 and t975(4) == 2.776
    assert t975(100) == pytest.approx(1.984, abs=1e-3) and t975(31) == pytest.approx(
        2.040, abs=1e-3
    )
    assert paired_interval([1.0, -1.0, 0.5])["verdict"] == "within seed noise"
    assert paired_interval([-3.0, -4.0, -3.5])["verdict"] == "clear"
    assert paired_interval([-3.0, -4.0])["verdict"] == "within seed noise"  # t(1) = 12.7
    single = paired_interval([2.0])
    assert single["verdict"] == "one seed" and single["low"] is None


def test_a_selected_value_on_a_grid_edge_is_warned(tmp_path):
    root = str(tmp_path / "runs")
    for seed in (0, 1):
        for lr, val5 in ((0.03, 0.9), (0.1, 0.8), (0.3, 0.7)):  # validation picks the lowest
            run(root, "ce", seed, [(0.3, val5, 0.3, 0.9)], lr=lr)
        for lr, val5 in ((0.03, 0.8), (0.1, 0.9), (0.3, 0.7)):  # the middle: no warning
            run(root, "smooth-svm", seed, [(0.3, val5, 0.3, 0.9)], lr=lr)
    result = write_report([root], str(tmp_path / "report"))
    warning = (
        "- Warning: grid edge: ce at noise 0.4: lr = 0.03 is the lowest of its grid "
        "(0.03, 0.1, 0.3) at seeds 0, 1."
    )
    table = result["selection_table"]
    assert table.count(warning) == 2  # under each rule's table
    assert "smooth-svm (k=5) at" not in table
    with open(result["files"]["selection_csv"]) as f:
        text = f.read()
    assert "lr = 0.03 is the lowest of its grid (0.03, 0.1, 0.3) at seeds 0, 1" in text


@pytest.mark.parametrize("total", [2, 10, 12, 20])
def test_every_line_of_a_plot_has_its_own_colour(total):
    from smoothtopk.experiments.report.plots import MARKERS, style

    styles = [style(i, total) for i in range(total)]
    assert len({s["color"] for s in styles}) == total  # twelve losses: twelve colours
    assert len({s["marker"] for s in styles}) == min(total, len(MARKERS))


def test_the_accuracy_plot_draws_each_loss_in_its_own_style(monkeypatch):
    import matplotlib.axes

    from smoothtopk.experiments.report.plots import plot_accuracy

    drawn = []
    original = matplotlib.axes.Axes.errorbar

    def spy(self, *args, **kwargs):
        drawn.append((kwargs["label"], kwargs["color"], kwargs["marker"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    rows = [{"dataset": "embedded", "loss": f"loss{i}", "noise": p, "n": 1, "test_top1": 10.0,
             "test_top1_std": 0.0, "test_top5": 50.0, "test_top5_std": 0.0}
            for i in range(12) for p in (0.0, 0.4)]  # fmt: skip
    assert plot_accuracy("noise", rows)[:4] == b"\x89PNG"
    per_panel = drawn[:12]
    assert len({color for _, color, _ in per_panel}) == 12
    assert [label for label, _, _ in per_panel] == [f"loss{i}" for i in range(12)]


@pytest.mark.parametrize(
    "preset,runs,losses",
    [
        ("noise1-select", 60, {"ce", "smooth-svm"}),
        ("tau-study", 54, {"ce", "smooth-svm"}),
        ("nonsmooth-select", 180, {"hard-svm", "hinge-alpha", "hinge-beta", "trunc-entropy"}),
        ("nonsmooth-wide", 180, {"hard-svm", "hinge-alpha", "hinge-beta", "trunc-entropy"}),
        ("noise-fair", 600, {"ce", "smooth-svm"}),
        ("subsets-fair", 750, {"ce", "smooth-svm"}),
        (
            "longtail-fair",
            600,
            {
                "ce",
                "smooth-svm",
                "ce-logit-adjusted",
                "smooth-svm-ldam",
                "smoothed-calibrated-hinge-ldam",
            },
        ),
    ],
)
def test_the_study_presets_expand_to_their_documented_runs(preset, runs, losses):
    """#22's studies: the run counts docs/experiments.md states, names all distinct."""
    from smoothtopk.experiments import sweep

    named = sweep.expand_named(preset)
    configs = [config for config, _ in named]
    assert len(named) == runs and len({name for _, name in named}) == runs
    assert {config.loss for config in configs} == losses
    if preset == "noise1-select":
        assert {config.noise for config in configs} == {1.0}
        assert {config.seed for config in configs} == {0, 1, 2, 3, 4}
    if preset == "tau-study":
        taus = {config.tau for config in configs if config.loss == "smooth-svm"}
        assert taus == {0.001, 0.01, 0.1, 1.0, 10.0}
    if preset == "nonsmooth-select":
        assert {config.lr for config in configs} == {0.03, 0.1, 0.3}
    if preset in ("noise-fair", "subsets-fair"):  # equal grids: 12 (15) per loss, 5 seeds
        size = 12 if preset == "noise-fair" else 15
        rates = [{c.lr for c in configs if c.loss == loss} for loss in ("ce", "smooth-svm")]
        assert rates[0] == rates[1] and len(rates[0]) == size // 3
        for loss in ("ce", "smooth-svm"):
            mine = [c for c in configs if c.loss == loss]
            grid = {(c.lr, c.label_smoothing, c.tau) for c in mine}
            assert len(grid) == size and len(mine) == size * 5 * 5
        assert {config.seed for config in configs} == {0, 1, 2, 3, 4}
    if preset == "subsets-fair":  # no noise: one step below noise-fair's lower edges
        assert {config.subset for config in configs} == {"500", "1000", "2000", "3000", "all"}
        assert {config.noise for config in configs} == {0.0}
        assert min(c.lr for c in configs) == 0.003
        assert min(c.tau for c in configs if c.loss == "smooth-svm") == 0.01
    if preset == "longtail-fair":  # equal grids: each loss 4 rates x 3 of its own option
        for loss in losses:
            mine = [c for c in configs if c.loss == loss]
            grid = {(c.lr, c.label_smoothing, c.tau, c.tau_la, c.max_margin) for c in mine}
            assert len(grid) == 12 and len(mine) == 12 * 2 * 5
            assert {c.lr for c in mine} == {0.01, 0.03, 0.1, 0.3}
        assert {config.imbalance_ratio for config in configs} == {10.0, 100.0}
    if preset == "nonsmooth-wide":  # both sides of nonsmooth-select's rates, none of them
        assert {config.lr for config in configs} == {0.003, 0.01, 1.0}
        select = {name for _, name in sweep.expand_named("nonsmooth-select")}
        assert select.isdisjoint(name for _, name in named)
