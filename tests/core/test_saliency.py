"""metric_diagonal against the diagonal of dense J_iᵀ H_i J_i (torch.func.jacrev), float64."""

from __future__ import annotations

import pytest
import torch

from geopath.core import saliency
from geopath.core.metric import bn_statistics
from geopath.core.params import ParamSpace, model_vector
from geopath.core.saliency import metric_diagonal
from geopath.core.targets import MagnitudeTarget, prunable_parameters

pytestmark = pytest.mark.usefixtures("single_thread")

PROBES = 3000  # Monte Carlo probes per sample: relative error ~ sqrt(2 / PROBES) per coordinate


def _dense_diagonal(case, dense_jacobian, kind):
    model = case.make_model()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    x = case.inputs
    # one sample at a time with the running statistics: what the per-sample estimate differentiates
    J = torch.cat([dense_jacobian(model, space, w, x[i:i + 1], bn_stats="running") for i in range(len(x))])
    if kind == "logits":
        return model, space, w, x, J.pow(2).sum(1).mean(0)
    with torch.no_grad(), bn_statistics(model, "running"):
        p = torch.softmax(model(x), -1)
    diag = torch.zeros(space.n, dtype=x.dtype)
    for i in range(len(x)):
        H = torch.diag(p[i]) - torch.outer(p[i], p[i])
        diag += torch.einsum("kq,kl,lq->q", J[i], H, J[i])
    return model, space, w, x, diag / len(x)


@pytest.mark.parametrize("kind", ["logits", "fisher"])
def test_metric_diagonal_matches_dense(case, dense_jacobian, kind):
    model, space, w, x, dense = _dense_diagonal(case, dense_jacobian, kind)
    assert dense.abs().max() > 1e-3
    est = metric_diagonal(model, space, w, x, kind, probes=PROBES, seed=1)
    scale = dense.abs().max()
    torch.testing.assert_close(est, dense, rtol=0, atol=0.08 * scale)
    # and it is a real estimate: a wrong one (say, without squaring the sum's cross terms away) fails
    assert not torch.allclose(est * 2, dense, rtol=0, atol=0.08 * scale)


def test_fallback_estimates_the_same_diagonal(mlp_case, dense_jacobian, monkeypatch):
    model, space, w, x, dense = _dense_diagonal(mlp_case, dense_jacobian, "logits")

    def no_vmap(*args, **kwargs):
        raise RuntimeError("vmap: unsupported operation")

    monkeypatch.setattr(saliency, "_per_sample_squares", no_vmap)
    monkeypatch.setattr(saliency, "FALLBACK_BATCH", 2)  # cross-sample terms average out too
    est = metric_diagonal(model, space, w, x, "logits", probes=800, seed=2)
    torch.testing.assert_close(est, dense, rtol=0, atol=0.15 * dense.abs().max())


def test_saliency_ranks_by_w_squared_times_diagonal():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    space = ParamSpace.of(model)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float32)
    scores = torch.tensor([10.0, 1.0, 0.01, 1.0])  # saliencies 10, 4, 0.09, 16
    t = MagnitudeTarget(space, w, 0.5, prunable_parameters(model), scores=scores)
    assert t.mask.tolist() == [False, True, True, False]
    assert MagnitudeTarget(space, w, 0.5, prunable_parameters(model)).mask.tolist() == [True, True, False, False]
    assert t.describe()["criterion"] == "saliency"
    staged = t.stage(w, 0.5)  # the stages of iterative pruning keep the criterion
    assert staged.scores is not None


def test_zero_input_weights_have_zero_saliency():
    """A weight that only ever sees a zero input costs the function nothing, whatever its size."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    x = torch.randn(16, 3, dtype=torch.float64)
    x[:, 0] = 0.0  # a border pixel
    diag = metric_diagonal(model, space, w, x, probes=4)
    first = diag[space.slices()["0.weight"]].view(4, 3)
    assert torch.all(first[:, 0] == 0) and torch.all(first[:, 1:] > 0)


def _squares_both_ways(model, x, kind):
    """One chunk's ``Σ_i (J_iᵀ u_i)²`` by the Linear-only path and by per-sample vmap, same probes."""
    space = ParamSpace.of(model)
    params = space.unflatten(model_vector(model, space))
    buffers = dict(model.named_buffers())
    layers = saliency._linear_layers(model, space)
    assert layers is not None
    fast = saliency._linear_squares(model, params, buffers, space, layers, x, kind,
                                    torch.Generator().manual_seed(5))
    slow = saliency._per_sample_squares(model, params, buffers, space, x, kind, torch.Generator().manual_seed(5))
    return fast, slow


@pytest.mark.parametrize("kind", ["logits", "fisher"])
def test_linear_only_path_is_the_per_sample_sum(kind):
    """An MLP's squares come from (δ²)ᵀ(h²) after one backward pass: exactly the per-sample sum."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4),
                                torch.nn.ReLU(), torch.nn.Linear(4, 3, bias=False)).double()
    x = torch.randn(12, 2, 3, dtype=torch.float64)  # fewer than one vmap chunk: the same probe draws
    fast, slow = _squares_both_ways(model, x, kind)
    assert slow.abs().max() > 1e-3
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


class _Shared(torch.nn.Module):
    """One Linear applied twice: its per-sample gradient is a sum of two outer products."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(torch.tanh(self.a(x)))))


class _Sequence(torch.nn.Module):
    """A Linear on (batch, tokens, features): the per-sample gradient sums over tokens first."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.view(len(x), 2, 4))).mean(1))


class _InPlace(torch.nn.Module):
    """A Linear followed by an in-place ReLU: the hooked output is overwritten by the activation."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.relu_(self.a(x)))


class _Tied(torch.nn.Module):
    """Two Linear layers sharing one weight matrix (the space lists it once)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


class _Outside(torch.nn.Module):
    """A Linear's weight also used directly, outside the layer's forward."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) + 0.5 * x @ self.a.weight.T)


class _Frozen(torch.nn.Module):
    """A frozen first layer (not in the space): only the trainable layers are estimated."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 5), torch.nn.Linear(5, 3)
        self.a.requires_grad_(False)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("make", [_Shared, _Sequence, _InPlace, _Tied, _Outside, _Frozen])
def test_linear_only_path_falls_back_when_the_shortcut_is_wrong(make, dense_jacobian):
    torch.manual_seed(0)
    model = make().double()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    x = torch.randn(10, 8 if make is _Sequence else 4, dtype=torch.float64)
    J = torch.cat([dense_jacobian(model, space, w, x[i:i + 1]) for i in range(len(x))])
    est = metric_diagonal(model, space, w, x, probes=3000, seed=1)
    dense = J.pow(2).sum(1).mean(0)
    torch.testing.assert_close(est, dense, rtol=0, atol=0.08 * dense.abs().max())
    with torch.no_grad():  # a caller inside no_grad gets the same estimate
        torch.testing.assert_close(metric_diagonal(model, space, w, x, probes=3000, seed=1), est)
