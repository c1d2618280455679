"""Inputs that are well-formed files but wrong data: each gets a one-line error and exit code 2, never a hang,
a traceback or a number computed from misread data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geopath.errors import CheckpointError, DataError
from geopath.io.archs import build_model
from geopath.io.checkpoint import load_checkpoint, save_checkpoint
from geopath.io.data import load_dataset
from geopath.io.preprocess import parse_preprocess

from .._helpers import cli, geopath, one_error_line

KW = {"in_features": 4, "hidden": [5], "num_classes": 2}


def _net(path):
    torch.manual_seed(0)
    save_checkpoint(path, build_model("mlp", KW), "mlp", KW)
    return path


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return path


def test_one_hot_or_fractional_labels_are_refused_not_flattened(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    one_hot = np.eye(2, dtype=np.int64)[np.arange(10) % 2]
    with pytest.raises(DataError, match=r"one class index per input.*shape \(10, 2\); one-hot labels"):
        load_dataset(str(_npz(tmp_path / "onehot.npz", x, one_hot)))
    with pytest.raises(DataError, match="whole class indices, got float32"):
        load_dataset(str(_npz(tmp_path / "soft.npz", x, np.full(10, 0.5, np.float32))))
    with pytest.raises(DataError, match="whole class indices"):
        load_dataset(str(_npz(tmp_path / "nan.npz", x, np.full(10, np.nan))))
    # a column of labels, and whole-valued floats, are what they say
    column = load_dataset(str(_npz(tmp_path / "column.npz", x, (np.arange(10) % 2)[:, None])))
    floats = load_dataset(str(_npz(tmp_path / "floats.npz", x, (np.arange(10) % 2).astype(np.float32))))
    booleans = load_dataset(str(_npz(tmp_path / "bool.npz", x, np.arange(10) % 2 == 1)))
    assert column.y.tolist() == floats.y.tolist() == booleans.y.tolist() == [0, 1] * 5
    proc = cli("eval", _net(tmp_path / "net.safetensors"), "--data", tmp_path / "onehot.npz")
    assert proc.returncode == 2 and "one-hot labels" in one_error_line(proc)


def test_empty_data_and_sizes_below_one_are_refused_and_train_never_waits_forever(tmp_path):
    x, y = np.zeros((6, 4), np.float32), np.arange(6) % 2
    with pytest.raises(DataError, match="holds no inputs"):
        load_dataset(str(_npz(tmp_path / "empty.npz", x[:0], y[:0])))
    data = _npz(tmp_path / "ok.npz", x, y)
    out = tmp_path / "trained.safetensors"
    for size in ("0", "-3"):  # (--size 0 used to loop forever waiting for a batch; -3 read x[:-3])
        proc = geopath("train", "--arch", "mlp", "--arch-kwargs", '{"in_features": 4, "hidden": [5], "num_classes": 2}',
                       "--data", data, "--eval-data", data, "--size", size, "-o", out, timeout=120)
        assert proc.returncode == 2 and "--size must be ≥ 1" in one_error_line(proc)
        ev = cli("eval", _net(tmp_path / "net.safetensors"), "--data", data, "--size", size)
        assert ev.returncode == 2 and "--size must be ≥ 1" in one_error_line(ev)
    assert not out.exists()
    from geopath.core.dataset import Dataset
    from geopath.core.train import train

    with pytest.raises(ValueError, match="no training samples"):
        train(build_model("mlp", KW), Dataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), "x", "train"))


def test_eval_checks_the_inputs_and_classes_against_the_network(tmp_path):
    net = _net(tmp_path / "net.safetensors")
    wide = _npz(tmp_path / "wide.npz", np.zeros((6, 7), np.float32), np.arange(6) % 2)
    proc = cli("eval", net, "--data", wide)
    assert proc.returncode == 2 and "cannot take inputs of shape (7,)" in one_error_line(proc)
    many = _npz(tmp_path / "many.npz", np.zeros((6, 4), np.float32), np.arange(6))
    proc = cli("eval", net, "--data", many)
    assert proc.returncode == 2 and "has (2,) outputs but" in one_error_line(proc) and "6 classes" in proc.stderr


def test_flat_uint8_arrays_are_refused_not_broadcast(tmp_path):
    flat = _npz(tmp_path / "flat.npz", np.zeros((6, 4), np.uint8), np.arange(6) % 2)
    with pytest.raises(DataError, match=r"uint8 arrays are read as images.*shape \(6, 4\); store flat features"):
        load_dataset(str(flat))


def test_normalize_needs_finite_values():
    for text in ("nan/1", "0/inf", "0.5/nan", "inf,0/1,1"):
        with pytest.raises(DataError, match="finite, each std > 0"):
            parse_preprocess(text)
    assert parse_preprocess("0.1307/0.3081") == "0.1307/0.3081"


def test_recorded_preprocessing_on_float_data_does_not_blame_a_flag_the_user_never_passed(tmp_path):
    net = tmp_path / "net.safetensors"
    torch.manual_seed(0)
    save_checkpoint(net, build_model("mlp", KW), "mlp", KW, extra={"preprocess": "0.1307/0.3081"})
    data = _npz(tmp_path / "float.npz", np.zeros((6, 4), np.float32), np.arange(6) % 2)
    proc = cli("eval", net, "--data", data)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "or what the checkpoint records" in line and "pass --normalize dataset" in line


def test_a_file_that_is_not_a_torch_checkpoint_is_not_called_a_refused_pickle(tmp_path):
    renamed = tmp_path / "weights.pt"
    renamed.write_bytes(_net(tmp_path / "net.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="looks like a safetensors file.*\\.safetensors suffix"):
        load_checkpoint(renamed)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for trust in (False, True):
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            load_checkpoint(text, trust_pickle=trust)
    proc = cli("inspect", renamed)
    assert proc.returncode == 2 and "--trust-pickle" not in one_error_line(proc)


def test_architecture_options_in_metadata_must_be_an_object(tmp_path):
    net = tmp_path / "net.safetensors"
    save_checkpoint(net, build_model("mlp", KW), "mlp", KW)
    from safetensors.torch import load_file, save_file

    from geopath.io.checkpoint import read_tensors

    tensors, meta = read_tensors(net)
    save_file(load_file(str(net)), str(net), metadata={**meta, "geopath.arch_kwargs": "[1]"})
    with pytest.raises(CheckpointError, match="arch_kwargs is not a JSON object.*got list"):
        load_checkpoint(net)
