import os

import pytest
import torch

from smoothtopk.experiments.datasets import build_data, cifar


def test_cifar100_split_and_test_set(cifar_dir):
    root, coarse = cifar_dir
    data = build_data("cifar100", root, seed=3, val_size=50)
    assert data.num_classes == 100
    assert len(data.train) == 250 and len(data.val) == 50 and len(data.test) == 100
    # the split is a partition of the official training set
    both = torch.cat([data.train.indices, data.val.indices])
    assert sorted(both.tolist()) == list(range(300))
    # labels are the official (clean) fine labels
    base = data.train.base
    for subset in (data.train, data.val):
        assert subset.targets.tolist() == [base.targets[i] for i in subset.indices.tolist()]
    assert data.test.targets.tolist() == data.test.base.targets
    x, y = data.val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    x, _ = data.train[0]  # with augmentation
    assert x.shape == (3, 32, 32)
    # the semantic superclasses come from the files
    assert data.superclasses.tolist() == coarse


def test_cifar100_split_is_seeded(cifar_dir):
    root, _ = cifar_dir
    a = build_data("cifar100", root, seed=1, val_size=50)
    b = build_data("cifar100", root, seed=1, val_size=50)
    c = build_data("cifar100", root, seed=2, val_size=50)
    assert torch.equal(a.val.indices, b.val.indices)
    assert not torch.equal(a.val.indices, c.val.indices)


def test_cifar100_pixels_match_the_file(cifar_dir):
    root, _ = cifar_dir
    data = build_data("cifar100", root, seed=0, val_size=50, augment=False)
    import pickle

    with open(os.path.join(root, "cifar-100-python", "test"), "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    first = torch.as_tensor(entry["data"][0]).view(3, 32, 32).float() / 255
    mean = torch.tensor(cifar.MEAN).view(3, 1, 1)
    std = torch.tensor(cifar.STD).view(3, 1, 1)
    x, y = data.test[0]
    assert y == entry["fine_labels"][0]
    torch.testing.assert_close(x, (first - mean) / std, atol=1e-5, rtol=0)


def test_missing_cifar100_says_how_to_get_it(tmp_path):
    with pytest.raises(ValueError, match="--download"):
        build_data("cifar100", str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()
