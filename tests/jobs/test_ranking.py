"""``--criterion auto``: the ranking whose one-shot pruning keeps more of the start's predictions."""

from __future__ import annotations

import torch
from torch import nn

from geopath.config import SparsifyConfig
from geopath.core.dataset import Dataset
from geopath.core.params import ParamSpace, model_vector
from geopath.core.saliency import metric_diagonal
from geopath.core.targets import MagnitudeTarget
from geopath.jobs.sparsify import choose_ranking


def _dead_inputs_net():
    """An MLP whose largest first-layer weights read 16 inputs that are always zero: magnitude keeps those useless
    weights and removes the ones that matter, saliency (zero for a weight that never sees an input) does not."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        net[0].weight[:, :16] *= 20.0  # the dead half: large weights
    x = torch.randn(600, 32)
    x[:, :16] = 0.0
    return net, Dataset(x, torch.zeros(600, dtype=torch.long), "toy", "train")


def _agreement(net, space, w0, w, x) -> float:
    from geopath.core.params import load_vector

    with torch.no_grad():
        start = net(x).argmax(-1)
        load_vector(net, space, w)
        agree = float((net(x).argmax(-1) == start).float().mean())
        load_vector(net, space, w0)
    return agree


def test_auto_keeps_the_ranking_that_keeps_more_predictions_on_other_inputs():
    net, data = _dead_inputs_net()
    cfg = SparsifyConfig(checkpoint="x", out="o", sparsity=0.6, saliency_samples=256, seed=3)
    space = ParamSpace.of(net)
    w0 = model_vector(net, space)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))
    diag = metric_diagonal(net, space, w0, data.x[order[:256]], seed=3)
    scores, record, passes = choose_ranking(cfg, net, space, w0, data, diag)
    held = data.x[order[256:512]]  # the inputs after the diagonal's
    names = ["0.weight", "2.weight"]
    expected = {name: _agreement(net, space, w0, MagnitudeTarget(space, w0, 0.6, names, scores=s).project(w0), held)
                for name, s in (("magnitude", None), ("saliency", diag))}
    assert record == {"rule": "auto", "chosen": "saliency", "inputs": 256, "agreement": expected}
    assert expected["saliency"] > expected["magnitude"] + 0.2
    assert scores is diag and passes == 256  # three forward passes of 256 inputs, a third of a pass each
    assert torch.equal(model_vector(net, space), w0)  # the network is left as it was


def test_auto_takes_magnitude_on_a_tie():
    net, data = _dead_inputs_net()
    cfg = SparsifyConfig(checkpoint="x", out="o", sparsity=0.0, saliency_samples=100)
    space = ParamSpace.of(net)
    w0 = model_vector(net, space)
    scores, record, _ = choose_ranking(cfg, net, space, w0, data, torch.ones_like(w0))
    assert scores is None and record["chosen"] == "magnitude"
    assert record["agreement"] == {"magnitude": 1.0, "saliency": 1.0}
