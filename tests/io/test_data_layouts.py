"""Folders laid out by split, single sets, and the splits a run may score on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geopath.errors import DataError, UsageError
from geopath.io.data import has_splits, load_dataset, recorded_name, split_layout
from geopath.jobs.common import eval_set


def _images(folder, classes=("cat", "dog"), n=3, size=6, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def test_a_folder_of_train_and_test_image_folders_has_splits(tmp_path):
    _images(tmp_path / "train", n=3)
    _images(tmp_path / "test", n=2, seed=1)
    assert split_layout(tmp_path) == "folders" and has_splits(str(tmp_path))
    tr, te = load_dataset(str(tmp_path), "train"), load_dataset(str(tmp_path), "test")
    assert len(tr) == 6 and len(te) == 4
    assert sorted(tr.y.tolist()) == [0, 0, 0, 1, 1, 1]  # the classes are cat and dog, not train and test
    assert tr.x.shape[1:] == (3, 6, 6)


def test_a_half_split_layout_is_refused_not_read_as_two_classes(tmp_path):
    _images(tmp_path, classes=("train", "val"))
    with pytest.raises(DataError, match="not test/"):
        load_dataset(str(tmp_path), "test")


def test_a_folder_of_train_and_test_npz_has_splits(tmp_path):
    for split, n in (("train", 5), ("test", 3)):
        np.savez(tmp_path / f"{split}.npz", x=np.zeros((n, 4), np.float32), y=np.arange(n) % 2)
    assert split_layout(tmp_path) == "npz"
    assert len(load_dataset(str(tmp_path), "train")) == 5 and len(load_dataset(str(tmp_path), "test")) == 3


def test_single_sets_have_no_test_split_to_fall_back_on(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((5, 4), np.float32), y=np.zeros(5, np.int64))
    _images(tmp_path / "imgs")
    for one in (str(tmp_path / "train.npz"), str(tmp_path / "imgs")):
        assert not has_splits(one)
        with pytest.raises(UsageError, match="no test split of its own: pass --eval-data"):
            eval_set(one, None)
    assert has_splits("mnist") and has_splits("FMNIST") and eval_set("mnist", None) == "mnist"
    assert eval_set("x", str(tmp_path / "train.npz")) == str((tmp_path / "train.npz").resolve())


def test_recorded_names_are_absolute_paths_or_canonical_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recorded_name("data.npz") == str(tmp_path / "data.npz")
    assert recorded_name("fmnist") == "fashion-mnist" and recorded_name("CIFAR-10") == "cifar10"
