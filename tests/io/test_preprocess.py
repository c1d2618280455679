"""Preprocessing is a stated, recorded part of the data: --normalize, the checkpoint's record, eval's output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geopath.errors import DataError, UsageError
from geopath.io.checkpoint import read_tensors
from geopath.io.data import load_dataset
from geopath.io.preprocess import parse_preprocess

from .._helpers import DATA_ROOT, FAST, SAMPLE, cifar10_present, cli, geopath, needs_mnist


def test_the_flag_has_one_canonical_form():
    assert parse_preprocess(None) is None
    assert parse_preprocess("None") == "none" and parse_preprocess("DATASET") == "dataset"
    assert parse_preprocess("0.13070/0.30810") == "0.1307/0.3081"
    assert parse_preprocess("0.5,0.5,0.5/0.25,0.25,0.25") == "0.5,0.5,0.5/0.25,0.25,0.25"
    for bad in ("0.5", "0.5/0", "a/b", "0.5,0.5/0.2", "mean"):
        with pytest.raises(UsageError, match="--normalize"):
            parse_preprocess(bad)


def test_uint8_images_follow_the_flag_and_state_it(tmp_path):
    x = np.full((4, 2, 2, 3), 255, np.uint8)
    x[:, 0] = 0
    np.savez(tmp_path / "img.npz", x=x, y=np.arange(4))
    default = load_dataset(str(tmp_path / "img.npz"))
    assert default.preprocess == "0.5,0.5,0.5/0.5,0.5,0.5" and float(default.x.max()) == 1.0
    plain = load_dataset(str(tmp_path / "img.npz"), preprocess="none")
    assert plain.preprocess == "none" and float(plain.x.min()) == 0.0 and float(plain.x.max()) == 1.0
    own = load_dataset(str(tmp_path / "img.npz"), preprocess="0.5/0.25")  # one value for every channel
    assert own.preprocess == "0.5,0.5,0.5/0.25,0.25,0.25" and float(own.x.max()) == 2.0
    assert own.head(2).preprocess == own.preprocess
    with pytest.raises(DataError, match="2 channel"):
        load_dataset(str(tmp_path / "img.npz"), preprocess="0.5,0.5/0.2,0.2")


def test_arrays_used_as_stored_refuse_a_normalisation(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.ones((3, 5), np.float32), y=np.zeros(3, np.int64))
    ds = load_dataset(str(tmp_path / "f.npz"))
    assert ds.preprocess == "as stored" and torch.equal(ds.x, torch.ones(3, 5))
    assert load_dataset(str(tmp_path / "f.npz"), preprocess="as stored").preprocess == "as stored"
    with pytest.raises(DataError, match="used as stored"):
        load_dataset(str(tmp_path / "f.npz"), preprocess="none")


@needs_mnist
def test_named_sets_default_to_their_statistics():
    ds = load_dataset("mnist", "test", DATA_ROOT).head(100)
    assert ds.preprocess == "0.1307/0.3081"
    plain = load_dataset("mnist", "test", DATA_ROOT, preprocess="none").head(100)
    torch.testing.assert_close(ds.x, (plain.x - 0.1307) / 0.3081)


@pytest.mark.skipif(not cifar10_present, reason="CIFAR-10 not present")
def test_cifar_states_its_three_channels():
    assert load_dataset("cifar10", "test", DATA_ROOT).preprocess == "0.4914,0.4822,0.4465/0.247,0.2435,0.2616"


@needs_mnist
def test_a_network_trained_on_plain_pixels_is_scored_on_plain_pixels(tmp_path):
    """The issue's case: an MLP trained on ToTensor() inputs; its record makes eval and every job use them."""
    net = tmp_path / "plain.safetensors"
    trained = geopath("train", "--arch", "mlp", "--arch-kwargs", '{"hidden": [32]}', "--size", "2000", "--epochs",
                      "1", "--normalize", "none", "-o", net, "--json")
    assert trained.returncode == 0, trained.stderr
    _, meta = read_tensors(net)
    assert meta["geopath.preprocess"] == "none"
    ev = json.loads(cli("eval", net, "--size", "1000", "--json").stdout)
    assert ev["preprocess"] == "none"
    wrong = json.loads(cli("eval", net, "--size", "1000", "--normalize", "dataset", "--json").stdout)
    assert wrong["preprocess"] == "0.1307/0.3081" and wrong["accuracy"] != ev["accuracy"]
    out = tmp_path / "run"
    proc = cli("sparsify", net, "-o", out, "--sparsity", "0.5", *FAST, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "normalize: none" in (out / "config.yaml").read_text()
    _, meta = read_tensors(out / "final.safetensors")
    assert meta["geopath.preprocess"] == "none"
    start = json.loads((out / "trace.jsonl").read_text().splitlines()[0])
    head = json.loads(cli("eval", net, "--size", "500", "--json").stdout)
    assert start["test_accuracy"] == pytest.approx(head["accuracy"], abs=1e-12)


@needs_mnist
def test_shipped_checkpoints_keep_their_figures():
    ev = json.loads(cli("eval", SAMPLE, "--size", "1000", "--json").stdout)
    assert ev["preprocess"] == "0.1307/0.3081" and ev["accuracy"] > 0.97


@needs_mnist
def test_a_checkpoint_recording_only_its_named_set_reads_other_data_with_that_sets_statistics(tmp_path):
    """The shipped checkpoints record ``mnist`` and no preprocessing. The same MNIST test images as a ``.npz`` file
    (uint8) must be read with MNIST's mean and std, as the network was trained, not the file's default 0.5/0.5: the
    accuracy equals the named set's."""
    import torchvision

    raw = torchvision.datasets.MNIST(str(DATA_ROOT), train=False, download=False)
    np.savez(tmp_path / "mnist_test.npz", x=raw.data[:1000].numpy(), y=raw.targets[:1000].numpy())
    named = json.loads(cli("eval", SAMPLE, "--size", "1000", "--json").stdout)
    as_file = cli("eval", SAMPLE, "--data", tmp_path / "mnist_test.npz", "--json")
    assert as_file.returncode == 0, as_file.stderr
    as_file = json.loads(as_file.stdout)
    assert as_file["preprocess"] == named["preprocess"] == "0.1307/0.3081"
    assert as_file["accuracy"] == named["accuracy"]
    assert json.loads(cli("eval", SAMPLE, "--data", tmp_path / "mnist_test.npz", "--normalize", "dataset",
                          "--json").stdout)["preprocess"] == "0.5/0.5"  # (the flag still wins)
    # float arrays are used as stored, as before (a normalisation applies to uint8 images only)
    x = ((raw.data[:1000].float() / 255 - 0.1307) / 0.3081).numpy()
    np.savez(tmp_path / "float.npz", x=x, y=raw.targets[:1000].numpy())
    as_floats = json.loads(cli("eval", SAMPLE, "--data", tmp_path / "float.npz", "--json").stdout)
    assert as_floats["preprocess"] == "as stored"
    assert as_floats["accuracy"] == pytest.approx(named["accuracy"], abs=2e-3)  # (float32 rounding of a few inputs)
    # a named set other than the recorded one keeps its own statistics (as before)
    other = json.loads(cli("eval", SAMPLE, "--data", "fashion-mnist", "--size", "100", "--json").stdout)
    assert other["preprocess"] == "0.286/0.353"


def test_dataset_of_a_named_set_reads_images_without_statistics_as_that_set(tmp_path):
    assert parse_preprocess("Dataset:MNIST") == "dataset:mnist"
    with pytest.raises(UsageError, match="dataset:NAME"):
        parse_preprocess("dataset:../x")
    x = np.full((2, 4, 4), 255, np.uint8)
    np.savez(tmp_path / "img.npz", x=x, y=np.arange(2))
    ds = load_dataset(str(tmp_path / "img.npz"), preprocess="dataset:mnist")
    assert ds.preprocess == "0.1307/0.3081"
    torch.testing.assert_close(ds.x.max(), torch.tensor((1 - 0.1307) / 0.3081))
    with pytest.raises(DataError, match="not a named data set"):
        load_dataset(str(tmp_path / "img.npz"), preprocess="dataset:imagenet")
