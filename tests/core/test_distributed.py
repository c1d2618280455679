"""Sharding over ranks (torchrun, gloo): products against the dense metric, whole runs against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from geopath.io.checkpoint import read_tensors
from geopath.core.distributed import Group, Single
from geopath.io.manifest import verify_run

from .._helpers import DATA_ROOT, ROOT, SAMPLE, geopath, needs_mnist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "GEOPATH_DATA_ROOT": str(DATA_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)


@pytest.mark.parametrize("n,world", [(11, 2), (10, 2), (7, 3), (2, 4), (128, 2)])
def test_shards_partition_the_batch_in_order(n, world):
    parts = [Group(r, world, torch.device("cpu")).shard(n) for r in range(world)]
    covered = [i for s in parts for i in range(n)[s]]
    assert covered == list(range(n))
    sizes = [len(range(n)[s]) for s in parts]
    assert max(sizes) - min(sizes) <= 1
    assert Single().shard(n) == slice(0, n)


def test_sharded_products_equal_the_dense_metric(tmp_path):
    flag = tmp_path / "ok"
    proc = torchrun(ROOT / "tests" / "_dist_checks.py", "metric", flag)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert flag.read_text() == "ok"


def test_sharded_evaluation_equals_one_process(tmp_path):
    flag = tmp_path / "ok"
    proc = torchrun(ROOT / "tests" / "_dist_checks.py", "evaluation", flag)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert flag.read_text() == "ok"


def test_data_parallel_training_equals_one_process(tmp_path):
    flag = tmp_path / "ok"
    proc = torchrun(ROOT / "tests" / "_dist_checks.py", "train", flag)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert flag.read_text() == "ok"


@needs_mnist
def test_torchrun_sparsify_reproduces_the_single_process_path(tmp_path):
    # (--settle-prune 0: the settle's mask re-choices would turn float rounding at a threshold into another weight)
    args = ["sparsify", SAMPLE, "--sparsity", "0.5", "--steps", "4", "--max-steps", "8", "--metric-size", "2000",
            "--eval-size", "300", "--save-every", "2", "--batch-size", "96", "--settle-prune", "0", "--json"]
    one = geopath(*args, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = torchrun("-m", "geopath", *args, "-o", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    # rank 0 alone reports: one result line on stdout
    assert sum(json.loads(line).get("event") == "result" for line in two.stdout.splitlines()) == 1
    ra = [json.loads(x) for x in (tmp_path / "one" / "trace.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "two" / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ra] == [r["step"] for r in rb] and len(ra) >= 4
    for x, y in zip(ra, rb):
        assert y["distance"] == pytest.approx(x["distance"], rel=1e-4, abs=1e-5)
        assert y["length"] == pytest.approx(x["length"], rel=1e-3)
        assert y["sample_passes"] == pytest.approx(x["sample_passes"], rel=0.02)  # the step checks differ a little
        assert y["test_accuracy"] == pytest.approx(x["test_accuracy"], abs=1.5 / 300)  # sharded evaluation, 300 images
    a, _ = read_tensors(tmp_path / "one" / "final.safetensors")
    b, _ = read_tensors(tmp_path / "two" / "final.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4  # float32 sums in another order
    # rank 0 alone wrote: the files are exactly those of the manifest, no stray temp files
    assert verify_run(tmp_path / "two")["ok"]
    assert not [p for p in (tmp_path / "two").rglob(".*")]
    # --settle-optimizer auto: the ranks share the 256 inputs of the sharpness, measured and paid for once
    sa, sb = (json.loads(p.stdout.splitlines()[-1])["settle_optimizer"] for p in (one, two))
    assert sb["chosen"] == sa["chosen"] and sb["sharpness"] == pytest.approx(sa["sharpness"], rel=1e-4)
    assert rb[0]["sample_passes"] == pytest.approx(ra[0]["sample_passes"])


@needs_mnist
def test_torchrun_prune_finetune_reproduces_one_process(tmp_path):
    """The training-based peers are data-parallel under torchrun: the same network as one process."""
    args = ["sparsify", SAMPLE, "--sparsity", "0.7", "--method", "prune-finetune", "--finetune-epochs", "0.5",
            "--metric-size", "2000", "--eval-size", "300", "--json"]
    one = geopath(*args, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = torchrun("-m", "geopath", *args, "-o", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    a, _ = read_tensors(tmp_path / "one" / "final.safetensors")
    b, _ = read_tensors(tmp_path / "two" / "final.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # float32 sums in another order
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert sb["sample_passes"] == sa["sample_passes"] > 0
    assert sb["test_accuracy"] == pytest.approx(sa["test_accuracy"], abs=1.5 / 300)
    assert verify_run(tmp_path / "two")["ok"]
