"""``--criterion auto``: saliency where its one-shot pruning keeps more of the start's predictions than
magnitude's by more than chance (a sign test), else magnitude."""

from __future__ import annotations

import torch
from torch import nn

from geopath.config import SparsifyConfig
from geopath.core.dataset import Dataset
from geopath.core.params import ParamSpace, model_vector
from geopath.core.saliency import metric_diagonal
from geopath.core.targets import MagnitudeTarget
from geopath.jobs.sparsify import choose_ranking, ranking_choice


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
    assert {k: record[k] for k in ("rule", "chosen", "inputs", "agreement")} == {
        "rule": "auto", "chosen": "saliency", "inputs": 256, "agreement": expected}
    assert record["only"]["saliency"] - record["only"]["magnitude"] == round((expected["saliency"] - expected["magnitude"]) * 256)
    assert record["p"] < 0.05
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


def _kept(pattern: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in pattern])


def test_a_few_more_kept_predictions_are_chance_and_stay_with_magnitude():
    """Saliency ahead by 3 of 1,024 inputs (the wide MNIST MLP's seeds): 3 of 3 coin flips has chance 1/8."""
    magnitude = torch.ones(1024, dtype=torch.bool)
    magnitude[:40] = False
    saliency = magnitude.clone()
    saliency[:3] = True
    record = ranking_choice(magnitude, saliency)
    assert record["chosen"] == "magnitude"
    assert record["only"] == {"magnitude": 0, "saliency": 3} and record["p"] == 0.125
    assert record["agreement"] == {"magnitude": 984 / 1024, "saliency": 987 / 1024}


def test_the_sign_test_counts_only_the_inputs_where_the_two_differ():
    # 9 inputs only saliency keeps, 1 only magnitude keeps: P(X >= 9 | n = 10) = 11/1024 < 0.05
    magnitude = _kept("0" * 9 + "1" + "1" * 50 + "0" * 40)
    saliency = _kept("1" * 9 + "0" + "1" * 50 + "0" * 40)
    record = ranking_choice(magnitude, saliency)
    assert record["only"] == {"magnitude": 1, "saliency": 9}
    assert record["p"] == 11 / 1024 and record["chosen"] == "saliency"
    # 8 against 2: P(X >= 8 | n = 10) = 56/1024 > 0.05, magnitude
    record = ranking_choice(_kept("0" * 8 + "11"), _kept("1" * 8 + "00"))
    assert record["p"] == 56 / 1024 and record["chosen"] == "magnitude"
    # magnitude ahead: never saliency, however many inputs
    assert ranking_choice(_kept("1" * 30), _kept("0" * 30))["chosen"] == "magnitude"


def test_the_sign_test_is_exact_on_thousands_of_inputs():
    n = 2048  # 2 ** 2048 overflows a float: the chance is computed on integers
    record = ranking_choice(torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool))
    assert record["chosen"] == "saliency" and record["p"] == 0.0 and record["only"]["saliency"] == n  # (2^-2048)
    # 1,100 against 948 of 2,048: z = 3.36, a one-sided chance of about 4e-4 (normal approximation)
    by_saliency = torch.arange(n) < 1100
    record = ranking_choice(~by_saliency, by_saliency)
    assert record["chosen"] == "saliency" and 2e-4 < record["p"] < 6e-4
    half = torch.arange(n) % 2 == 0
    record = ranking_choice(half, ~half)
    assert record["chosen"] == "magnitude" and abs(record["p"] - 0.5) < 0.01
