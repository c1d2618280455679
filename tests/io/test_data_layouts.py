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


def test_eval_refuses_a_split_of_a_single_set(tmp_path):
    """A PATH.npz is scored whole: --split train on it was ignored (the same figure as the test split)."""
    from .._helpers import SAMPLE, cli, one_error_line

    np.savez(tmp_path / "one.npz", x=np.zeros((5, 784), np.float32), y=np.zeros(5, np.int64))
    proc = cli("eval", SAMPLE, "--data", tmp_path / "one.npz", "--normalize", "dataset", "--split", "train")
    assert proc.returncode == 2 and "--split train does not apply" in one_error_line(proc)
    ok = cli("eval", SAMPLE, "--data", tmp_path / "one.npz", "--normalize", "dataset", "--json")
    assert ok.returncode == 0, ok.stderr


def test_train_resizes_an_image_folder_scored_on_a_named_set(tmp_path):
    """--image-size applies where one of the two sets is an image folder (here the training images; the test set is
    MNIST); with neither it is refused."""
    from .._helpers import cli, one_error_line

    _images(tmp_path / "imgs", classes=[str(i) for i in range(10)], n=2, size=32)
    out = tmp_path / "net.safetensors"
    proc = cli("train", "--data", tmp_path / "imgs", "--eval-data", "mnist", "--image-size", "28", "--channels", "1",
               "--arch", "mlp", "--arch-kwargs", '{"hidden": [8]}', "--epochs", "1", "--size", "20", "-o", out)
    assert proc.returncode == 0, proc.stderr
    refused = cli("train", "--image-size", "28", "--size", "20", "-o", tmp_path / "n2.safetensors")
    assert refused.returncode == 2 and "mnist is not one" in one_error_line(refused)


def test_recorded_names_are_absolute_paths_or_canonical_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recorded_name("data.npz") == str(tmp_path / "data.npz")
    assert recorded_name("fmnist") == "fashion-mnist" and recorded_name("CIFAR-10") == "cifar10"


# --------------------------------------------------------------------------- torchvision's CIFAR layout


def _cifar_batches(folder, n=6, seed=0):
    import pickle

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n)),
                 "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_torchvisions_cifar_folder_reads_without_running_code(tmp_path):
    _cifar_batches(tmp_path / "cifar-10-batches-py")
    assert split_layout(tmp_path / "cifar-10-batches-py") == "cifar10"
    tr = load_dataset(str(tmp_path / "cifar-10-batches-py"), "train")
    te = load_dataset("cifar10", "test", tmp_path)  # the named set finds the same layout under a root
    assert tr.x.shape == (12, 3, 32, 32) and te.x.shape == (6, 3, 32, 32)
    assert te.preprocess == "0.4914,0.4822,0.4465/0.247,0.2435,0.2616"


def test_a_cifar_batch_that_carries_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "ran.txt"),))

    _cifar_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(DataError, match="not a readable CIFAR batch.*builtins.exec is not an array"):
        load_dataset(str(tmp_path / "cifar-10-batches-py"), "test")
    assert not (tmp_path / "ran.txt").exists()


# --------------------------------------------------------------------------- streamed image folders


def test_image_folders_are_streamed_a_batch_at_a_time(tmp_path, monkeypatch):
    from geopath.core.evaluate import evaluate
    from geopath.io import images

    _images(tmp_path / "imgs", n=40, size=8)
    decoded = []
    real = images.ImageFiles._decode
    monkeypatch.setattr(images.ImageFiles, "_decode", lambda self, files: decoded.append(len(files)) or
                        real(self, files))
    ds = load_dataset(str(tmp_path / "imgs"))
    assert isinstance(ds.x, images.ImageFiles) and ds.x.shape == (80, 3, 8, 8) and decoded == []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    evaluate(model, ds, batch_size=16)
    assert decoded == [16, 16, 16, 16, 16]  # never more than one batch of pixels
    decoded.clear()
    evaluate(model, ds)  # a reader's own large batch is capped for streamed images
    assert decoded == [64, 16]
    assert ds.head(5).x.shape[0] == 5 and ds.x[torch.tensor([3, 1])].shape == (2, 3, 8, 8)


def test_mixed_sizes_need_a_size_and_grayscale_stays_one_channel(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "mixed" / c).mkdir(parents=True)
        Image.new("L", (10, 12), 200).save(tmp_path / "mixed" / c / "big.png")
        Image.new("L", (6, 6), 50).save(tmp_path / "mixed" / c / "small.png")
    with pytest.raises(DataError, match="differ in size.*--image-size"):
        load_dataset(str(tmp_path / "mixed"))
    ds = load_dataset(str(tmp_path / "mixed"), image_size="8", preprocess="none")
    assert ds.x.shape == (4, 1, 8, 8) and ds.preprocess == "none"
    x = ds.x[torch.arange(4)]
    assert float(x.max()) <= 1.0 and abs(float(x[0].mean()) - 200 / 255) < 0.02
    rgb = load_dataset(str(tmp_path / "mixed"), image_size="8,6", channels=3)
    assert rgb.x.shape == (4, 3, 8, 6) and rgb.preprocess == "0.5,0.5,0.5/0.5,0.5,0.5"


def test_a_job_runs_on_a_split_image_folder(tmp_path):
    import json

    import yaml

    from geopath.io.archs import build_model
    from geopath.io.checkpoint import save_checkpoint

    from .._helpers import cli

    rng = np.random.default_rng(0)
    from PIL import Image

    for split, n in (("train", 24), ("test", 10)):
        for c, level in (("dark", 40), ("light", 210)):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(level + rng.normal(0, 20, (8, 8)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "L").save(tmp_path / "imgs" / split / c / f"{i}.png")
    kw = {"in_features": 64, "hidden": [8], "num_classes": 2}
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "net.safetensors", build_model("mlp", kw), "mlp", kw)
    out = tmp_path / "out"
    proc = cli("sparsify", tmp_path / "net.safetensors", "-o", out, "--data", tmp_path / "imgs", "--sparsity", "0.5",
               "--steps", "2", "--max-steps", "2", "--batch-size", "8", "--cg-iters", "2",
               "--save-every", "1", "--train-eval-size", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["sparsity"] == pytest.approx(0.5, abs=0.02)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"] == str((tmp_path / "imgs").resolve()) and saved["normalize"] == "0.5/0.5"
    ev = json.loads(cli("eval", out / "final.safetensors", "--json").stdout)  # the split's test images
    assert ev["samples"] == 20 and ev["split"] == "test" and ev["preprocess"] == "0.5/0.5"


def test_a_plain_test_folder_missing_a_class_is_labelled_as_training_labelled_it(tmp_path):
    """Plain image folders for training (ant, bee, cat) and scoring (ant, cat): scored apart from the folder the
    network trained on (``eval --data``, a job's ``--eval-data``), cat keeps label 2 instead of shifting to 1."""
    import json

    from geopath.io.archs import build_model
    from geopath.io.checkpoint import save_checkpoint
    from geopath.io.data import training_classes

    from .._helpers import cli

    _images(tmp_path / "train", classes=("ant", "bee", "cat"), n=2)
    _images(tmp_path / "held", classes=("ant", "cat"), n=2, seed=1)
    assert training_classes(str(tmp_path / "train")) == ["ant", "bee", "cat"]
    assert training_classes("mnist") is None and training_classes(str(tmp_path / "none")) is None
    held = load_dataset(str(tmp_path / "held"), classes=training_classes(str(tmp_path / "train")))
    assert sorted(held.y.tolist()) == [0, 0, 2, 2]
    kw = {"in_features": 108, "hidden": [4], "num_classes": 3}
    net = build_model("mlp", kw)
    with torch.no_grad():  # a network that answers "cat" (class 2) whatever it sees
        for p in net.parameters():
            p.zero_()
        net.layers[-1].bias[2] = 1.0
    save_checkpoint(tmp_path / "net.safetensors", net, "mlp", kw,
                    extra={"data": str((tmp_path / "train").resolve()), "preprocess": "0.5/0.5"})
    ev = cli("eval", tmp_path / "net.safetensors", "--data", tmp_path / "held", "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["accuracy"] == 0.5  # the two cats (0.0 with cat read as class 1)
    _images(tmp_path / "odd", classes=("ant", "dog"), n=1)
    odd = cli("eval", tmp_path / "net.safetensors", "--data", tmp_path / "odd")
    assert odd.returncode == 2 and "dog have no counterpart" in odd.stderr
    # a job on a subset of the training folder's classes: metric and test labels both as training's
    from geopath.config import SparsifyConfig
    from geopath.io.checkpoint import load_checkpoint
    from geopath.jobs.common import single_task_data

    _images(tmp_path / "subset", classes=("ant", "cat"), n=2, seed=2)
    cfg = SparsifyConfig(checkpoint="x", out="o", sparsity=0.5, data=str(tmp_path / "subset"),
                         eval_data=str(tmp_path / "held")).validate()
    splits = single_task_data(cfg, load_checkpoint(tmp_path / "net.safetensors"), "cpu")
    assert sorted(splits.metric.y.tolist()) == sorted(splits.test.y.tolist()) == [0, 0, 2, 2]
    # geopath train scores on a plain test folder with the training folder's labels too
    trained = cli("train", "--arch", "mlp", "--arch-kwargs", '{"in_features": 108, "hidden": [4], "num_classes": 3}',
                  "--data", tmp_path / "train", "--eval-data", tmp_path / "held", "--epochs", "1", "-o",
                  tmp_path / "t.safetensors", "--json")
    assert trained.returncode == 0, trained.stderr
    again = cli("eval", tmp_path / "t.safetensors", "--data", tmp_path / "held", "--json")
    assert json.loads(trained.stdout)["test_accuracy"] == json.loads(again.stdout)["accuracy"]


def test_a_job_reads_images_at_the_size_and_channels_its_checkpoint_records(tmp_path):
    """A network trained on images resized to 4×4 grayscale (``geopath train --image-size 4 --channels 1``
    records both) is sparsified on the same 8×8 RGB folder without the flags: the job reads the images as the
    checkpoint records (not at their stored size, which would feed a network that accepts any size the wrong
    inputs), records the reading in its config, and its saved networks record it again; a flag given wins."""
    import json

    import yaml

    from geopath.io.archs import build_model
    from geopath.io.checkpoint import load_checkpoint, save_checkpoint

    from .._helpers import cli

    _images(tmp_path / "imgs" / "train", n=6, size=8)
    _images(tmp_path / "imgs" / "test", n=3, size=8, seed=1)
    kw = {"in_features": 16, "hidden": [8], "num_classes": 2}
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "net.safetensors", build_model("mlp", kw), "mlp", kw,
                    extra={"data": str((tmp_path / "imgs").resolve()), "image_size": "4", "channels": "1"})
    fast = ["--sparsity", "0.5", "--steps", "2", "--max-steps", "2", "--batch-size", "4", "--cg-iters", "2",
            "--train-eval-size", "0", "--settle-epochs", "0.5", "--json"]
    out = tmp_path / "out"
    proc = cli("sparsify", tmp_path / "net.safetensors", "-o", out, *fast)
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["image_size"] == "4" and saved["channels"] == 1
    meta = load_checkpoint(out / "final.safetensors").metadata
    assert meta["geopath.image_size"] == "4" and meta["geopath.channels"] == "1"
    ev = json.loads(cli("eval", out / "final.safetensors", "--json").stdout)
    assert ev["samples"] == 6
    given = cli("sparsify", tmp_path / "net.safetensors", "-o", tmp_path / "given", *fast, "--image-size", "8")
    assert given.returncode == 2 and "cannot take inputs of shape (1, 8, 8)" in given.stderr, given.stderr


def test_a_test_folder_missing_a_class_keeps_the_training_labels(tmp_path):
    _images(tmp_path / "train", classes=("ant", "bee", "cat"), n=2)
    _images(tmp_path / "test", classes=("ant", "cat"), n=2, seed=1)
    te = load_dataset(str(tmp_path), "test")
    assert sorted(te.y.tolist()) == [0, 0, 2, 2]  # cat is class 2, as in training, not 1
    (tmp_path / "test" / "dog").mkdir()
    from PIL import Image

    Image.new("RGB", (6, 6)).save(tmp_path / "test" / "dog" / "0.png")
    with pytest.raises(DataError, match="dog have no counterpart"):
        load_dataset(str(tmp_path), "test")


def test_sixteen_bit_grayscale_is_scaled_not_clipped_and_float_images_are_refused(tmp_path):
    from PIL import Image

    deep = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    for c in ("a", "b"):
        (tmp_path / "deep" / c).mkdir(parents=True)
        Image.fromarray(deep).save(tmp_path / "deep" / c / "0.png")
    ds = load_dataset(str(tmp_path / "deep"), preprocess="none")
    x = ds.x[:2].to("cpu")  # (a folder is decoded a view at a time)
    assert x.shape == (2, 1, 2, 2)
    assert torch.allclose(x[0, 0], torch.from_numpy(deep.astype(np.float32) / 65535.0))  # (clipped: 0, 1, 1, 1)
    rgb = load_dataset(str(tmp_path / "deep"), preprocess="none", channels=3).x[:1].to("cpu")
    assert rgb.shape == (1, 3, 2, 2) and torch.equal(rgb[0, 0], rgb[0, 2])
    for c in ("a", "b"):  # a 16-bit PGM opens in mode I (32-bit), its raw data 16-bit
        (tmp_path / "pgm" / c).mkdir(parents=True)
        Image.fromarray(deep).save(tmp_path / "pgm" / c / "0.pgm")
    pgm = load_dataset(str(tmp_path / "pgm"), preprocess="none").x[:1].to("cpu")
    assert torch.allclose(pgm[0, 0], torch.from_numpy(deep.astype(np.float32) / 65535.0))
    for c in ("a", "b"):
        (tmp_path / "float" / c).mkdir(parents=True)
        Image.fromarray(deep.astype(np.float32)).save(tmp_path / "float" / c / "0.tiff")
    with pytest.raises(DataError, match=r"0\.tiff: 'F' pixels \(floats of no fixed range\).*convert the folder"):
        load_dataset(str(tmp_path / "float")).x[:1].to("cpu")


def test_two_networks_must_record_the_same_reading_but_may_write_it_two_ways():
    from geopath.config import ConnectConfig
    from geopath.jobs.common import with_reading

    class Recorded:
        def __init__(self, size, channels):
            self.size, self.channels = size, channels

        def reading(self):
            return None, self.size, self.channels

    cfg = ConnectConfig(checkpoint="a", checkpoint_b="b", out="o")
    same = with_reading(cfg, Recorded("28", 1), Recorded("28,28", None))
    assert same.image_size in ("28", "28,28") and same.channels == 1
    with pytest.raises(UsageError, match=r"record different --image-size \(28 and 32\): pass --image-size"):
        with_reading(cfg, Recorded("28", None), Recorded("32", None))
    with pytest.raises(UsageError, match="record different --channels"):
        with_reading(cfg, Recorded(None, 1), Recorded(None, 3))
    given = with_reading(ConnectConfig(checkpoint="a", checkpoint_b="b", out="o", image_size="16"),
                         Recorded("28", None), Recorded("32", None))
    assert given.image_size == "16"  # a flag given wins, and nothing is compared
    assert with_reading(cfg, Recorded(None, None)) is cfg


def test_an_image_folder_comes_in_a_fixed_order_that_mixes_its_classes(tmp_path):
    """The first and last N of a folder (metric inputs, --eval-size, BatchNorm data; a validation split) hold
    every class: sorted by class, the first 40 of 3 × 40 images were all class 0 and the last 30 all class 2."""
    _images(tmp_path / "imgs", classes=("ant", "bee", "cat"), n=40, size=4)
    ds = load_dataset(str(tmp_path / "imgs"))
    classes = ["ant", "bee", "cat"]
    assert [f.parent.name for f in ds.x.files] == [classes[c] for c in ds.y.tolist()]  # labels go with files
    assert set(ds.y[:15].tolist()) == {0, 1, 2} and set(ds.y[-15:].tolist()) == {0, 1, 2}
    assert sorted(ds.y.tolist()) == sorted([0, 1, 2] * 40)
    again = load_dataset(str(tmp_path / "imgs"))
    assert again.x.files == ds.x.files  # the same order in every run


def test_hidden_entries_of_an_image_folder_are_skipped(tmp_path):
    from PIL import Image

    _images(tmp_path / "imgs", n=2)
    (tmp_path / "imgs" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "imgs" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 not an image")  # (macOS metadata)
    (tmp_path / "imgs" / "dog" / ".cache").mkdir()
    Image.new("RGB", (6, 6)).save(tmp_path / "imgs" / "dog" / ".cache" / "0.png")
    ds = load_dataset(str(tmp_path / "imgs"))
    assert len(ds) == 4 and sorted(ds.y.tolist()) == [0, 0, 1, 1]
    assert ds.x[torch.arange(4)].shape == (4, 3, 6, 6)


def test_one_grayscale_image_does_not_make_a_colour_folder_grayscale(tmp_path):
    from PIL import Image

    _images(tmp_path / "imgs", n=5)
    Image.new("L", (6, 6), 10).save(tmp_path / "imgs" / "cat" / "-0.png")  # (sorted first)
    ds = load_dataset(str(tmp_path / "imgs"))
    assert ds.x.shape[1] == 3
    assert ds.x[torch.arange(len(ds))].shape == (11, 3, 6, 6)


def test_big_endian_sixteen_bit_images_are_grayscale(tmp_path):
    from PIL import Image

    deep = np.array([[0, 32768], [65535, 1000]], dtype=">u2")
    for c in ("a", "b"):
        (tmp_path / "be" / c).mkdir(parents=True)
        Image.frombytes("I;16B", (2, 2), deep.tobytes()).save(tmp_path / "be" / c / "0.tiff")
    with Image.open(tmp_path / "be" / "a" / "0.tiff") as im:
        assert im.mode == "I;16B"
    ds = load_dataset(str(tmp_path / "be"), preprocess="none")
    assert ds.x.shape[1] == 1
    x = ds.x[:1].to("cpu")
    assert torch.allclose(x[0, 0], torch.from_numpy(deep.astype(np.float32) / 65535.0))


def test_a_split_folder_is_labelled_by_the_networks_classes_and_checked_for_size(tmp_path):
    """A folder laid out by split and scored by a network trained elsewhere takes the network's classes (a
    train/ lacking one shifted every label after it), and test/ must have train/'s image size."""
    _images(tmp_path / "d" / "train", classes=("bee", "cat"), n=2)
    _images(tmp_path / "d" / "test", classes=("bee", "cat"), n=2, seed=1)
    te = load_dataset(str(tmp_path / "d"), "test", classes=["ant", "bee", "cat"])
    assert sorted(te.y.tolist()) == [1, 1, 2, 2]
    assert sorted(load_dataset(str(tmp_path / "d"), "train", classes=["ant", "bee", "cat"]).y.tolist()) == [1, 1, 2, 2]
    with pytest.raises(DataError, match="cat have no counterpart"):
        load_dataset(str(tmp_path / "d"), "test", classes=["ant", "bee"])
    _images(tmp_path / "s" / "train", n=2, size=8)
    _images(tmp_path / "s" / "test", n=2, size=16, seed=1)
    with pytest.raises(DataError, match=r"test/ images are 16×16, train/ images 8×8: pass --image-size"):
        load_dataset(str(tmp_path / "s"), "test")
    assert load_dataset(str(tmp_path / "s"), "test", image_size="8").x.shape == (4, 3, 8, 8)


def test_a_network_trained_on_an_image_folder_records_its_classes(tmp_path):
    """``train`` records the class folders its outputs stand for, and every network a run saves inherits them:
    with the training folder moved away (another machine), a folder lacking a class is still labelled as
    training labelled it (it labelled itself: cat as class 1, accuracy 0.0)."""
    import json
    import shutil

    from geopath.io.checkpoint import load_checkpoint

    from .._helpers import cli

    _images(tmp_path / "train", classes=("ant", "bee", "cat"), n=2)
    _images(tmp_path / "held", classes=("ant", "cat"), n=2, seed=1)
    trained = cli("train", "--arch", "mlp", "--arch-kwargs", '{"in_features": 108, "hidden": [4], "num_classes": 3}',
                  "--data", tmp_path / "train", "--eval-data", tmp_path / "held", "--epochs", "1", "-o",
                  tmp_path / "t.safetensors", "--json")
    assert trained.returncode == 0, trained.stderr
    assert load_checkpoint(tmp_path / "t.safetensors").classes == ["ant", "bee", "cat"]
    run = cli("sparsify", tmp_path / "t.safetensors", "-o", tmp_path / "run", "--sparsity", "0.5", "--steps", "2",
              "--max-steps", "2", "--batch-size", "4", "--cg-iters", "2", "--train-eval-size", "0",
              "--settle-epochs", "0", "--eval-data", tmp_path / "held")
    assert run.returncode == 0, run.stderr
    assert load_checkpoint(tmp_path / "run" / "final.safetensors").classes == ["ant", "bee", "cat"]
    # a network that answers "cat" (class 2) whatever it sees, recording the classes as train did
    from geopath.io.archs import build_model
    from geopath.io.checkpoint import save_checkpoint

    ck = load_checkpoint(tmp_path / "t.safetensors")
    net = build_model("mlp", ck.arch_kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.layers[-1].bias[2] = 1.0
    keep = {k: ck.metadata["geopath." + k] for k in ("data", "preprocess", "classes")}
    save_checkpoint(tmp_path / "cat.safetensors", net, "mlp", ck.arch_kwargs, extra=keep)
    shutil.move(tmp_path / "train", tmp_path / "elsewhere")
    after = cli("eval", tmp_path / "cat.safetensors", "--data", tmp_path / "held", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["accuracy"] == 0.5  # the two cats (0.0 with cat read as class 1)


@pytest.mark.parametrize("text", ["cat", "[1, 2]", "[]", '{"a": 1}'])
def test_recorded_classes_that_are_not_a_list_of_names_are_refused(tmp_path, text):
    from geopath.io.archs import build_model
    from geopath.io.checkpoint import load_checkpoint, save_checkpoint

    kw = {"in_features": 4, "hidden": [3], "num_classes": 2}
    save_checkpoint(tmp_path / "n.safetensors", build_model("mlp", kw), "mlp", kw, extra={"classes": text})
    with pytest.raises(UsageError, match="recorded classes are not a list of names"):
        load_checkpoint(tmp_path / "n.safetensors").classes
