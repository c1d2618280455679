"""BatchNorm re-estimation (``recompute_batchnorm``) against statistics computed directly on all inputs, and the
interleaved BatchNorm data of several tasks (``jobs.common.mix``)."""

from __future__ import annotations

import torch
from torch import nn

from geopath.core.dataset import Dataset
from geopath.core.evaluate import recompute_batchnorm
from geopath.jobs.common import mix


def _data(n: int, shape=(1, 2, 2), seed: int = 0, shift: float = 0.0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64) + shift
    return Dataset(x, torch.zeros(n, dtype=torch.long), "toy", "train", None)


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3)).double()


def _features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The BatchNorm's inputs, one row per value of each channel."""
    with torch.no_grad():
        return net[0](x).transpose(0, 1).reshape(3, -1)


def test_running_mean_is_the_mean_over_every_input_whatever_the_last_batch():
    # 257 inputs in batches of at most 256: a short last batch counted like a full one skewed the mean
    ds = _data(257)
    net = _conv_bn()
    assert recompute_batchnorm(net, ds, batch_size=256)
    feats = _features(net, ds.x)
    torch.testing.assert_close(net[1].running_mean, feats.mean(1), rtol=0, atol=1e-12)
    # the variance: the size-weighted mean of the (unbiased) variances of the near-equal batches 128 + 129,
    # within the small spread of the batch means of the pooled variance
    halves = [_features(net, ds.x[:128]), _features(net, ds.x[128:])]
    want = (128 * halves[0].var(1) + 129 * halves[1].var(1)) / 257
    torch.testing.assert_close(net[1].running_var, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(net[1].running_var, feats.var(1), rtol=0.05, atol=0)


def test_the_batch_size_does_not_move_the_mean():
    ds = _data(1000, seed=1)
    means = []
    for bs in (7, 64, 256, 999, 1000, 4096):
        net = _conv_bn()
        recompute_batchnorm(net, ds, batch_size=bs)
        means.append(net[1].running_mean.clone())
    for m in means[1:]:
        torch.testing.assert_close(m, means[0], rtol=0, atol=1e-12)


def test_no_batch_of_one_input():
    # a BatchNorm over one value per channel refuses a batch of one input: 257 = 256 + 1 crashed
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double()
    ds = _data(257, shape=(2,))
    assert recompute_batchnorm(net, ds, batch_size=256)
    with torch.no_grad():
        torch.testing.assert_close(net[1].running_mean, net[0](ds.x).mean(0), rtol=0, atol=1e-12)


def test_every_input_counts_beyond_ten_thousand():
    # --bn-samples 12000 used only the first 10,000 inputs; the last 2,000 here are shifted by +10
    x = torch.cat([_data(10_000, seed=2).x, _data(2_000, seed=3, shift=10.0).x])
    ds = Dataset(x, torch.zeros(len(x), dtype=torch.long), "toy", "train", None)
    net = _conv_bn()
    recompute_batchnorm(net, ds)
    torch.testing.assert_close(net[1].running_mean, _features(net, x).mean(1), rtol=0, atol=1e-10)


def test_mix_interleaves_the_tasks():
    a = Dataset(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long), "a", "train", None)
    b = Dataset(torch.ones(6, 2), torch.ones(6, dtype=torch.long), "b", "train", None)
    both = mix([a, b], 8)
    assert both.y.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert torch.equal(both.x[:, 0], both.y.double().to(both.x.dtype))
    # a task with fewer inputs than its share: the other's rest comes after
    short = Dataset(torch.ones(2, 2), torch.ones(2, dtype=torch.long), "s", "train", None)
    assert mix([a, short], 8).y.tolist() == [0, 1, 0, 1, 0, 0]
