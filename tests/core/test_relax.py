"""The relaxed path: its point function, its fixed ends, and that fitting lowers the blended loss it claims to."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from geopath.core.dataset import Dataset
from geopath.core.params import ParamSpace, model_vector
from geopath.core.relax import blended_kl, chain_point, node_times, outputs, relax


def test_chain_point_hits_nodes_and_interpolates():
    nodes = [torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])]
    assert torch.equal(chain_point(nodes, 0.0), nodes[0]) and torch.equal(chain_point(nodes, 1.0), nodes[2])
    torch.testing.assert_close(chain_point(nodes, 0.5), nodes[1])
    torch.testing.assert_close(chain_point(nodes, 0.25), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(chain_point(nodes, 0.875), torch.tensor([1.75, 0.75]))
    assert node_times(3) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_blended_kl_is_zero_on_the_blend_and_matches_the_definition():
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    t = 0.3
    blend = (1 - t) * z_a + t * z_b
    assert float(blended_kl(blend, z_a, z_b, t)) == pytest.approx(0.0, abs=1e-12)
    logits = torch.randn(6, 4, dtype=torch.float64)
    p = blend.softmax(1)
    expected = (p * (p.log() - logits.log_softmax(1))).sum(1).mean()
    torch.testing.assert_close(blended_kl(logits, z_a, z_b, t), expected)


def _pair():
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    a, b = net, nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    ds = Dataset(x, torch.zeros(256, dtype=torch.long), "toy", "train")
    space = ParamSpace.of(a)
    return a, b, ds, space, model_vector(a, space), model_vector(b, space)


def _path_loss(model, space, nodes, z_a, z_b, x) -> float:
    ts = torch.linspace(0.05, 0.95, 19).tolist()
    with torch.no_grad():
        return sum(float(blended_kl(functional_call(model, space.unflatten(chain_point(nodes, t)), (x,)), z_a, z_b, t))
                   for t in ts) / len(ts)


@pytest.mark.parametrize("free", [1, 3])
def test_relax_keeps_the_ends_and_lowers_the_blended_loss(free):
    a, b, ds, space, w_a, w_b = _pair()
    z_a, z_b = outputs(a, ds, "cpu"), outputs(b, ds, "cpu")
    line = relax(a, w_a, w_b, z_a, z_b, ds, sample_passes=0, free=free)
    assert len(line) == free + 2
    for k, s in enumerate(node_times(free)):
        torch.testing.assert_close(line[k], (1 - s) * w_a + s * w_b)  # no budget: the straight line
    fitted = relax(a, w_a, w_b, z_a, z_b, ds, sample_passes=256 * 40, free=free, batch_size=32, lr=0.1)
    assert torch.equal(fitted[0], w_a) and torch.equal(fitted[-1], w_b)
    assert torch.equal(model_vector(a, space), w_a)  # the model's own weights are untouched
    before, after = _path_loss(a, space, line, z_a, z_b, ds.x), _path_loss(a, space, fitted, z_a, z_b, ds.x)
    assert after < 0.5 * before, (before, after)
