"""Real connect runs between two MNIST MLPs on small slices: the geodesic lands on B, points
and barriers agree with the trace, the peers' paths are what they claim, BatchNorm statistics
are re-estimated at every evaluated network."""

from __future__ import annotations

import json

import pytest
import torch

from geopath.core.params import ParamSpace, model_vector
from geopath.io.checkpoint import load_checkpoint, read_tensors
from geopath.io.data import load_dataset
from geopath.core.evaluate import evaluate, recompute_batchnorm

from .._helpers import (DATA_ROOT, SAMPLE, check_manifest, cifar10_present, geopath, jsonl, needs_mnist,
                       train_net)
from .._helpers import one_thread_subprocesses  # noqa: F401 (autouse: one thread per run)

pytestmark = needs_mnist

POINTS = 5
SLICES = ["--data-root", str(DATA_ROOT), "--metric-size", "2000", "--eval-size", "500", "--batch-size", "64",
          "--save-every", "5", "--points", str(POINTS)]
# the greedy walk (not the default); β = 10: it reaches B's neighbourhood within --steps, so no landing jump is needed
GEO = [*SLICES, "--path", "walk", "--cg-iters", "3", "--steps", "20", "--beta", "10"]
BN_NAMES = ("running_mean", "running_var")


def _vec(path) -> torch.Tensor:
    ck = load_checkpoint(path)
    return model_vector(ck.model, ParamSpace.of(ck.model))


@pytest.fixture(scope="module")
def net_b(tmp_path_factory):
    """A second, independently trained MNIST MLP (seed 1, 3000 samples, one epoch)."""
    return train_net(tmp_path_factory.mktemp("nets") / "mlp_b.safetensors", size=3000, epochs=1.0, seed=1)


@pytest.fixture(scope="module")
def test_slice():
    return load_dataset("mnist", "test", DATA_ROOT).head(500)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, net_b):
    """``runs(name)``: run directory of a connect between A and B (each run once per module)."""
    base, done = tmp_path_factory.mktemp("connect"), {}
    options = {"geodesic": GEO, "linear": [*SLICES, "--method", "linear"],
               "align": [*SLICES, "--method", "linear", "--align"],
               "bezier": [*SLICES, "--method", "bezier", "--epochs", "0.2"],
               "short": [*SLICES, "--path", "walk", "--cg-iters", "3", "--steps", "20", "--max-steps", "4",
                         "--save-every", "2"]}

    def get(name):
        if name not in done:
            proc = geopath("connect", SAMPLE, net_b, "-o", base / name, *options[name])
            assert proc.returncode == 0, proc.stderr
            done[name] = base / name
        return done[name]

    return get


def check_points_and_barriers(out):
    """points/ and points.json agree with the trace; the summary's barriers are recomputed from it."""
    rows, summary = jsonl(out / "trace.jsonl"), json.loads((out / "summary.json").read_text())
    points = json.loads((out / "points.json").read_text())
    assert len(points) == POINTS
    assert sorted(p.name for p in (out / "points").iterdir()) == [f"point_{i:02d}.safetensors" for i in range(POINTS)]
    for i, p in enumerate(points):
        assert p["file"] == f"points/point_{i:02d}.safetensors"
        assert (out / p["file"]).read_bytes() == (out / p["checkpoint"]).read_bytes()
        row = next(r for r in rows if r["checkpoint"] == p["checkpoint"])
        assert (p["t"], p["test_accuracy"], p["test_loss"]) == (row["t"], row["test_accuracy"], row["test_loss"])
    assert points[0]["t"] == 0.0 and points[-1]["t"] == 1.0
    assert points[0]["checkpoint"] == rows[0]["checkpoint"]
    assert points[-1]["checkpoint"] == "final.safetensors"
    on_path = [r for r in rows if r.get("segment") != "jump"]
    for k in range(1, POINTS - 1):
        goal = k / (POINTS - 1)
        nearest = min(abs(r["t"] - goal) for r in rows)  # the landing segment's rows are on the path too
        assert abs(points[k]["t"] - goal) == pytest.approx(nearest, abs=1e-12)  # the nearest evaluated network
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)
    # barriers over every evaluated network, jump rows included
    end = on_path[-1]
    losses, accs = [r["test_loss"] for r in rows], [r["test_accuracy"] for r in rows]
    assert summary["evaluated_points"] == len(rows)
    assert summary["test_accuracy_a"] == rows[0]["test_accuracy"] and summary["test_accuracy_b"] == end["test_accuracy"]
    assert summary["test_loss_a"] == rows[0]["test_loss"] and summary["test_loss_b"] == end["test_loss"]
    assert summary["min_test_accuracy"] == min(accs) and summary["max_test_loss"] == max(losses)
    assert summary["loss_barrier"] == pytest.approx(max(losses) - 0.5 * (rows[0]["test_loss"] + end["test_loss"]),
                                                    abs=1e-12)
    assert summary["accuracy_barrier"] == pytest.approx(min(rows[0]["test_accuracy"], end["test_accuracy"])
                                                        - min(accs), abs=1e-12)
    assert summary["loss_barrier"] >= 0 and summary["accuracy_barrier"] >= 0
    check_manifest(out)
    return rows, points, summary


# --------------------------------------------------------------------------- geodesic


def test_geodesic_lands_exactly_on_b(runs, net_b):
    out = runs("geodesic")
    a, _ = read_tensors(SAMPLE)
    b, _ = read_tensors(net_b)
    final, meta = read_tensors(out / "final.safetensors")
    assert set(final) == set(b) and all(torch.equal(final[k], b[k]) for k in b)
    start, _ = read_tensors(out / "steps" / "step_00000.safetensors")
    assert all(torch.equal(start[k], a[k]) for k in a)
    rows = jsonl(out / "trace.jsonl")
    assert rows[-1]["checkpoint"] == "final.safetensors" and rows[-1]["distance"] == 0.0 and rows[-1]["t"] == 1.0
    assert meta["geopath.parent_sha256"] == load_checkpoint(SAMPLE).sha256
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reached"] is True and summary["method"] == "geodesic"
    assert not any(r.get("segment") == "jump" for r in rows)
    assert summary["distance_ab"] == pytest.approx(float(torch.linalg.vector_norm(_vec(SAMPLE) - _vec(net_b))),
                                                   rel=1e-6)


def test_geodesic_points_and_barriers(runs, test_slice):
    out = runs("geodesic")
    rows, points, summary = check_points_and_barriers(out)
    for k in range(1, POINTS - 1):
        assert abs(points[k]["t"] - k / (POINTS - 1)) < 0.1
    # progress only grows along the approach, and the distance shrinks with it
    assert all(b["t"] >= a["t"] and b["distance"] <= a["distance"] for a, b in zip(rows, rows[1:]))
    for r in rows:
        assert r["t"] == pytest.approx(1 - r["distance"] / summary["distance_ab"], abs=1e-6)
    # the saved networks give the trace's numbers on the same test slice
    for p in points:
        ev = evaluate(load_checkpoint(out / p["file"]).model, test_slice)
        assert ev.accuracy == pytest.approx(p["test_accuracy"], abs=1e-12)
        assert ev.loss == pytest.approx(p["test_loss"], rel=1e-5)


def test_stopping_short_evaluates_the_landing_segment(runs, net_b):
    out = runs("short")
    rows, _, summary = check_points_and_barriers(out)
    assert summary["reached"] is False
    jump = [r for r in rows if r.get("segment") == "jump"]
    assert len(jump) == 5
    w_end, w_b = _vec(out / "steps" / "step_00004.safetensors"), _vec(net_b)  # where the approach stopped
    for k, r in enumerate(jump, 1):
        s = k / 6
        torch.testing.assert_close(_vec(out / r["checkpoint"]), (1 - s) * w_end + s * w_b, rtol=0, atol=1e-5)
        assert r["distance"] == pytest.approx((1 - s) * float(torch.linalg.vector_norm(w_b - w_end)), rel=1e-4)
    # lands on B anyway
    b, _ = read_tensors(net_b)
    final, _ = read_tensors(out / "final.safetensors")
    assert all(torch.equal(final[k], b[k]) for k in b)


# --------------------------------------------------------------------------- peers


def test_linear_path_is_the_straight_line(runs, net_b):
    out = runs("linear")
    rows, points, summary = check_points_and_barriers(out)
    w_a, w_b = _vec(SAMPLE), _vec(net_b)
    assert [r["t"] for r in rows] == [k / (POINTS - 1) for k in range(POINTS)]
    assert [r["alpha"] for r in rows] == [r["t"] for r in rows]
    for r in rows:
        torch.testing.assert_close(_vec(out / r["checkpoint"]), (1 - r["t"]) * w_a + r["t"] * w_b, rtol=0, atol=1e-7)
    assert torch.equal(_vec(out / "final.safetensors"), w_b) and torch.equal(_vec(out / points[0]["file"]), w_a)
    assert summary["method"] == "linear" and summary["aligned"] is False


def test_linear_align_ends_at_a_permutation_of_b(runs, net_b, test_slice):
    out = runs("align")
    _, _, summary = check_points_and_barriers(out)
    assert summary["aligned"] is True
    b_net = load_checkpoint(net_b).model
    end = load_checkpoint(out / "final.safetensors").model
    b, _ = read_tensors(net_b)
    e, _ = read_tensors(out / "final.safetensors")
    assert not all(torch.equal(b[k], e[k]) for k in b)  # other weights ...
    for k in b:  # ... a permutation of B's: the same values
        assert torch.equal(torch.sort(b[k].flatten()).values, torch.sort(e[k].flatten()).values), k
    assert torch.equal(b["layers.2.bias"], e["layers.2.bias"])  # the outputs are not permuted
    ev_b, ev_e = evaluate(b_net, test_slice), evaluate(end, test_slice)  # ... and the same function
    assert ev_e.accuracy == pytest.approx(ev_b.accuracy, abs=1e-6)
    assert ev_e.loss == pytest.approx(ev_b.loss, abs=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(end(test_slice.x[:64]), b_net(test_slice.x[:64]), rtol=1e-4, atol=1e-4)
    assert summary["test_accuracy_b"] == pytest.approx(ev_b.accuracy, abs=1e-12)
    # alignment brings B closer to A
    assert summary["distance_ab"] < json.loads((runs("linear") / "summary.json").read_text())["distance_ab"]
    assert torch.equal(_vec(out / "steps" / "step_00000.safetensors"), _vec(SAMPLE))


def test_bezier_endpoints_are_a_and_b(runs, net_b):
    out = runs("bezier")
    rows, points, summary = check_points_and_barriers(out)
    w_a, w_b = _vec(SAMPLE), _vec(net_b)
    assert torch.equal(_vec(out / points[0]["file"]), w_a)
    assert torch.equal(_vec(out / "final.safetensors"), w_b)
    assert [r["t"] for r in rows] == [k / (POINTS - 1) for k in range(POINTS)]
    # the middle of the curve was trained: it is off the straight line
    mid = _vec(out / rows[2]["checkpoint"])
    assert float(torch.linalg.vector_norm(mid - 0.5 * (w_a + w_b))) > 1e-3
    assert summary["method"] == "bezier" and summary["epochs"] > 0


# --------------------------------------------------------------------------- BatchNorm


def _assert_fresh_bn(path, data, stored_elsewhere):
    """``path``'s BatchNorm statistics are what recompute_batchnorm gives on ``data`` for its weights,
    and differ from the statistics stored in ``stored_elsewhere`` (the trained endpoints)."""
    tensors, _ = read_tensors(path)
    net = load_checkpoint(path, trust_code=True).model  # a test architecture (tests._helpers:BNMLP)
    recompute_batchnorm(net, data)
    fresh = net.state_dict()
    bn_keys = [k for k in tensors if k.rsplit(".", 1)[-1] in BN_NAMES]
    assert bn_keys
    for k in bn_keys:
        torch.testing.assert_close(tensors[k], fresh[k], rtol=1e-4, atol=1e-5)
        for other in stored_elsewhere:
            assert not torch.allclose(tensors[k], other[k], rtol=1e-3, atol=1e-4), k


@pytest.mark.skipif(not cifar10_present, reason=f"CIFAR-10 not found under {DATA_ROOT / 'cifar10'}")
def test_batchnorm_statistics_are_recomputed_vgg_linear(tmp_path):
    kw = {"width": 0.125}
    a = train_net(tmp_path / "vgg_a.safetensors", "vgg11", kw, "cifar10", size=256, epochs=0.5, seed=0, batch_size=64)
    b = train_net(tmp_path / "vgg_b.safetensors", "vgg11", kw, "cifar10", size=256, epochs=0.5, seed=1, batch_size=64)
    out = tmp_path / "out"
    proc = geopath("connect", a, b, "-o", out, "--method", "linear", "--points", "3", "--data-root", DATA_ROOT,
                   "--metric-size", "256", "--eval-size", "200", "--bn-samples", "128")
    assert proc.returncode == 0, proc.stderr
    bn_data = load_dataset("cifar10", "train", DATA_ROOT).head(128)
    test = load_dataset("cifar10", "test", DATA_ROOT).head(200)
    ta, _ = read_tensors(a)
    tb, _ = read_tensors(b)
    points = json.loads((out / "points.json").read_text())
    for p in points:
        _assert_fresh_bn(out / p["file"], bn_data, [ta, tb])
        assert evaluate(load_checkpoint(out / p["file"]).model, test).accuracy == pytest.approx(p["test_accuracy"],
                                                                                                abs=1e-12)
    # the endpoints keep their weights; only the statistics are new
    for p, ref in ((points[0], ta), (points[-1], tb)):
        t, _ = read_tensors(out / p["file"])
        assert all(torch.equal(t[k], ref[k]) for k in ref if "running" not in k and "num_batches" not in k)


@pytest.mark.parametrize("path", ["walk", "relax"])
def test_batchnorm_statistics_are_recomputed_geodesic(tmp_path, path):
    arch = "tests._helpers:BNMLP"
    a = train_net(tmp_path / "bn_a.safetensors", arch, {}, "mnist", size=1000, epochs=1, seed=0)
    b = train_net(tmp_path / "bn_b.safetensors", arch, {}, "mnist", size=1000, epochs=1, seed=1)
    out = tmp_path / "out"
    own = (["--steps", "6", "--max-steps", "4", "--cg-iters", "3"] if path == "walk" else ["--relax-epochs", "0.3"])
    proc = geopath("connect", a, b, "-o", out, "--arch", arch, "--points", "3", "--data-root", DATA_ROOT,
                   "--metric-size", "1000", "--eval-size", "300", "--bn-samples", "500", "--save-every", "2",
                   "--batch-size", "64", "--path", path, *own)
    assert proc.returncode == 0, proc.stderr
    bn_data = load_dataset("mnist", "train", DATA_ROOT).head(500)
    ta, _ = read_tensors(a)
    tb, _ = read_tensors(b)
    rows = jsonl(out / "trace.jsonl")
    if path == "walk":
        assert any(r.get("segment") == "jump" for r in rows)  # the landing segment too
    else:
        assert [r["t"] for r in rows] == [0.0, 0.5, 1.0]
    for r in rows:
        _assert_fresh_bn(out / r["checkpoint"], bn_data, [ta, tb])
    final, _ = read_tensors(out / "final.safetensors")
    assert all(torch.equal(final[k], tb[k]) for k in tb if "running" not in k and "num_batches" not in k)


def test_relax_path_ends_on_b_records_nodes_and_counts_its_passes(tmp_path, net_b):
    out = tmp_path / "relax"
    options = [*SLICES, "--path", "relax", "--nodes", "3", "--points", "3", "--relax-epochs", "0.5"]
    proc = geopath("connect", SAMPLE, net_b, "-o", out, *options)
    assert proc.returncode == 0, proc.stderr
    rows, summary = jsonl(out / "trace.jsonl"), json.loads((out / "summary.json").read_text())
    assert summary["method"] == "geodesic" and summary["reached"]
    assert [r["t"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]  # --points 3 and every node
    assert torch.equal(_vec(out / "final.safetensors"), _vec(net_b))  # exactly B
    assert torch.equal(_vec(out / rows[0]["checkpoint"]), _vec(SAMPLE))
    # 0.5 epochs of fitting in whole steps (15 of 64: 960 of the 1,000 planned) plus the two endpoints' forward
    # passes over the 2000 metric inputs
    assert rows[-1]["sample_passes"] == pytest.approx(960 + 2 * 2000 / 3)
    mid = _vec(out / rows[2]["checkpoint"])
    assert not torch.allclose(mid, 0.5 * (_vec(SAMPLE) + _vec(net_b)))  # the node moved off the line
    assert summary["min_test_accuracy"] == min(r["test_accuracy"] for r in rows)
    (out / "manifest.json").unlink()  # as if it had been interrupted: the fit is not resumable
    again = geopath("connect", SAMPLE, net_b, "-o", out, *options, "--resume")
    assert again.returncode == 2 and "--path relax" in again.stderr


def test_relax_path_scores_each_point_once(tmp_path, net_b):
    """--points 4 and 2 nodes meet at t = 1/3 and 2/3: four points, not six (the grid's t were rounded, the
    nodes' not, so 0.333333333333 and 0.3333333333333333 were both scored)."""
    out = tmp_path / "relax"
    proc = geopath("connect", SAMPLE, net_b, "-o", out, *SLICES, "--path", "relax", "--nodes", "2", "--points", "4",
                   "--relax-epochs", "0.05", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["t"] for r in jsonl(out / "trace.jsonl")] == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-12)
    assert json.loads(proc.stdout.splitlines()[-1])["evaluated_points"] == 4


@pytest.mark.parametrize("args, message", [
    (["--steps", "20", "--beta", "2"], "--beta, --steps: only --path walk reads them (this run: --path relax)"),
    (["--cg-iters", "3"], "--cg-iters: only --path walk reads it"),
    (["--path", "walk", "--nodes", "2"], "--nodes: only --path relax reads it (this run: --path walk)")])
def test_an_option_the_path_does_not_read_is_refused(tmp_path, net_b, args, message):
    proc = geopath("connect", SAMPLE, net_b, "-o", tmp_path / "x", *SLICES, *args)
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "x").exists()


def test_relax_refuses_zero_nodes(tmp_path, net_b):
    proc = geopath("connect", SAMPLE, net_b, "-o", tmp_path / "x", *SLICES, "--path", "relax", "--nodes", "0")
    assert proc.returncode == 2 and "--nodes" in proc.stderr and not (tmp_path / "x").exists()


@pytest.mark.skipif(not cifar10_present, reason=f"CIFAR-10 not found under {DATA_ROOT / 'cifar10'}")
def test_align_on_a_resnet_ends_on_a_permutation_of_b_with_b_s_function(tmp_path):
    """Residual networks align too (one permutation per residual stream): the path ends on B's function."""
    kw = {"width": 0.25}
    a = train_net(tmp_path / "rn_a.safetensors", "resnet20", kw, "cifar10", size=256, epochs=0.5, seed=0,
                  batch_size=64)
    b = train_net(tmp_path / "rn_b.safetensors", "resnet20", kw, "cifar10", size=256, epochs=0.5, seed=1,
                  batch_size=64)
    out = tmp_path / "out"
    proc = geopath("connect", a, b, "-o", out, "--method", "linear", "--points", "3", "--align", "--data-root",
                   DATA_ROOT, "--metric-size", "256", "--eval-size", "200", "--bn-samples", "128", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aligned"]
    tb, _ = read_tensors(b)
    end, _ = read_tensors(out / "final.safetensors")
    moved = [k for k in tb if not torch.equal(tb[k], end[k])]
    assert "layer1.0.conv1.weight" in moved and "conv1.weight" in moved  # the stream and a block's space moved
    assert torch.equal(tb["fc.bias"], end["fc.bias"])  # the outputs are not permuted
    test = load_dataset("cifar10", "test", DATA_ROOT).head(64)
    b_net, end_net = load_checkpoint(b).model, load_checkpoint(out / "final.safetensors").model.eval()
    recompute_batchnorm(b_net, load_dataset("cifar10", "train", DATA_ROOT).head(128))  # as every point's
    b_net.eval()
    with torch.no_grad():
        torch.testing.assert_close(end_net(test.x), b_net(test.x), rtol=1e-4, atol=1e-4)
    assert summary["distance_ab"] < float(torch.linalg.vector_norm(_vec(a) - _vec(b)))
