"""What merge and connect check of their two networks before anything runs: the same file twice, networks built
differently, records that disagree (data set, preprocessing), tasks swapped, a changed B under --resume; and what
their saved networks record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from geopath.io.archs import build_model
from geopath.io.checkpoint import load_checkpoint, read_tensors, save_checkpoint

from .._helpers import DATA_ROOT, ROOT, SAMPLE, cifar10_present, cli, needs_mnist, one_error_line
from .._helpers import one_thread_subprocesses  # noqa: F401 (autouse: one thread per run)

pytestmark = needs_mnist

SEED1 = ROOT / "sample_checkpoints" / "mlp_mnist_seed1.safetensors"
FASHION = ROOT / "sample_checkpoints" / "mlp_fashion_mnist.safetensors"
TINY = ["--data-root", str(DATA_ROOT), "--metric-size", "256", "--eval-size", "128", "--batch-size", "32"]
CONNECT = [*TINY, "--method", "linear", "--points", "3"]
MERGE = [*TINY, "--cg-iters", "1", "--val-size", "64", "--steps", "1", "--max-steps", "1"]


def _resaved(path, source=SEED1, **record):
    """``source``'s network saved again with other records (data set, preprocessing)."""
    ck = load_checkpoint(source)
    save_checkpoint(path, ck.model, ck.arch, ck.arch_kwargs, extra=record)
    return path


def _refused(proc, needle, out=None):
    assert proc.returncode == 2 and needle in one_error_line(proc), proc.stderr
    assert out is None or not out.exists()


def test_connect_refuses_networks_that_read_their_data_differently(tmp_path):
    """B trained on [0, 1] inputs (``--normalize none``) or on another data set: scoring it on A's inputs would
    give B a wrong accuracy (and its saved copy A's records), so it needs --normalize / --data."""
    raw = _resaved(tmp_path / "raw.safetensors", data="mnist", preprocess="none")
    out = tmp_path / "out"
    _refused(cli("connect", SAMPLE, raw, "-o", out, *CONNECT),
             "the networks record different preprocessing (0.1307/0.3081 and none): pass --normalize", out)
    _refused(cli("connect", SAMPLE, FASHION, "-o", out, *CONNECT),
             "the networks record different data sets (mnist and fashion-mnist): pass --data", out)
    # the same preprocessing spelled out on one and left to the data set's default on the other is no conflict
    spelled = _resaved(tmp_path / "spelled.safetensors", data="mnist", preprocess="0.1307/0.3081")
    proc = cli("connect", SAMPLE, spelled, "-o", tmp_path / "ok", *CONNECT)
    assert proc.returncode == 0, proc.stderr
    proc = cli("connect", SAMPLE, raw, "-o", tmp_path / "chosen", *CONNECT, "--normalize", "none")
    assert proc.returncode == 0, proc.stderr  # the user's choice, recorded
    _, meta = read_tensors(tmp_path / "chosen" / "final.safetensors")
    assert meta["geopath.preprocess"] == "none"


@pytest.mark.parametrize("job, extra", [("connect", CONNECT), ("merge", MERGE)])
def test_the_same_network_twice_is_refused(tmp_path, job, extra):
    out = tmp_path / "out"
    _refused(cli(job, SAMPLE, SAMPLE, "-o", out, *extra), "A and B are the same file", out)
    copy = _resaved(tmp_path / "copy.safetensors", source=SAMPLE, data="mnist", note="another file")
    needle = "networks A and B have the same weights"
    _refused(cli(job, SAMPLE, copy, "-o", out, *extra, *(["--data-b", "mnist"] if job == "merge" else [])), needle,
             out)


def test_networks_with_the_same_shapes_built_differently_are_refused(tmp_path):
    """Two LeNet-5s for 28 and for 32 pixels have the same tensors but not the same padding: B's weights would run
    in A's network."""
    paths = []
    for size in (None, 32):
        torch.manual_seed(0 if size is None else 1)
        kwargs = {} if size is None else {"image_size": size}
        path = tmp_path / f"lenet{size}.safetensors"
        save_checkpoint(path, build_model("lenet5", kwargs), "lenet5", kwargs, extra={"data": "mnist"})
        paths.append(path)
    out = tmp_path / "out"
    _refused(cli("connect", *paths, "-o", out, *CONNECT), "are lenet5 built differently (options {} and "
                                                           "{'image_size': 32}): pass --arch-kwargs", out)


def test_a_resumed_connect_refuses_a_changed_network_b(tmp_path):
    """Every saved network records B's sha256: a walk resumed after B's file was replaced stops instead of mixing
    steps toward two different networks."""
    b = tmp_path / "b.safetensors"
    shutil.copy(SEED1, b)
    out = tmp_path / "run"
    proc = cli("connect", SAMPLE, b, "-o", out, *TINY, "--cg-iters", "1", "--path", "walk", "--steps", "2",
               "--max-steps", "3",
               "--save-every", "1", "--points", "3")
    assert proc.returncode == 0, proc.stderr
    _, meta = read_tensors(out / "final.safetensors")
    assert meta["geopath.parent_b_sha256"] == load_checkpoint(SEED1).sha256
    for name in ("manifest.json", "summary.json", "final.safetensors", "points.json"):  # as if interrupted
        (out / name).unlink()
    shutil.rmtree(out / "points")
    _resaved(b, source=FASHION, data="mnist")  # another network B, recorded as B was
    _refused(cli("connect", "-o", out, "--resume"), "the run was started toward a different checkpoint B")


def test_merge_refuses_swapped_tasks_and_records_each_task_s_reading(tmp_path):
    """--data-a/--data-b that swap the networks' recorded data sets are refused; a merge of networks read
    differently records each task's data set and preprocessing, so `eval` scores either task as the merge did
    (task B read with A's statistics scored 0.62 where the run said 0.86), and refuses data of neither task
    without --normalize."""
    _refused(cli("merge", SAMPLE, FASHION, "-o", tmp_path / "swap", *MERGE, "--data-a", "fashion-mnist",
                 "--data-b", "mnist"), "--data-a fashion-mnist and --data-b mnist swap the tasks", tmp_path / "swap")
    raw = _resaved(tmp_path / "raw.safetensors", source=FASHION, data="fashion-mnist", preprocess="none")
    out = tmp_path / "merged"
    proc = cli("merge", SAMPLE, raw, "-o", out, *TINY, "--val-size", "64", "--method", "average", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    _, meta = read_tensors(out / "best.safetensors")
    assert (meta["geopath.data"], meta["geopath.preprocess"]) == ("mnist", "0.1307/0.3081")
    assert (meta["geopath.data_b"], meta["geopath.preprocess_b"]) == ("fashion-mnist", "none")
    for data, key in (("mnist", "test_accuracy_a"), ("fashion-mnist", "test_accuracy_b")):
        ev = cli("eval", out / "best.safetensors", "--data", data, "--size", "128", "--json")
        assert ev.returncode == 0, ev.stderr
        assert json.loads(ev.stdout)["accuracy"] == pytest.approx(summary[key], abs=1e-12), data
    import torchvision

    raw_b = torchvision.datasets.FashionMNIST(str(DATA_ROOT), train=False, download=False)
    np.savez(tmp_path / "b.npz", x=raw_b.data[:128].numpy(), y=raw_b.targets[:128].numpy())
    _refused(cli("eval", out / "best.safetensors", "--data", tmp_path / "b.npz"),
             "a merged network whose tasks read their inputs differently")
    ev = cli("eval", out / "best.safetensors", "--data", tmp_path / "b.npz", "--normalize", "none", "--json")
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(summary["test_accuracy_b"], abs=1e-12)


def test_merge_split_head_counts_classes_on_the_whole_training_split(tmp_path):
    """--metric-size 3 holds three labels; the tasks still have ten classes each (it widened the heads to 20)."""
    proc = cli("merge", SAMPLE, FASHION, "-o", tmp_path / "out", *MERGE, "--head", "split", "--metric-size", "3")
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(tmp_path / "out" / "best.safetensors").arch_kwargs["num_classes"] == 20


def test_a_checkpoint_given_as_data_is_named_as_such(tmp_path):
    _refused(cli("merge", SAMPLE, FASHION, "-o", tmp_path / "out", *MERGE, "--data-b", SEED1),
             f"--data-b {SEED1}: a checkpoint file, not a data set", tmp_path / "out")


@pytest.mark.skipif(not cifar10_present, reason="CIFAR-10 not in the data root")
def test_connect_on_inputs_the_networks_cannot_take_is_a_usage_error(tmp_path):
    _refused(cli("connect", SAMPLE, SEED1, "-o", tmp_path / "out", *CONNECT, "--data", "cifar10", "--eval-data",
                 "mnist"), "network A cannot take inputs of shape (3, 32, 32) from cifar10", tmp_path / "out")
