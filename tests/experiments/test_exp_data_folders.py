import os

import pytest
import torch

from smoothtopk.experiments.datasets import build_data
from smoothtopk.experiments.datasets.common import balanced_split_indices, parse_subset


def test_imagenet_style_folders(folder_dir):
    root, classes = folder_dir
    data = build_data("imagenet", root, seed=0, val_per_class=3, subset="24", image_size=16)
    assert data.class_names == classes and data.num_classes == 6
    assert len(data.val) == 6 * 3 and len(data.train) == 6 * 4
    assert torch.bincount(data.train.targets, minlength=6).tolist() == [4] * 6
    assert torch.bincount(data.val.targets, minlength=6).tolist() == [3] * 6
    assert set(data.train.indices.tolist()).isdisjoint(data.val.indices.tolist())
    assert len(data.test) == 12  # the official validation images
    for dataset in (data.train, data.val, data.test):
        x, y = dataset[len(dataset) - 1]
        assert x.shape == (3, 16, 16) and 0 <= y < 6
    # labels of the test set follow the folder names
    paths = [p for p, _ in data.test.base.samples]
    assert [classes.index(os.path.basename(os.path.dirname(p))) for p in paths] == (
        data.test.targets.tolist()
    )


def test_folder_dataset_prefers_test_dir(folder_dir):
    root, classes = folder_dir
    from exp_data_writers import write_image_folder

    write_image_folder(root, classes, 1, "test", seed=2)
    data = build_data("folder", root, seed=0, val_per_class=2, image_size=8)
    assert len(data.test) == 6 and len(data.train) == 6 * 8


def test_subsets_are_balanced_nested_and_keep_validation():
    targets = torch.arange(10).repeat_interleave(40)[torch.randperm(400)]
    val_a, train_small = None, None
    for per_class in (5, 10, 20, None):
        train, val = balanced_split_indices(targets, 10, 6, per_class, seed=4)
        counts = torch.bincount(targets[train], minlength=10)
        assert counts.tolist() == [per_class or 34] * 10
        assert torch.bincount(targets[val], minlength=10).tolist() == [6] * 10
        assert set(train.tolist()).isdisjoint(val.tolist())
        if val_a is None:
            val_a = val
        assert torch.equal(val, val_a)  # validation does not depend on the subset size
        if train_small is not None:
            assert set(train_small.tolist()) <= set(train.tolist())
        train_small = train


def test_parse_subset():
    assert parse_subset("64k", 1000) == 64
    assert parse_subset("all", 1000) is None
    assert parse_subset(640000, 1000) == 640
    with pytest.raises(ValueError, match="multiple"):
        parse_subset("1001", 1000)
    with pytest.raises(ValueError):
        parse_subset("lots", 1000)


def test_too_few_images_per_class(folder_dir):
    root, _ = folder_dir
    with pytest.raises(ValueError, match="fewer than"):
        build_data("imagenet", root, val_per_class=8, subset="30")


def test_mismatched_class_folders(folder_dir):
    root, _ = folder_dir
    os.makedirs(os.path.join(root, "val", "n999"))
    from exp_data_writers import write_image_folder

    write_image_folder(root, ["n999"], 1, "val")
    with pytest.raises(ValueError, match="differ"):
        build_data("imagenet", root, val_per_class=2)


def test_missing_folders_say_how_to_get_them(tmp_path):
    with pytest.raises(ValueError, match="image-net.org"):
        build_data("imagenet", str(tmp_path))
    with pytest.raises(ValueError, match="train/<class>"):
        build_data("folder", str(tmp_path))
