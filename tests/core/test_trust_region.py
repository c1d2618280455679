"""Trust-region solvers against dense references (eigendecomposition + secular equation)."""

from __future__ import annotations

import pytest
import torch

from geopath.core.params import ParamSpace, model_vector
from geopath.core.metric import MetricOperator
from geopath.core.operators import DenseOperator
from geopath.core.trust_region import TRMethod, multiplier_step, steihaug_cg, trust_region_step

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def _spd(rng, n, low=0.5, high=8.0):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=rng, dtype=D))
    eig = torch.linspace(low, high, n, dtype=D)
    return (q * eig) @ q.T


def _q(A, b, theta):
    """The TR objective ``½θᵀAθ − bᵀθ``."""
    return float(0.5 * theta @ A @ theta - b @ theta)


def _cauchy(A, b, radius):
    """Minimiser of the objective along ``b`` (the steepest-descent direction) within the ball."""
    bAb = float(b @ A @ b)
    t_max = radius / float(b.norm())
    t = t_max if bAb <= 0 else min(float(b @ b) / bAb, t_max)
    return t * b


@pytest.fixture
def metric2g(mlp_case):
    """``A = 2g`` for the tiny MLP: a rank-deficient PSD operator and its dense matrix."""
    model = mlp_case.make_model()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    G = MetricOperator(model, space, w, mlp_case.inputs)
    A = 2.0 * G
    dense = A.to_dense()
    dense = 0.5 * (dense + dense.T)
    eig = torch.linalg.eigvalsh(dense)
    assert int((eig > 1e-9 * float(eig.max())).sum()) < space.n  # really rank-deficient
    return A, dense


# --------------------------------------------------------------------------- Steihaug–Toint CG


def test_steihaug_interior_equals_solve(rng):
    n = 12
    A = _spd(rng, n)
    b = torch.randn(n, generator=rng, dtype=D)
    x_ref = torch.linalg.solve(A, b)
    res = steihaug_cg(DenseOperator(A), b, radius=10 * float(x_ref.norm()), max_iters=10 * n, rtol=1e-13)
    assert not res.on_boundary
    torch.testing.assert_close(res.theta, x_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.A_theta, A @ res.theta, rtol=0, atol=1e-10)
    assert res.curvature == pytest.approx(float(res.theta @ A @ res.theta), rel=1e-10)


@pytest.mark.parametrize("shrink", [0.05, 0.3, 0.8])
def test_steihaug_boundary_norm_and_beats_cauchy(rng, shrink):
    n = 12
    A = _spd(rng, n, 0.1, 10.0)
    b = torch.randn(n, generator=rng, dtype=D)
    radius = shrink * float(torch.linalg.solve(A, b).norm())
    res = steihaug_cg(DenseOperator(A), b, radius, max_iters=10 * n, rtol=1e-12)
    assert res.on_boundary
    assert abs(float(res.theta.norm()) - radius) <= 1e-10 * radius
    assert _q(A, b, res.theta) <= _q(A, b, _cauchy(A, b, radius)) + 1e-12
    torch.testing.assert_close(res.A_theta, A @ res.theta, rtol=0, atol=1e-10)


def test_steihaug_negative_curvature_goes_to_boundary(rng):
    n = 8
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=rng, dtype=D))
    A = (q * torch.tensor([-2.0, -0.5, 0.3, 1, 2, 3, 4, 5], dtype=D)) @ q.T
    b = torch.randn(n, generator=rng, dtype=D)
    radius = 0.7
    res = steihaug_cg(DenseOperator(A), b, radius, max_iters=50)
    assert res.on_boundary
    assert abs(float(res.theta.norm()) - radius) <= 1e-10 * radius
    assert _q(A, b, res.theta) <= _q(A, b, _cauchy(A, b, radius)) + 1e-12
    torch.testing.assert_close(res.A_theta, A @ res.theta, rtol=0, atol=1e-10)


def test_steihaug_negative_curvature_after_interior_step():
    """The ``pᵀAp ≤ 0`` exit taken at the second iteration, from a non-zero interior iterate."""
    A = torch.diag(torch.tensor([-1.0, 3.0], dtype=D))
    b = torch.tensor([0.1, 1.0], dtype=D)
    radius = 1.0
    # first step: bᵀAb > 0 and the CG point stays inside; second direction has pᵀAp < 0
    alpha = float(b @ b) / float(b @ A @ b)
    r = b - alpha * (A @ b)
    p = r + float(r @ r) / float(b @ b) * b
    assert float(b @ A @ b) > 0 and alpha * float(b.norm()) < radius and float(p @ A @ p) < 0
    res = steihaug_cg(DenseOperator(A), b, radius, max_iters=10)
    assert res.on_boundary and res.iterations == 2
    assert abs(float(res.theta.norm()) - radius) <= 1e-12
    torch.testing.assert_close(res.A_theta, A @ res.theta, rtol=0, atol=1e-12)
    # the exit point is x₁ + τp with τ > 0
    x1 = alpha * b
    tau = float((res.theta - x1) @ p) / float(p @ p)
    assert tau > 0
    torch.testing.assert_close(res.theta, x1 + tau * p, rtol=0, atol=1e-12)
    assert _q(A, b, res.theta) <= _q(A, b, _cauchy(A, b, radius))


def test_steihaug_negative_curvature_at_first_step():
    A = torch.diag(torch.tensor([-1.0, 2.0, 5.0], dtype=D))
    b = torch.tensor([0.5, 0.0, 0.0], dtype=D)
    res = steihaug_cg(DenseOperator(A), b, 0.3)
    assert res.on_boundary and res.iterations == 1
    torch.testing.assert_close(res.theta, torch.tensor([0.3, 0.0, 0.0], dtype=D), rtol=0, atol=1e-15)
    torch.testing.assert_close(res.A_theta, A @ res.theta, rtol=0, atol=1e-15)


@pytest.mark.parametrize("radius", [1e-3, 0.1, 3.0])
def test_steihaug_rank_deficient_metric_lands_on_boundary(metric2g, rng, radius):
    A, dense = metric2g
    b = torch.randn(A.n, generator=rng, dtype=D)  # has a null-space component: unbounded below
    res = steihaug_cg(A, b, radius, max_iters=3 * A.n, rtol=1e-12)
    assert res.on_boundary
    assert abs(float(res.theta.norm()) - radius) <= 1e-10 * radius
    assert _q(dense, b, res.theta) <= _q(dense, b, _cauchy(dense, b, radius)) + 1e-12
    torch.testing.assert_close(res.A_theta, dense @ res.theta, rtol=0, atol=1e-9 * max(1.0, float(res.A_theta.norm())))


def test_steihaug_zero_rhs_and_bad_radius(rng):
    A = DenseOperator(_spd(rng, 5))
    res = steihaug_cg(A, torch.zeros(5, dtype=D), 1.0)
    assert torch.equal(res.theta, torch.zeros(5, dtype=D)) and res.iterations == 0 and not res.on_boundary
    for r in (0.0, -1.0):
        with pytest.raises(ValueError):
            steihaug_cg(A, torch.ones(5, dtype=D), r)


# --------------------------------------------------------------------------- multiplier (exact)


def _check_exact(res, A_dense, b, radius, dense_tr, rel=1e-6):
    theta_ref, lam_ref = dense_tr(A_dense, b, radius)
    err = float((res.theta - theta_ref).norm()) / float(theta_ref.norm())
    assert err <= rel, f"relative error {err:.2e}"
    assert float(res.theta @ res.theta) <= radius**2 * (1 + 1e-12)
    return theta_ref, lam_ref


def test_multiplier_pd_boundary_active(rng, dense_tr):
    n = 15
    A = _spd(rng, n, 0.2, 6.0)
    b = torch.randn(n, generator=rng, dtype=D)
    radius = 0.4 * float(torch.linalg.solve(A, b).norm())
    res = multiplier_step(DenseOperator(A), b, radius, max_iters=10 * n, rtol=1e-12)
    assert res.on_boundary
    _, lam_ref = _check_exact(res, A, b, radius, dense_tr)
    assert lam_ref > 0.05
    assert res.multiplier == pytest.approx(lam_ref, rel=1e-5)
    assert float(res.theta.norm()) == pytest.approx(radius, rel=1e-12)
    torch.testing.assert_close(res.A_theta, A @ res.theta, rtol=0, atol=1e-10)
    # optimality: (A + λI)θ = b
    torch.testing.assert_close(A @ res.theta + res.multiplier * res.theta, b, rtol=0, atol=1e-5 * float(b.norm()))


def test_multiplier_pd_interior(rng, dense_tr):
    n = 15
    A = _spd(rng, n, 0.2, 6.0)
    b = torch.randn(n, generator=rng, dtype=D)
    radius = 2.0 * float(torch.linalg.solve(A, b).norm())
    res = multiplier_step(DenseOperator(A), b, radius, max_iters=10 * n, rtol=1e-12)
    assert not res.on_boundary and res.multiplier == 0.0
    _, lam_ref = _check_exact(res, A, b, radius, dense_tr, rel=1e-9)
    assert lam_ref == 0.0


@pytest.mark.parametrize("radius", [1e-3, 0.05, 1.0])
def test_multiplier_rank_deficient_metric(metric2g, rng, dense_tr, radius):
    A, dense = metric2g
    b = torch.randn(A.n, generator=rng, dtype=D)
    res = multiplier_step(A, b, radius, max_iters=10 * A.n, rtol=1e-12)
    assert res.on_boundary
    _check_exact(res, dense, b, radius, dense_tr)
    assert float(res.theta @ res.theta) <= radius**2 * (1 + 1e-12)
    torch.testing.assert_close(res.A_theta, dense @ res.theta, rtol=0, atol=1e-9 * max(1.0, float(res.A_theta.norm())))


def test_multiplier_rank_deficient_b_in_range_interior(metric2g, dense_tr):
    """``b`` in the range of a singular ``A`` and a large radius: an interior solution of ``Aθ = b``."""
    A, dense = metric2g
    theta_true = dense @ torch.linspace(-1, 1, A.n, dtype=D)  # in the range of A
    b = dense @ theta_true
    radius = 10.0 * float(theta_true.norm())
    res = multiplier_step(A, b, radius, max_iters=10 * A.n, rtol=1e-12)
    assert not res.on_boundary
    torch.testing.assert_close(dense @ res.theta, b, rtol=0, atol=1e-7 * float(b.norm()))


def test_multiplier_truncated_cg_interior_never_worse_than_zero_step():
    """With geopath's default CG budget (10 iterations, rtol 1e-4) on an interior problem.

    Any trust-region step must not increase ``½θᵀAθ − bᵀθ`` above its value at θ = 0;
    Steihaug with the same budget gives a descent step (checked below).
    """
    n = 40
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    A = (q * torch.logspace(-2, 2, n, dtype=D)) @ q.T
    b = torch.randn(n, generator=g, dtype=D)
    radius = 1.5 * float(torch.linalg.solve(A, b).norm())  # the exact solution is interior
    st = steihaug_cg(DenseOperator(A), b, radius, max_iters=10, rtol=1e-4)
    assert _q(A, b, st.theta) < 0
    res = multiplier_step(DenseOperator(A), b, radius, max_iters=10, rtol=1e-4)
    assert _q(A, b, res.theta) <= 0.0


def test_multiplier_zero_rhs_and_bad_radius(rng):
    A = DenseOperator(_spd(rng, 5))
    res = multiplier_step(A, torch.zeros(5, dtype=D), 1.0)
    assert torch.equal(res.theta, torch.zeros(5, dtype=D)) and not res.on_boundary
    with pytest.raises(ValueError):
        multiplier_step(A, torch.ones(5, dtype=D), 0.0)


# --------------------------------------------------------------------------- dispatch


def test_trust_region_step_dispatches_both_methods(metric2g, rng, dense_tr):
    A, dense = metric2g
    b = torch.randn(A.n, generator=rng, dtype=D)
    radius = 0.05
    kw = dict(max_iters=10 * A.n, rtol=1e-12)
    st = trust_region_step(A, b, radius, method="steihaug", **kw)
    st_direct = steihaug_cg(A, b, radius, **kw)
    assert torch.equal(st.theta, st_direct.theta) and st.iterations == st_direct.iterations
    mu = trust_region_step(A, b, radius, method=TRMethod.MULTIPLIER, **kw)
    mu_direct = multiplier_step(A, b, radius, **kw)
    assert torch.equal(mu.theta, mu_direct.theta) and mu.multiplier == mu_direct.multiplier
    assert mu.multiplier > 0 and st.multiplier == 0.0
    # the two are different algorithms: the exact one is at least as good, and they differ
    assert _q(dense, b, mu.theta) <= _q(dense, b, st.theta) + 1e-12
    _check_exact(mu, dense, b, radius, dense_tr)
    # default is Steihaug
    default = trust_region_step(A, b, radius, **kw)
    assert torch.equal(default.theta, st.theta)
    with pytest.raises(ValueError):
        trust_region_step(A, b, radius, method="newton")


@pytest.mark.parametrize("null", ["diag", "zero"])
def test_multiplier_b_reaching_the_null_space_goes_to_the_boundary(null):
    """``b`` with a component where ``A`` has no curvature: CG breaks down on it at λ = 0, and its iterate
    (here inside the ball, or zero) is no answer: the quadratic falls without bound along that direction,
    so the exact step is on the boundary with ``(A + λI)θ = b``, λ > 0 (a zero step was taken)."""
    A = torch.diag(torch.tensor([1.0, 0.0], dtype=D)) if null == "diag" else torch.zeros(2, 2, dtype=D)
    b = torch.ones(2, dtype=D)
    radius = 10.0
    res = multiplier_step(DenseOperator(A), b, radius, max_iters=20, rtol=1e-12)
    assert res.on_boundary and float(res.theta.norm()) == pytest.approx(radius, rel=1e-9)
    assert res.multiplier > 0
    torch.testing.assert_close(res.theta, torch.linalg.solve(A + res.multiplier * torch.eye(2, dtype=D), b),
                               rtol=1e-6, atol=0)
    st = steihaug_cg(DenseOperator(A), b, radius, max_iters=20, rtol=1e-12)
    assert _q(A, b, res.theta) <= _q(A, b, st.theta) + 1e-9
