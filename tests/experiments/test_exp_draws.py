"""Independent draws (#22 item 1): each seed draws its own label noise and training subsample
unless pinned (``--noise-seed``, ``--subsample-seed``); the losses at one seed share them; the
data set and its train/validation split stay fixed (``--data-seed``); a config saved before
keeps the draws it trained with."""

import pytest
import torch

from smoothtopk.experiments.config import from_saved, resolve
from smoothtopk.experiments.datasets.common import balanced_split_indices
from smoothtopk.experiments.train import prepare


def _prepared(**options):
    return prepare(resolve("demo", None, options), "unused-run-dir")


def test_two_seeds_draw_different_noise_over_one_data_set():
    a, b = _prepared(noise=0.4, seed=0), _prepared(noise=0.4, seed=1)
    assert torch.equal(a.data.train.indices, b.data.train.indices)  # the data set stays
    assert torch.equal(a.data.val.indices, b.data.val.indices)
    assert not torch.equal(a.noisy.labels, b.noisy.labels)


def test_two_losses_at_one_seed_draw_the_same_noise_and_subsample():
    ce = _prepared(noise=0.4, subset="1000", seed=2, loss="ce")
    svm = _prepared(noise=0.4, subset="1000", seed=2, loss="smooth-svm", tau=0.1)
    assert torch.equal(ce.data.train.indices, svm.data.train.indices)
    assert torch.equal(ce.noisy.labels, svm.noisy.labels)


def test_two_seeds_draw_different_subsamples_with_the_same_validation():
    a, b = _prepared(subset="1000", seed=0), _prepared(subset="1000", seed=1)
    assert not torch.equal(a.data.train.indices, b.data.train.indices)
    assert torch.equal(a.data.val.indices, b.data.val.indices)
    assert torch.equal(torch.bincount(a.data.train.targets), torch.bincount(b.data.train.targets))
    lt_a = _prepared(imbalance_ratio=10.0, seed=0)
    lt_b = _prepared(imbalance_ratio=10.0, seed=1)
    assert not torch.equal(lt_a.data.train.indices, lt_b.data.train.indices)


def test_an_explicit_pin_reproduces_the_old_shared_draws():
    """``--noise-seed 0 --subsample-seed 0`` is what every seed drew before (#22)."""
    pinned = [_prepared(noise=0.4, subset="1000", seed=s, noise_seed=0, subsample_seed=0)
              for s in (0, 3)]  # fmt: skip
    assert torch.equal(pinned[0].noisy.labels, pinned[1].noisy.labels)
    assert torch.equal(pinned[0].data.train.indices, pinned[1].data.train.indices)
    derived = _prepared(noise=0.4, subset="1000", seed=0)  # seed 0 derives 0: the same draw
    assert torch.equal(derived.noisy.labels, pinned[0].noisy.labels)


def test_a_config_saved_before_keeps_its_pinned_draws():
    old = resolve("demo", None, {"seed": 4, "noise": 0.4, "subset": "1000"}).to_dict()
    del old["subsample_seed"]  # saved before the option existed: it had data_seed's draw
    old.update(noise_seed=0, data_seed=0)
    cfg = from_saved(old)
    assert (cfg.noise_seed, cfg.subsample_seed) == (0, 0)
    assert (cfg.noise_draw_seed, cfg.subsample_draw_seed) == (0, 0)
    fresh = from_saved(resolve("demo", None, {"seed": 4}).to_dict())
    assert (fresh.noise_seed, fresh.subsample_seed) == (None, None)
    assert (fresh.noise_draw_seed, fresh.subsample_draw_seed) == (4, 4)


def test_a_train_seed_redraws_the_training_subsample_only():
    targets = torch.arange(4).repeat(30)
    same = balanced_split_indices(targets, 4, 5, 10, seed=0)
    again = balanced_split_indices(targets, 4, 5, 10, seed=0, train_seed=0)
    assert all(torch.equal(x, y) for x, y in zip(same, again, strict=True))
    train, val = balanced_split_indices(targets, 4, 5, 10, seed=0, train_seed=1)
    assert torch.equal(val, same[1]) and not torch.equal(train, same[0])
    assert not set(train.tolist()) & set(val.tolist())
    small, _ = balanced_split_indices(targets, 4, 5, 5, seed=0, train_seed=1)
    assert set(small.tolist()) <= set(train.tolist())  # smaller subsets inside larger ones


@pytest.mark.parametrize("name", ["noise_seed", "subsample_seed"])
def test_a_pinned_seed_is_checked_like_any_seed(name):
    with pytest.raises(ValueError, match=f"{name} must be an integer"):
        resolve(None, None, {name: -1})
