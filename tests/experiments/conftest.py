"""Fixtures for the experiment toolkit: small data sets written in the real on-disk formats."""

from __future__ import annotations

import pytest
from exp_data_writers import write_cifar100, write_image_folder


@pytest.fixture
def cifar_dir(tmp_path):
    root = tmp_path / "cifar"
    coarse = write_cifar100(str(root))
    return str(root), coarse


@pytest.fixture
def folder_dir(tmp_path):
    root = str(tmp_path / "folders")
    classes = ["n001", "n002", "n003", "n004", "n005", "n006"]
    write_image_folder(root, classes, 10, "train")
    write_image_folder(root, classes, 2, "val", seed=1)
    return root, classes
