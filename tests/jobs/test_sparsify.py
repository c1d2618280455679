"""A real sparsify run on a slice of MNIST: files, trace consistency, endpoint, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from geopath.core.params import ParamSpace, model_vector
from geopath.io.checkpoint import load_checkpoint, read_tensors
from geopath.io.data import load_dataset
from geopath.core.evaluate import evaluate
from geopath.core.targets import MagnitudeTarget, prunable_parameters
from geopath.io.trace import read_csv

from .._helpers import DATA_ROOT, FAST, ROOT, SAMPLE, geopath, needs_mnist

pytestmark = needs_mnist


@pytest.fixture(scope="module")
def run70(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.7", *FAST, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, [json.loads(l) for l in proc.stdout.splitlines()]


def test_writes_expected_files(run70):
    out, lines = run70
    for name in ("config.yaml", "trace.csv", "trace.jsonl", "final.safetensors", "summary.json", "manifest.json"):
        assert (out / name).is_file(), name
    steps = sorted(p.name for p in (out / "steps").iterdir())
    assert steps[0] == "step_00000.safetensors" and len(steps) >= 3
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in read_csv(out / "trace.csv")] == [str(r["step"]) for r in rows]
    # stdout: one JSON object per line, a step event per trace row, then the result
    assert [l["event"] for l in lines] == ["step"] * len(rows) + ["result"]
    assert lines[-1]["test_accuracy"] == rows[-1]["test_accuracy"]
    # every row's checkpoint is on disk, and the manifest hashes match
    import hashlib

    manifest = json.loads((out / "manifest.json").read_text())
    for r in rows:
        assert r["checkpoint"] in manifest
    for rel, digest in manifest.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest


def test_config_is_resolved_and_reusable(run70, tmp_path):
    out, _ = run70
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["sparsity"] == 0.7 and cfg["arch"] == "mlp" and cfg["data"] == "mnist"
    assert cfg["step_size"] > 0 and cfg["max_steps"] == 12  # the defaults were resolved


def test_trace_reproduced_by_saved_networks(run70):
    out, _ = run70
    test = load_dataset("mnist", "test", DATA_ROOT).head(500)
    start = load_checkpoint(SAMPLE).model
    space = ParamSpace.of(start)
    target = MagnitudeTarget(space, model_vector(start, space), 0.7, prunable_parameters(start))
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    for r in rows:
        ck = load_checkpoint(out / r["checkpoint"])
        ev = evaluate(ck.model, test)
        assert ev.accuracy == pytest.approx(r["test_accuracy"], abs=1e-12)
        assert ev.loss == pytest.approx(r["test_loss"], rel=1e-5)
        assert target.distance(model_vector(ck.model, space)) == pytest.approx(r["distance"], rel=1e-5, abs=1e-6)
        assert ck.metadata["geopath.step"] == str(r["step"])
        assert ck.metadata["geopath.parent_sha256"] == load_checkpoint(SAMPLE).sha256


def test_endpoint_exactly_on_hyperplane(run70):
    out, _ = run70
    start = load_checkpoint(SAMPLE).model
    space = ParamSpace.of(start)
    target = MagnitudeTarget(space, model_vector(start, space), 0.7, prunable_parameters(start))
    tensors, meta = read_tensors(out / "final.safetensors")
    w = space.flatten(tensors)
    assert bool((w[target.mask] == 0).all())  # true zeros, stored as such
    n_prunable = sum(start.get_parameter(p).numel() for p in prunable_parameters(start))
    assert int((torch.cat([tensors[p].reshape(-1) for p in prunable_parameters(start)]) == 0).sum()) >= round(0.7 * n_prunable)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert summary["test_accuracy"] > 0.9  # the function was kept


def test_resume_after_interrupt_matches_uninterrupted(run70, tmp_path):
    """Kill a real run with SIGINT, resume it, and get the uninterrupted result."""
    full_out, _ = run70
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geopath", "sparsify", str(SAMPLE), "-o", str(out), "--sparsity", "0.7",
           *FAST, "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = 0
    for line in proc.stdout:  # wait for the row of step 2, then interrupt
        if json.loads(line).get("step", 0) >= 2:
            seen = 1
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert seen and proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (out / "final.safetensors").exists()
    resumed = geopath("sparsify", "-o", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    a, _ = read_tensors(full_out / "final.safetensors")
    b, _ = read_tensors(out / "final.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ra = [json.loads(l) for l in (full_out / "trace.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    assert [r["test_accuracy"] for r in ra] == [r["test_accuracy"] for r in rb]


def test_structured_removes_whole_neurons(tmp_path):
    out = tmp_path / "out"
    proc = geopath("sparsify", SAMPLE, "-o", out, "--structured", "layers.0:200", *FAST, "--json")
    assert proc.returncode == 0, proc.stderr
    tensors, _ = read_tensors(out / "final.safetensors")
    dead = (tensors["layers.0.weight"].abs().sum(1) == 0) & (tensors["layers.0.bias"] == 0)
    assert int(dead.sum()) == 200
    assert json.loads(proc.stdout.splitlines()[-1])["test_accuracy"] > 0.85


def test_every_saved_network_has_fresh_batchnorm_statistics(tmp_path):
    """Regression: sparsify used to re-estimate BatchNorm statistics at the endpoint only, so the
    trace scored intermediate networks with the start's stale statistics (on a CIFAR VGG11 a path
    that kept 72 % under batch statistics was reported at 35 %)."""
    from .._helpers import train_net
    from .test_connect import _assert_fresh_bn

    start = train_net(tmp_path / "bn.safetensors", "tests._helpers:BNMLP", {}, "mnist", size=1000, epochs=1, seed=0)
    out = tmp_path / "out"
    proc = geopath("sparsify", start, "-o", out, "--arch", "tests._helpers:BNMLP", "--structured", "fc1:16",
                   "--data-root", DATA_ROOT,
                   "--metric-size", "1000", "--eval-size", "300", "--bn-samples", "500", "--steps", "6",
                   "--settle-steps", "2", "--save-every", "2", "--batch-size", "64", "--cg-iters", "3")
    assert proc.returncode == 0, proc.stderr
    bn_data = load_dataset("mnist", "train", DATA_ROOT).head(500)
    test = load_dataset("mnist", "test", DATA_ROOT).head(300)
    ts, _ = read_tensors(start)
    rows = read_csv(out / "trace.csv")
    assert len(rows) >= 4
    for r in rows[1:]:  # (the start keeps its trained statistics)
        _assert_fresh_bn(out / r["checkpoint"], bn_data, [ts])
        net = load_checkpoint(out / r["checkpoint"], trust_code=True).model
        assert evaluate(net, test).accuracy == pytest.approx(float(r["test_accuracy"]), abs=1e-12)
