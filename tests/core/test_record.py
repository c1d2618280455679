"""Trace rows are made in one place (core/record.py): the engine's, the peers' and connect's jump rows."""

from __future__ import annotations

import math

import torch
from torch import nn

from geopath.core.dataset import Dataset
from geopath.core.record import PeerRecorder, Recorder
from geopath.io.archs import MLP
from geopath.io.rundir import RunWriter


def _writer(out) -> RunWriter:
    out.mkdir(parents=True, exist_ok=True)
    w = RunWriter(out, "mlp", {"in_features": 4, "hidden": [3], "num_classes": 2}, None, "test", None)
    w.trace.create()
    return w


def _net():
    torch.manual_seed(0)
    return MLP(4, [3], 2)


def test_a_row_has_the_documented_keys_in_order_and_is_written(tmp_path):
    writer, seen = _writer(tmp_path), []
    rec = Recorder(writer, lambda net: {"test_accuracy": 0.5, "test_loss": 1.25}, epoch_size=200,
                   on_row=seen.append, extra={"leg": 2})
    row = rec(7, _net(), writer.step_path(7), t=0.25, distance=3.0, sample_passes=100, clock=lambda: 1.5,
              length=2.0, drift=0.1, state={"landed_at": None, "retries": 1}, alpha=0.3)
    assert list(row) == ["step", "leg", "t", "distance", "length", "drift", "sample_passes", "epochs",
                         "test_accuracy", "test_loss", "wall_time", "landed_at", "retries", "alpha", "checkpoint"]
    assert row["epochs"] == 0.5 and row["sample_passes"] == 100.0 and isinstance(row["sample_passes"], float)
    assert row["wall_time"] == 1.5 and row["checkpoint"] == "steps/step_00007.safetensors"
    assert (tmp_path / row["checkpoint"]).is_file()
    assert seen == [row] and writer.trace.rows() == [row]


def test_the_clock_is_read_after_the_network_is_evaluated(tmp_path):
    order = []
    rec = Recorder(_writer(tmp_path), lambda net: order.append("evaluate") or {}, epoch_size=1)
    rec(0, _net(), tmp_path / "steps" / "x.safetensors", t=0.0, distance=0.0, sample_passes=0,
        clock=lambda: order.append("clock") or 0.0)
    assert order == ["evaluate", "clock"]


def test_batchnorm_statistics_are_re_estimated_before_evaluation(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    data = Dataset(torch.randn(64, 4) * 5 + 2, torch.zeros(64, dtype=torch.long), "toy", "train")
    means = []
    writer = RunWriter(tmp_path, "x", {}, None, "test", None)
    writer.trace.create()
    rec = Recorder(writer, lambda n: means.append(n[1].running_mean.clone()) or {}, epoch_size=1, bn_data=data)
    rec(0, net, tmp_path / "steps" / "a.safetensors", t=0.0, distance=0.0, sample_passes=0, clock=lambda: 0.0)
    assert means[0].abs().sum() > 0.1  # no longer the fresh zeros


def test_peer_rows_name_their_files_and_leave_metric_length_empty(tmp_path):
    writer = _writer(tmp_path)
    record = PeerRecorder(Recorder(writer, lambda net: {"test_accuracy": 1.0}, epoch_size=10))
    a = record(0, _net(), 0, t=0.0, distance=2.0)
    b = record(0, _net(), 0, t=1.0, distance=0.0, name="step_00000_pruned")
    c = record(5, _net(), 20, t=1.0, distance=0.0, final=True, alpha=1.0)
    assert [r["checkpoint"] for r in (a, b, c)] == ["steps/step_00000.safetensors",
                                                    "steps/step_00000_pruned.safetensors", "final.safetensors"]
    assert math.isnan(a["length"]) and math.isnan(a["drift"]) and a["landed_at"] is None
    assert c["epochs"] == 2.0 and c["alpha"] == 1.0
    assert list(a)[-2:] == ["landed_at", "checkpoint"]
    assert record.rows == [a, b, c]
    assert (tmp_path / ".final.pending.safetensors").is_file()  # the endpoint waits for finish()


def test_evaluation_does_not_depend_on_its_batch_size():
    """The CPU scores in batches of 256 (faster than 2048 there); the figures are the same, a ragged last
    batch included: the loss is a sum over samples divided once."""
    from geopath.core.evaluate import eval_batch_size, evaluate

    torch.manual_seed(1)
    net = MLP(4, [8], 3).double()
    ds = Dataset(torch.randn(1000, 4, dtype=torch.float64), torch.randint(0, 3, (1000,)), "random", "test")
    ref = evaluate(net, ds, batch_size=1000)
    assert eval_batch_size("cpu") == 256 and eval_batch_size("cuda") == 2048
    for bs in (None, 7, 256, 2048):
        ev = evaluate(net, ds, batch_size=bs)
        assert ev.accuracy == ref.accuracy and ev.samples == 1000
        assert math.isclose(ev.loss, ref.loss, rel_tol=1e-12)
    assert 0.0 < ref.accuracy < 1.0
