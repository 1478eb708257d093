"""``--mixup``, ``--cutmix`` and ``--label-smoothing`` in the runner (#24): offered to every
loss that takes probability targets (``registry.LossEntry.probability_targets``, the one
place that says so); mixing is refused, one line, exit status 2, nothing written, for the
others (which ignore ``--label-smoothing``, as every loss option they do not use);
the mixed targets reach the loss as probabilities; a resumed run mixes as the uninterrupted
one did.

The losses are read from the registry's flag, so switching it on for a loss (smooth-svm,
hard-svm) moves it from the refused tests to the training and resume tests."""

import json
import os

import pytest
import torch

from smoothtopk import registry
from smoothtopk.experiments import losses, train
from smoothtopk.experiments.checkpoint import load_checkpoint
from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import from_saved, resolve
from smoothtopk.experiments.mixing import Mixing, step_seed
from smoothtopk.experiments.rundir import run_name

ALLOWED = [name for name, entry in registry.LOSSES.items() if entry.probability_targets]
REFUSED = [name for name in registry.LOSSES if name not in ALLOWED]
SMOOTHED = [name for name in registry.LOSSES if "label_smoothing" in losses.loss_params(name)]
# 500 training images (5 per class) in batches of 50: 10 steps per epoch
SMALL = ["--epochs", "1", "--milestones", "--subset", "500", "--val-size", "100",
         "--batch-size", "50", "--no-progress", "--device", "cpu"]  # fmt: skip
MIXES = {"mixup": ["--mixup", "0.2"], "cutmix": ["--cutmix", "1"],
         "both": ["--mixup", "0.2", "--cutmix", "1", "--label-smoothing", "0.1"]}  # fmt: skip


def test_ce_takes_probability_targets():
    assert "ce" in ALLOWED  # until the smooth losses take them too, the only one


# -- the batch transform ----------------------------------------------------------------------


def _batch(n=8, classes=5):
    return torch.rand(n, 3, 8, 8), torch.arange(n) % classes


def test_mixup_gives_probability_rows_of_two_labels():
    images, labels = _batch()
    mixed, targets = Mixing(mixup=0.2, cutmix=0.0, num_classes=5)(images, labels, seed=3)
    assert targets.dtype == torch.float32 and targets.shape == (8, 5)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    rolled = labels.roll(1, 0)  # MixUp pairs each image with the one before it
    for row, own, other in zip(targets, labels, rolled, strict=True):
        assert set(row.nonzero().flatten().tolist()) <= {int(own), int(other)}
        assert (row > 0).sum() <= 2
    lam = float(targets[0, labels[0]])
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))


def test_cutmix_pastes_a_box_and_weighs_the_labels_by_its_area():
    images, labels = _batch()
    mixed, targets = Mixing(mixup=0.0, cutmix=1.0, num_classes=5)(images, labels, seed=4)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    pasted = (mixed != images).any(1)[0]  # the box, where image 0 took image 7's pixels
    assert float(targets[0, labels[0]]) == pytest.approx(1 - float(pasted.float().mean()))


def test_each_step_mixes_from_its_own_seed_and_leaves_the_global_stream_alone():
    mix = Mixing(mixup=0.2, cutmix=1.0, num_classes=5)
    images, labels = _batch()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = mix(images, labels, step_seed(0, 0, 1, 7))
    assert torch.equal(torch.get_rng_state(), before)  # the run's other draws are unchanged
    b = mix(images, labels, step_seed(0, 0, 1, 7))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    draws = {tuple(mix(images, labels, step_seed(0, 0, 1, s))[1][0].tolist()) for s in range(8)}
    assert len(draws) > 1  # another step, another draw
    assert len({step_seed(0, r, e, s) for r in (0, 1) for e in (0, 1) for s in (0, 1)}) == 8


# -- training ------------------------------------------------------------------------------------


class _Spy(torch.nn.Module):
    """The run's loss, recording the targets it is called with."""

    def __init__(self, inner, seen):
        super().__init__()
        self.inner, self.seen = inner, seen

    def forward(self, scores, target):
        self.seen.append(target.detach().clone())
        return self.inner(scores, target)


@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("loss", ALLOWED)
def test_a_one_epoch_run_with_mixing_trains_on_probabilities_and_records(
    tmp_path, monkeypatch, loss, mix
):
    seen, built = [], []
    build = losses.build_loss

    def spied(name, options=None, **kw):
        built.append(losses._used_options(name, options))
        return _Spy(build(name, options, **kw), seen)

    monkeypatch.setattr(losses, "build_loss", spied)
    out = tmp_path / "run"
    assert main(["train", "--loss", loss, *MIXES[mix], *SMALL, "--out", str(out)]) == 0
    training = [t for t in seen if t.shape[0] == 50]  # the steps (not the loss's check)
    assert len(training) == 10
    for target in training:  # probability targets: float (N, C) rows summing to 1
        assert target.dtype == torch.float32 and target.shape == (50, 100)
        torch.testing.assert_close(target.sum(1), torch.ones(50))
        assert (target >= 0).all()
    if mix == "mixup":
        assert all(((t > 0).sum(1) <= 2).all() for t in training)
    if mix == "both":  # label smoothing on top, by the loss itself
        assert built[-1]["label_smoothing"] == 0.1
    (record,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["train_total"] == 500 and record["val_total"] == 100  # hard-label counts
    assert (out / "results.json").is_file()
    config = (out / "config.yaml").read_text()
    assert ("mixup: 0.2" in config) == (mix != "cutmix")


@pytest.mark.parametrize("loss", REFUSED)
def test_mixing_a_loss_without_probability_targets_is_one_line_exit_2(tmp_path, capsys, loss):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["train", "--loss", loss, "--mixup", "0.2", *SMALL, "--out", str(out)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--mixup needs a loss that takes probability targets (ce" in err
    assert f"{loss} does not" in err and not out.exists()


@pytest.mark.parametrize("loss", [n for n in registry.LOSSES if n not in SMOOTHED])
def test_a_loss_without_label_smoothing_ignores_it_as_every_option_it_does_not_use(loss):
    cfg = resolve(None, None, {"loss": loss, "label_smoothing": 0.1})
    assert "-ls" not in run_name(cfg) and "label_smoothing" not in cfg.loss_spec.label()
    assert "label_smoothing" not in losses._used_options(loss, cfg.loss_spec.options)


def test_every_reason_at_once_for_a_sweep():
    from smoothtopk.experiments import sweep

    with pytest.raises(ValueError) as refused:
        sweep.expand("demo", None, {"loss": ["ce", "hinge-alpha"]},
                     {"mixup": 0.2, "cutmix": -1.0})  # fmt: skip
    assert "cutmix must be >= 0, got -1.0" in str(refused.value)
    assert "hinge-alpha does not" in str(refused.value)


def test_label_smoothing_is_one_option_whose_default_is_the_loss_s_own():
    ce = resolve(None, None, {"loss": "ce"})
    assert ce.label_smoothing is None and run_name(ce) == "ce-noise0-all-seed0"
    smoothed = resolve(None, None, {"loss": "ce", "label_smoothing": 0.1})
    assert run_name(smoothed).startswith("ce-ls0.1-") and smoothed.loss_spec.label() == (
        "CE (label_smoothing=0.1)"
    )
    criterion = smoothed.loss_spec.build()
    assert isinstance(criterion, torch.nn.CrossEntropyLoss) and criterion.label_smoothing == 0.1
    own = resolve(None, None, {"loss": "ce-label-smoothing"})
    assert own.label_smoothing == 0.1 and run_name(own).startswith("ce-label-smoothing-ls0.1-")
    scores, labels = torch.randn(6, 10), torch.arange(6)
    torch.testing.assert_close(criterion(scores, labels), own.loss_spec.build()(scores, labels))


def test_a_config_saved_before_mixing_existed_reads_as_it_trained():
    old = resolve(None, None, {"loss": "ce"}).to_dict()
    for key in ("mixup", "cutmix"):
        del old[key]
    assert from_saved({**old, "label_smoothing": 0.1}).label_smoothing is None  # ce ignored it
    own = {**old, "loss": "ce-label-smoothing", "label_smoothing": 0.1}
    assert from_saved(own).label_smoothing == 0.1


def test_run_names_carry_the_mixing_when_on():
    cfg = resolve(None, None, {"loss": "ce", "mixup": 0.2, "cutmix": 1.0})
    assert run_name(cfg) == "ce-noise0-all-seed0-mixup0.2-cutmix1"


# -- resume ---------------------------------------------------------------------------------------


class _Stop(BaseException):
    """A kill after a mid-epoch checkpoint (not an Exception: no failure is recorded)."""


@pytest.mark.parametrize("loss", ALLOWED)
def test_resume_mid_epoch_with_mixing_equals_the_uninterrupted_run(tmp_path, monkeypatch, loss):
    options = {"loss": loss, "epochs": 2, "milestones": [1], "subset": "500", "val_size": 100,
                "batch_size": 50, "checkpoint_every": 3, "mixup": 0.2, "cutmix": 1.0,
                "progress": False, "device": "cpu"}  # fmt: skip
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    train.fit(train.prepare(resolve(None, None, options), reference))
    save = train._save_mid_epoch

    def save_then_stop(loop, epoch, done, *rest):
        save(loop, epoch, done, *rest)
        if (epoch, done) == (1, 6):
            raise _Stop

    monkeypatch.setattr(train, "_save_mid_epoch", save_then_stop)
    with pytest.raises(_Stop):
        train.fit(train.prepare(resolve(None, None, options), resumed))
    monkeypatch.setattr(train, "_save_mid_epoch", save)
    assert load_checkpoint(os.path.join(resumed, "last.pt"))["step"] == 6
    train.fit(train.prepare(resolve(None, None, options), resumed, resume=True))
    a = load_checkpoint(os.path.join(reference, "last.pt"))
    b = load_checkpoint(os.path.join(resumed, "last.pt"))
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    rows = [
        [{k: v for k, v in json.loads(x).items() if k != "epoch_seconds"}
         for x in open(os.path.join(d, "metrics.jsonl")).read().splitlines()]
        for d in (reference, resumed)
    ]  # fmt: skip
    assert rows[0] == rows[1]


def test_help_names_the_losses_that_take_probability_targets():
    """--help answers without torch, so loss_options holds a copy of the registry's list."""
    from smoothtopk.experiments import loss_options

    assert list(loss_options.PROBABILITY_TARGETS) == ALLOWED
