"""One geodesic step against the dense trust-region problem built from explicit Jacobians."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.core.step import Anchor, MetricBatch, StepConfig, geodesic_step
from geopath.core.metric import MetricKind, bn_statistics
from geopath.core.targets import MagnitudeTarget, prunable_parameters
from geopath.core.trust_region import TRMethod

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64
KINDS = [MetricKind.LOGITS, MetricKind.FISHER]


def _setup(case):
    model = case.make_model()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    x = case.inputs
    chunks = [x[:2], x[2:]]  # two micro-batches
    target = MagnitudeTarget(space, w, 0.5, prunable_parameters(model))
    return model, space, w, x, chunks, target


def _cfg(n, **kw):
    base = dict(beta=0.7, step_size=1e-3, cg_iters=3 * n, cg_rtol=1e-12, damping=0.0,
                metric=MetricKind.LOGITS, solver=TRMethod.MULTIPLIER, anchor=Anchor.NONE)
    base.update(kw)
    return StepConfig(**base)


def _eval_logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def _rel(a, b):
    return float((a - b).norm()) / float(b.norm())


def _perturbed_anchor_logits(model, space, w, chunks, scale=0.05):
    anchor = copy.deepcopy(model)
    noise = torch.randn(space.n, generator=torch.Generator().manual_seed(77), dtype=D)
    load_vector(anchor, space, w + scale * noise)
    return [_eval_logits(anchor, xb) for xb in chunks]


@pytest.mark.parametrize("bn_stats", ["batch", "running"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("eps", [1e-4, 1e-2])
def test_step_equals_dense_tr_solution(case, kind, eps, bn_stats, dense_jacobian, dense_metric, dense_tr):
    model, space, w, x, chunks, target = _setup(case)
    cfg = _cfg(space.n, metric=kind, step_size=eps, bn_stats=bn_stats)
    info = geodesic_step(model, space, w, [MetricBatch(chunks)], target, cfg)

    sizes = [len(c) for c in chunks]  # with batch statistics each micro-batch is normalised on its own
    J = dense_jacobian(model, space, w, x, bn_stats=bn_stats, chunks=sizes)
    with torch.no_grad(), bn_statistics(model, bn_stats):
        logits = torch.cat([model(c) for c in chunks])
    g = dense_metric(J, logits, kind.value)
    b = cfg.beta * target.direction(w)
    theta_ref, lam = dense_tr(2.0 * g, b, math.sqrt(eps))
    assert lam > 0  # the constraint is active (b reaches the null space of g)
    assert _rel(info.theta, theta_ref) <= 1e-6
    assert float(info.theta @ info.theta) <= eps * (1 + 1e-8)
    assert info.on_boundary
    assert info.drift == 0.0
    assert info.products > 0
    assert info.metric_length == pytest.approx(math.sqrt(float(info.theta @ g @ info.theta)), rel=1e-8)
    # w and the model are left alone
    assert torch.equal(w, model_vector(model, space))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_anchored_step_adds_minus_2_Jt_r(mlp_case, kind, dense_jacobian, dense_metric, dense_tr):
    model, space, w, x, chunks, target = _setup(mlp_case)
    z0_chunks = _perturbed_anchor_logits(model, space, w, chunks)
    cfg = _cfg(space.n, metric=kind, anchor=Anchor.START, step_size=1e-2)
    info = geodesic_step(model, space, w, [MetricBatch(chunks, z0_chunks)], target, cfg)

    z, z0 = _eval_logits(model, x), torch.cat(z0_chunks)
    if kind is MetricKind.LOGITS:
        r = z - z0
        drift = float(((z - z0) ** 2).sum(-1).mean())
    else:
        p, p0 = torch.softmax(z, -1), torch.softmax(z0, -1)
        r = p - p0
        drift = float(2 * (p0 * (p0.log() - p.log())).sum(-1).mean())
    J = dense_jacobian(model, space, w, x)
    g = dense_metric(J, z, kind.value)
    Jtr = torch.einsum("nci,nc->i", J, r) / x.shape[0]
    b = cfg.beta * target.direction(w) - 2.0 * Jtr
    theta_ref, _ = dense_tr(2.0 * g, b, math.sqrt(cfg.step_size))
    assert _rel(info.theta, theta_ref) <= 1e-6
    assert info.drift == pytest.approx(drift, rel=1e-10)
    assert info.drift > 1e-4
    assert float(info.theta @ info.theta) <= cfg.step_size * (1 + 1e-8)
    # the anchor term matters: the un-anchored solution is measurably different
    theta_none, _ = dense_tr(2.0 * g, cfg.beta * target.direction(w), math.sqrt(cfg.step_size))
    assert _rel(theta_none, theta_ref) > 1e-3
    # and without anchor logits the anchored config is the local step
    plain = geodesic_step(model, space, w, [MetricBatch(chunks)], target, cfg)
    assert _rel(plain.theta, theta_none) <= 1e-6


@pytest.mark.parametrize("method", [TRMethod.MULTIPLIER, TRMethod.STEIHAUG], ids=lambda m: m.value)
def test_keep_restricts_step_exactly(mlp_case, method, dense_jacobian, dense_metric, dense_tr):
    model, space, w, x, chunks, target = _setup(mlp_case)
    keep = torch.rand(space.n, generator=torch.Generator().manual_seed(3)) < 0.6
    assert (target.mask & keep).any() and (~keep).any()
    cfg = _cfg(space.n, solver=method, step_size=1e-2)
    info = geodesic_step(model, space, w, [MetricBatch(chunks)], target, cfg, free=keep)
    assert torch.all(info.theta[~keep] == 0)
    assert float(info.theta @ info.theta) <= cfg.step_size * (1 + 1e-8)

    g = dense_metric(dense_jacobian(model, space, w, x), _eval_logits(model, x), "logits")
    b = cfg.beta * target.direction(w)
    sub_ref, _ = dense_tr(2.0 * g[keep][:, keep], b[keep], math.sqrt(cfg.step_size))
    if method is TRMethod.MULTIPLIER:
        assert _rel(info.theta[keep], sub_ref) <= 1e-6
    else:
        # Steihaug is exact only in the interior: check it on the boundary and no worse than Cauchy
        A, bk, t = 2.0 * g[keep][:, keep], b[keep], info.theta[keep]
        q = lambda v: float(0.5 * v @ A @ v - bk @ v)  # noqa: E731
        assert abs(float(t.norm()) - math.sqrt(cfg.step_size)) <= 1e-10
        cauchy = bk * min(float(bk @ bk) / float(bk @ A @ bk), math.sqrt(cfg.step_size) / float(bk.norm()))
        assert q(sub_ref) - 1e-12 <= q(t) <= q(cauchy) + 1e-12


def test_keep_free_coordinates_with_anchor(mlp_case, dense_jacobian, dense_metric, dense_tr):
    """Walking within the target hyperplane (settle phase): masked weights never move."""
    model, space, w, x, chunks, target = _setup(mlp_case)
    w_on = target.project(w)
    z0 = _perturbed_anchor_logits(model, space, w, chunks)
    load_vector(model, space, w_on)
    keep = target.free()
    cfg = _cfg(space.n, anchor=Anchor.START)
    info = geodesic_step(model, space, w_on, [MetricBatch(chunks, z0)], target, cfg, free=keep)
    assert torch.all(info.theta[target.mask] == 0)
    assert float(info.theta.norm()) > 0

    z = _eval_logits(model, x)
    J = dense_jacobian(model, space, w_on, x)
    g = dense_metric(J, z, "logits")
    b = cfg.beta * target.direction(w_on) - 2.0 * torch.einsum("nci,nc->i", J, z - torch.cat(z0)) / x.shape[0]
    sub_ref, _ = dense_tr(2.0 * g[keep][:, keep], b[keep], math.sqrt(cfg.step_size))
    assert _rel(info.theta[keep], sub_ref) <= 1e-6


def test_damped_step_and_metric_length(mlp_case, dense_jacobian, dense_metric, dense_tr):
    model, space, w, x, chunks, target = _setup(mlp_case)
    cfg = _cfg(space.n, damping=0.05, step_size=1e-2)
    info = geodesic_step(model, space, w, [MetricBatch(chunks)], target, cfg)
    g = dense_metric(dense_jacobian(model, space, w, x), _eval_logits(model, x), "logits")
    A = 2.0 * (g + cfg.damping * torch.eye(space.n, dtype=D))
    theta_ref, _ = dense_tr(A, cfg.beta * target.direction(w), math.sqrt(cfg.step_size))
    assert _rel(info.theta, theta_ref) <= 1e-6
    # the reported length excludes the damping term
    assert info.metric_length == pytest.approx(math.sqrt(float(info.theta @ g @ info.theta)), rel=1e-8)


def test_string_config_values_behave_like_enums(mlp_case):
    model, space, w, x, chunks, target = _setup(mlp_case)
    z0 = _perturbed_anchor_logits(model, space, w, chunks)
    enum_cfg = _cfg(space.n, anchor=Anchor.START, metric=MetricKind.LOGITS, solver=TRMethod.MULTIPLIER)
    str_cfg = _cfg(space.n, anchor="start", metric="logits", solver="multiplier")
    a = geodesic_step(model, space, w, [MetricBatch(chunks, z0)], target, enum_cfg)
    b = geodesic_step(model, space, w, [MetricBatch(chunks, z0)], target, str_cfg)
    assert b.drift == pytest.approx(a.drift, rel=1e-12)
    torch.testing.assert_close(b.theta, a.theta, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_start_plus_labels_anchor_adds_both_residuals(mlp_case, lam, dense_jacobian, dense_metric, dense_tr):
    """``anchor=start+labels``: ``r = (z − z0) + λ (softmax(z) − onehot(y))`` (logits metric)."""
    model, space, w, x, chunks, target = _setup(mlp_case)
    z0_chunks = _perturbed_anchor_logits(model, space, w, chunks)
    y = torch.arange(x.shape[0]) % 3
    y_chunks = list(torch.split(y, [len(c) for c in chunks]))
    cfg = _cfg(space.n, anchor=Anchor.START_LABELS, label_weight=lam, step_size=1e-2)
    info = geodesic_step(model, space, w, [MetricBatch(chunks, z0_chunks, y_chunks)], target, cfg)
    z, z0 = _eval_logits(model, x), torch.cat(z0_chunks)
    r = (z - z0) + lam * (torch.softmax(z, -1) - torch.nn.functional.one_hot(y, 3).to(z.dtype))
    J = dense_jacobian(model, space, w, x)
    g = dense_metric(J, z, "logits")
    b = cfg.beta * target.direction(w) - 2.0 * torch.einsum("nci,nc->i", J, r) / x.shape[0]
    theta_ref, _ = dense_tr(2.0 * g, b, math.sqrt(cfg.step_size))
    assert _rel(info.theta, theta_ref) <= 1e-6
    ce = float(torch.nn.functional.cross_entropy(z, y))
    assert info.drift == pytest.approx(float(((z - z0) ** 2).sum(-1).mean()) + lam * ce, rel=1e-10)
