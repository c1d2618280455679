"""MetricOperator against metrics built from explicit Jacobians (torch.func.jacrev), float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian

from geopath.core.params import ParamSpace, model_vector
from geopath.core.metric import (MetricKind, MetricOperator, bn_statistics, output_distance, output_residual,
                                 resolve_jvp_mode)

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64
KINDS = ["logits", "fisher"]


def _setup(case):
    model = case.make_model()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    x = case.inputs
    return model, space, w, x


def _logits(model, x, bn_stats="batch"):
    """The operator's forward: Dropout off, BatchNorm on the batch's (or the running) statistics."""
    with torch.no_grad(), bn_statistics(model, bn_stats):
        return model(x)


def test_cases_are_tiny_float64(case):
    model, space, w, x = _setup(case)
    assert w.dtype == D and x.dtype == D
    assert 20 < space.n < 100
    assert _logits(model, x).shape == (case.num_samples, case.num_classes)


def test_logits_metric_equals_JtJ_over_N(case, dense_jacobian, rng):
    model, space, w, x = _setup(case)
    G = MetricOperator(model, space, w, x, kind="logits")
    J = dense_jacobian(model, space, w, x)  # (N, C, n)
    Jm = J.reshape(-1, space.n)
    g = Jm.T @ Jm / x.shape[0]
    assert g.abs().max() > 1e-2  # a non-trivial reference
    for _ in range(3):
        u = torch.randn(space.n, generator=rng, dtype=D)
        torch.testing.assert_close(G.matvec(u), g @ u, rtol=0, atol=1e-8)
    torch.testing.assert_close(G.to_dense(), g, rtol=0, atol=1e-8)


def test_fisher_metric_equals_mean_JtHJ(case, dense_jacobian, rng):
    model, space, w, x = _setup(case)
    G = MetricOperator(model, space, w, x, kind=MetricKind.FISHER)
    J = dense_jacobian(model, space, w, x)
    p = torch.softmax(_logits(model, x), dim=-1)
    g = torch.zeros(space.n, space.n, dtype=D)
    for i in range(x.shape[0]):
        H = torch.diag(p[i]) - torch.outer(p[i], p[i])
        g += J[i].T @ H @ J[i]
    g /= x.shape[0]
    # Fisher and logits metrics really differ here (so the test can tell them apart)
    Jm = J.reshape(-1, space.n)
    assert (g - Jm.T @ Jm / x.shape[0]).abs().max() > 1e-3
    for _ in range(3):
        u = torch.randn(space.n, generator=rng, dtype=D)
        torch.testing.assert_close(G.matvec(u), g @ u, rtol=0, atol=1e-8)
    torch.testing.assert_close(G.to_dense(), g, rtol=0, atol=1e-8)


@pytest.mark.parametrize("bn_stats", ["batch", "running"])
def test_operator_logits_are_the_forward(case, bn_stats):
    model, space, w, x = _setup(case)
    model.train()
    G = MetricOperator(model, space, w, [x[:2], x[2:]], bn_stats=bn_stats)
    expected = torch.cat([_logits(model, x[:2], bn_stats), _logits(model, x[2:], bn_stats)])
    torch.testing.assert_close(torch.cat(G.logits), expected, rtol=0, atol=1e-14)
    assert model.training  # the caller's mode is restored


@pytest.mark.parametrize("kind", KINDS)
def test_micro_batches_give_the_same_operator(case, kind):
    """Without batch statistics, splitting a batch changes nothing."""
    model, space, w, x = _setup(case)
    one = MetricOperator(model, space, w, x, kind=kind, bn_stats="running").to_dense()
    split = MetricOperator(model, space, w, [x[:1], x[1:3], x[3:]], kind=kind, bn_stats="running")
    assert split.num_samples == x.shape[0]
    torch.testing.assert_close(split.to_dense(), one, rtol=0, atol=1e-12)


def test_batch_statistics_are_per_micro_batch(bn_case, dense_jacobian, rng):
    """With batch statistics each micro-batch is normalised on its own: the dense reference with the
    same split agrees, the unsplit one does not."""
    model, space, w, x = _setup(bn_case)
    split = MetricOperator(model, space, w, [x[:2], x[2:]]).to_dense()
    J = dense_jacobian(model, space, w, x, chunks=[2, 2]).reshape(-1, space.n)
    torch.testing.assert_close(split, J.T @ J / x.shape[0], rtol=0, atol=1e-8)
    J1 = dense_jacobian(model, space, w, x).reshape(-1, space.n)
    assert (split - J1.T @ J1 / x.shape[0]).abs().max() > 1e-3


def test_rmatvec_outputs_equals_mean_Jt_c(case, dense_jacobian, rng):
    model, space, w, x = _setup(case)
    chunks = [x[:3], x[3:]]
    G = MetricOperator(model, space, w, chunks)
    c = torch.randn(x.shape[0], case.num_classes, generator=rng, dtype=D)
    got = G.rmatvec_outputs([c[:3], c[3:]])
    J = dense_jacobian(model, space, w, x, chunks=[3, x.shape[0] - 3])
    expected = torch.einsum("nci,nc->i", J, c) / x.shape[0]
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_output_residual_is_gradient_of_half_distance(kind, rng):
    N, C = 5, 4
    z = torch.randn(N, C, generator=rng, dtype=D, requires_grad=True)
    z0 = torch.randn(N, C, generator=rng, dtype=D)
    k = MetricKind(kind)
    (grad,) = torch.autograd.grad(output_distance(k, z, z0) / 2, z)
    # output_distance is a mean over samples: the per-sample gradient is N times the batch one
    r = output_residual(k, z.detach(), z0)
    torch.testing.assert_close(r, N * grad, rtol=0, atol=1e-12)
    # and sample by sample, without the factor
    for i in range(N):
        zi = z.detach()[i : i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(output_distance(k, zi, z0[i : i + 1]) / 2, zi)
        torch.testing.assert_close(output_residual(k, zi.detach(), z0[i : i + 1]), gi, rtol=0, atol=1e-12)
    # the distance vanishes at the anchor and is positive away from it
    assert float(output_distance(k, z0, z0)) == pytest.approx(0.0, abs=1e-14)
    assert float(output_distance(k, z.detach(), z0)) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_output_hessian_of_half_distance_is_the_metric_H(kind, rng, output_hessians):
    """The module's claim: the output Hessian of the distance is exactly the metric's ``H``."""
    C = 4
    z = torch.randn(C, generator=rng, dtype=D)
    z0 = torch.randn(C, generator=rng, dtype=D)
    k = MetricKind(kind)
    Hz = hessian(lambda t: output_distance(k, t[None], z0[None]) / 2, z)
    torch.testing.assert_close(Hz, output_hessians(kind, z[None])[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_metric_is_symmetric_psd(case, kind):
    model, space, w, x = _setup(case)
    g = MetricOperator(model, space, w, x, kind=kind).to_dense()
    torch.testing.assert_close(g, g.T, rtol=0, atol=1e-12)
    eig = torch.linalg.eigvalsh(0.5 * (g + g.T))
    assert float(eig.min()) >= -1e-10
    assert float(eig.max()) > 1e-3
    # rank ≤ (outputs × samples) (≤ (C−1)·N for the Fisher): rank-deficient by construction
    C, N = case.num_classes, case.num_samples
    bound = C * N if kind == "logits" else (C - 1) * N
    rank = int((eig > 1e-10 * float(eig.max())).sum())
    assert rank <= bound < space.n


def test_bn_buffers_untouched_by_metric(bn_case, rng):
    model, space, w, x = _setup(bn_case)
    model.train()  # the operator must not update running stats even from training mode
    before = {k: b.clone() for k, b in model.named_buffers()}
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= set(before)
    for kind in KINDS:
        G = MetricOperator(model, space, w, [x[:2], x[2:]], kind=kind)
        G.to_dense()
        G.rmatvec_outputs([torch.ones(2, 3, dtype=D), torch.ones(2, 3, dtype=D)])
        2.0 * G @ torch.randn(space.n, generator=rng, dtype=D)
    after = dict(model.named_buffers())
    for k, b in before.items():
        assert torch.equal(after[k], b), k
    # parameters are not touched either
    assert torch.equal(model_vector(model, space), w)


def test_bn_metric_uses_running_stats(bn_case, dense_jacobian):
    """With bn_stats=running, changing the running statistics changes the operator (it really uses them)."""
    model, space, w, x = _setup(bn_case)
    g1 = MetricOperator(model, space, w, x, bn_stats="running").to_dense()
    with torch.no_grad():
        model.bn.running_var.mul_(3.0)
    g2 = MetricOperator(model, space, w, x, bn_stats="running").to_dense()
    J2 = dense_jacobian(model, space, w, x, bn_stats="running").reshape(-1, space.n)
    torch.testing.assert_close(g2, J2.T @ J2 / x.shape[0], rtol=0, atol=1e-8)
    assert (g1 - g2).abs().max() > 1e-3


def test_bn_batch_statistics_ignore_running_stats(bn_case, dense_jacobian):
    """The default normalises with the batch's statistics: the running ones do not matter, and the
    operator differs from the running-statistics one."""
    model, space, w, x = _setup(bn_case)
    g1 = MetricOperator(model, space, w, x).to_dense()
    with torch.no_grad():
        model.bn.running_var.mul_(3.0)
        model.bn.running_mean.add_(1.0)
    g2 = MetricOperator(model, space, w, x).to_dense()
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    J = dense_jacobian(model, space, w, x).reshape(-1, space.n)
    torch.testing.assert_close(g2, J.T @ J / x.shape[0], rtol=0, atol=1e-8)
    assert (g2 - MetricOperator(model, space, w, x, bn_stats="running").to_dense()).abs().max() > 1e-3


def test_empty_inputs_rejected(mlp_case):
    model, space, w, x = _setup(mlp_case)
    with pytest.raises(ValueError):
        MetricOperator(model, space, w, x[:0])


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_mode_jvp_gives_the_dense_metric(case, kind, dense_jacobian):
    """``jvp_mode="reverse"`` (``J u`` as the VJP of the cached VJP) gives the same products as forward mode."""
    model, space, w, x = _setup(case)
    forward = MetricOperator(model, space, w, list(torch.split(x, 2)), kind=kind)
    reverse = MetricOperator(model, space, w, list(torch.split(x, 2)), kind=kind, jvp_mode="reverse")
    torch.testing.assert_close(reverse.to_dense(), forward.to_dense(), rtol=0, atol=1e-10)
    assert reverse.jvp_mode.value == "reverse" and len(reverse._transposed) == 2  # one per micro-batch, reused


def test_reverse_mode_falls_back_without_a_second_derivative(rng):
    """A layer whose backward is not differentiable again: the operator computes J u in forward mode instead."""

    class FirstOrderOnly(torch.autograd.Function):
        @staticmethod
        def forward(t):
            return t.clamp(min=0)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.save_for_forward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            return g.detach() * (t.detach() > 0)  # detached: not differentiable a second time

        @staticmethod
        def jvp(ctx, dt):
            (t,) = ctx.saved_tensors
            return dt * (t > 0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

        def forward(self, t):
            return self.b(FirstOrderOnly.apply(self.a(t)))

    torch.manual_seed(0)
    model = Net().double()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    x = torch.randn(5, 3, dtype=D)
    u = torch.randn(space.n, generator=rng, dtype=D)
    reference = MetricOperator(model, space, w, x).matvec(u)
    G = MetricOperator(model, space, w, x, jvp_mode="reverse")
    torch.testing.assert_close(G.matvec(u), reference, rtol=0, atol=1e-10)
    assert G.jvp_mode.value == "forward"  # it fell back


def test_products_equal_curvlinops_ggn(case, rng):
    """The same ``JᵀJ`` from an independent library: curvlinops' GGN of the summed MSE on the logits is
    ``2 Σ_i J_iᵀ J_i``, ``2N`` times geopath's mean (eval-mode BatchNorm on both sides)."""
    curvlinops = pytest.importorskip("curvlinops")
    model, space, w, x = _setup(case)
    model.eval()
    params = [p for p in model.parameters()]
    G = curvlinops.GGNLinearOperator(model, torch.nn.MSELoss(reduction="sum"), params,
                                     [(x, torch.zeros(x.shape[0], case.num_classes, dtype=D))],
                                     check_deterministic=False)
    ours = MetricOperator(model, space, w, x, bn_stats="running")
    for _ in range(2):
        u = torch.randn(space.n, generator=rng, dtype=D)
        us = [t.view(p.shape) for t, p in zip(torch.split(u, [p.numel() for p in params]), params)]
        theirs = torch.cat([t.reshape(-1) for t in G @ us]) / (2 * x.shape[0])
        torch.testing.assert_close(ours.matvec(u), theirs, rtol=0, atol=1e-10)


def test_auto_jvp_mode_is_layerwise_on_the_cpu(case):
    model, space, w, x = _setup(case)
    G = MetricOperator(model, space, w, x, jvp_mode="auto")
    assert G.jvp_mode.value == "layerwise"  # (every test network has a plan that passes its check)
    # elsewhere (a GPU; here the meta device stands in) torch.func's faster mode: forward with BatchNorm
    has_bn = case.name == "cnn_bn"
    assert resolve_jvp_mode("auto", copy.deepcopy(model).to("meta")).value == ("forward" if has_bn else "reverse")
    assert resolve_jvp_mode("forward", model).value == "forward"
    assert MetricOperator(model, space, w, [x], jvp_mode="auto", cache=False).jvp_mode.value == "forward"


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_bn_statistics_restores_every_module_mode(mode):
    """Inside: eval mode, BatchNorm per ``mode``; after: each module's own mode and flag again, also where a
    caller set a child apart from its parent (a Dropout in eval inside a network in train mode came back in
    train mode)."""
    from geopath.core.metric import bn_statistics

    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    net.train()
    net[2].eval()
    before = [m.training for m in net.modules()]
    with bn_statistics(net, mode):
        assert not net[2].training and not net[0].training
        assert net[1].training == (mode == "batch") and net[1].track_running_stats == (mode != "batch")
    assert [m.training for m in net.modules()] == before and net[1].track_running_stats
