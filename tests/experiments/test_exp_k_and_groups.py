"""#22's k study and group-size artefact: the presets' runs, the look-alike group size of the
embedded data (its groups, its draws, its validation) and runs saved before the option."""

import os

import pytest
import torch
import yaml

from smoothtopk.experiments import cli, sweep
from smoothtopk.experiments.config import from_saved, resolve
from smoothtopk.experiments.datasets import build_data, embedded
from smoothtopk.experiments.records import read_config
from smoothtopk.experiments.rundir import config_hash, default_run_dir, incompatible, run_name

TINY = ["--epochs", "1", "--milestones", "--subset", "200", "--val-size", "100",
        "--batch-size", "50", "--no-progress"]  # fmt: skip


def test_the_k_study_trains_each_k_beside_one_ce():
    named = sweep.expand_named("k-study")
    assert len(named) == 45 and len({name for _, name in named}) == 45
    smooth = [cfg for cfg, _ in named if cfg.loss == "smooth-svm"]
    assert sorted({cfg.k for cfg in smooth}) == [1, 2, 5, 10]
    assert {(cfg.tau, cfg.lr) for cfg in smooth} == {(1.0, 0.1)}
    assert sum(cfg.loss == "ce" for cfg, _ in named) == 9  # 3 noise levels x 3 seeds
    assert {cfg.noise for cfg, _ in named} == {0.0, 0.4, 0.8}
    assert "smooth-svm-k10-tau1-alpha1-noise0.4-all-seed2" in {name for _, name in named}
    assert not sweep.has_grid("k-study")


def test_the_group_size_study_pairs_ce_and_the_top5_loss_at_each_size():
    named = sweep.expand_named("group-size")
    assert len(named) == 162 and len({name for _, name in named}) == 162
    configs = [cfg for cfg, _ in named]
    assert {cfg.lookalike_group_size for cfg in configs} == {3, 5, 10}
    assert {(cfg.loss, cfg.k, cfg.tau) for cfg in configs} == {("ce", 5, 1.0),
                                                               ("smooth-svm", 5, 1.0)}  # fmt: skip
    for loss in ("ce", "smooth-svm"):  # the same learning rates for both losses
        assert {cfg.lr for cfg in configs if cfg.loss == loss} == {0.03, 0.1, 0.3}
    assert {(cfg.noise_groups, cfg.group_size) for cfg in configs} == {("consecutive", 5)}
    names = {name for _, name in named}
    assert "ce-noise0.4-all-groups3-seed1-lr0.1" in names
    assert "smooth-svm-k5-tau1-alpha1-noise0.4-all-seed1-lr0.1" in names  # 5: the default name
    assert sweep.has_grid("group-size")


@pytest.mark.parametrize("size, sizes", [(3, [3] * 32 + [4]), (5, [5] * 20), (10, [10] * 10)])
def test_look_alike_groups_of_each_size_keep_the_100_classes(size, sizes):
    data = embedded.generate(0, group_size=size)
    assert sorted(torch.bincount(data.groups).tolist()) == sizes
    assert torch.bincount(data.train_labels).tolist() == [50] * 100
    means = torch.stack([data.train_images[data.train_labels == c].mean(0).flatten()
                         for c in range(100)])  # fmt: skip
    dist = torch.cdist(means, means)
    same = data.groups[:, None] == data.groups[None, :]
    off = ~torch.eye(100, dtype=torch.bool)
    assert dist[same & off].mean() < 0.8 * dist[~same].mean()  # the groups are look-alikes


def test_another_group_size_changes_the_grouping_only():
    default, ten = embedded.generate(0), embedded.generate(0, group_size=10)
    # groups of 10 are pairs of the groups of 5 (one permutation for every size)
    pairs = {(int(a), int(b)) for a, b in zip(default.groups, ten.groups, strict=True)}
    assert len(pairs) == 20 and len({b for _, b in pairs}) == 10
    # the prototypes differ by a group field only (the same class fields), and the draws of
    # every image after them are the same
    states, protos = [], []
    for size in (5, 10):
        gen = torch.Generator().manual_seed(0)
        protos.append(embedded._prototypes(0, gen, 0.25, size))
        states.append(gen.get_state())
    assert torch.equal(states[0], states[1])
    moved = protos[1] - protos[0]
    for group in range(20):
        members = moved[default.groups == group]
        assert torch.allclose(members, members[:1].expand_as(members), atol=1e-6)
    assert not torch.allclose(moved, torch.zeros_like(moved))


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["train", "--lookalike-group-size", "1"], "must be an integer from 2 to 50"),
        (["train", "--lookalike-group-size", "51"], "must be an integer from 2 to 50"),
        (["train", "--lookalike-group-size", "three"], "invalid int value: 'three'"),
        (["train", "--dataset", "folder", "--data-dir", "x", "--lookalike-group-size", "3"],
         "option of the embedded data only"),
        (["sweep", "--lookalike-group-size", "3,0"], "100 classes), got 0"),
        (["sweep", "--lookalike-group-size", "3,x"], "bad value 'x'"),
    ],
)  # fmt: skip
def test_a_bad_group_size_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, reason):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit:
        cli.main([*argv, "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(lines) == 1 and reason in lines[0], lines
    assert lines[0].startswith("smoothtopk: error: ")
    assert not out.exists() and os.listdir(tmp_path) == []


def test_the_group_size_names_its_runs_and_directories_only_off_the_default():
    default, five = resolve("demo"), resolve("demo", None, {"lookalike_group_size": 5})
    three = resolve("demo", None, {"lookalike_group_size": 3})
    assert default.lookalike_group_size == 5 and not incompatible(default, five)
    assert run_name(default) == run_name(five) == "ce-noise0-all-seed0"
    assert run_name(three) == "ce-noise0-all-groups3-seed0"
    assert default_run_dir(three) != default_run_dir(default) == default_run_dir(five)
    assert resolve(None, None, {"dataset": "folder", "data_dir": "x"}).lookalike_group_size is None


def test_a_config_saved_before_the_option_reads_as_groups_of_5():
    saved = resolve("demo", None, {"noise": 0.4}).to_dict()
    before = config_hash(resolve("demo", None, {"noise": 0.4}))
    del saved["lookalike_group_size"]
    old = from_saved(saved)
    assert old.lookalike_group_size == 5 and not incompatible(
        old, resolve("demo", None, {"noise": 0.4})
    )
    assert config_hash(old) == before  # the hash leaves the default out: the same directory
    folder = {**saved, "dataset": "folder", "data_dir": "x"}
    assert from_saved(folder).lookalike_group_size is None


def test_a_sweep_run_saved_before_the_option_is_complete_not_refused(tmp_path, capsys):
    out = str(tmp_path / "sweep")
    args = ["sweep", "--out", out, "--loss", "ce", *TINY]
    assert cli.main(args) == 0
    run_dir = os.path.join(out, "ce-noise0-200-seed0")
    saved = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
    del saved["lookalike_group_size"]  # as written before the option existed
    yaml.safe_dump(saved, open(os.path.join(run_dir, "config.yaml"), "w"), sort_keys=False)
    assert read_config(run_dir).lookalike_group_size == 5
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "skip    ce-noise0-200-seed0 (complete)" in capsys.readouterr().out


def test_superclass_noise_follows_the_look_alike_groups():
    cfg = resolve("demo", None, {"lookalike_group_size": 10, "noise_groups": "superclass"})
    data = build_data("embedded", seed=0, lookalike_group_size=cfg.lookalike_group_size)
    assert sorted(torch.bincount(data.superclasses).tolist()) == [10] * 10
