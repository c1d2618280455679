"""Conjugate gradient against dense solves, the Krylov-space optimum, and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geopath.core.cg import cg
from geopath.core.operators import DenseOperator, Identity

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def _spd(rng, n, low=0.5, high=20.0):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=rng, dtype=D))
    eig = torch.logspace(np.log10(low), np.log10(high), n, dtype=D)
    return (q * eig) @ q.T


def test_cg_equals_dense_solve(rng):
    n = 30
    A = _spd(rng, n)
    b = torch.randn(n, generator=rng, dtype=D)
    res = cg(DenseOperator(A), b, rtol=1e-13, max_iters=5 * n)  # finite precision: > n steps
    x_ref = torch.linalg.solve(A, b)
    assert res.converged
    assert 0 < res.iterations <= 5 * n
    torch.testing.assert_close(res.x, x_ref, rtol=0, atol=1e-10 * float(x_ref.norm()))
    assert res.residual_norm <= 1e-13 * float(b.norm())
    # the reported residual is the true one (up to recurrence drift)
    assert abs(float((b - A @ res.x).norm()) - res.residual_norm) <= 1e-11 * float(b.norm())


def test_cg_with_damping_operator(rng):
    n = 20
    M = torch.randn(n, 5, generator=rng, dtype=D)
    G = M @ M.T  # rank 5, PSD
    op = DenseOperator(G) + 0.3 * Identity(n, D)
    b = torch.randn(n, generator=rng, dtype=D)
    res = cg(op, b, rtol=1e-13, max_iters=5 * n)
    torch.testing.assert_close(res.x, torch.linalg.solve(G + 0.3 * torch.eye(n, dtype=D), b), rtol=0, atol=1e-10)


def test_cg_warm_start(rng):
    n = 15
    A = _spd(rng, n)
    b = torch.randn(n, generator=rng, dtype=D)
    x_ref = torch.linalg.solve(A, b)
    x0 = x_ref + 1e-3 * torch.randn(n, generator=rng, dtype=D)
    x0_copy = x0.clone()
    res = cg(DenseOperator(A), b, x0=x0, rtol=1e-13, max_iters=5 * n)
    torch.testing.assert_close(res.x, x_ref, rtol=0, atol=1e-10)
    assert torch.equal(x0, x0_copy)  # not modified in place
    # an exact warm start returns at once (one product for the initial residual)
    op = DenseOperator(A)
    res0 = cg(op, b, x0=x_ref, rtol=1e-8)
    assert res0.iterations == 0 and res0.converged and op.matvecs == 1


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_cg_respects_max_iters_and_is_the_krylov_optimum(rng, k):
    n = 25
    A = _spd(rng, n, 0.01, 100.0)  # ill-conditioned: no convergence in k steps
    b = torch.randn(n, generator=rng, dtype=D)
    op = DenseOperator(A)
    res = cg(op, b, max_iters=k, rtol=1e-14)
    assert not res.converged
    assert res.iterations == k
    assert op.matvecs == k
    # the k-th CG iterate minimises the A-norm error over span{b, Ab, …, A^{k−1}b}
    K = torch.stack([torch.linalg.matrix_power(A, j) @ b for j in range(k)], dim=1)
    Q, _ = torch.linalg.qr(K)
    x_k = Q @ torch.linalg.solve(Q.T @ A @ Q, Q.T @ b)
    torch.testing.assert_close(res.x, x_k, rtol=0, atol=1e-9 * float(x_k.norm()))
    assert res.residual_norm == pytest.approx(float((b - A @ x_k).norm()), rel=1e-8)


def test_cg_zero_rhs_returns_zero(rng):
    n = 10
    op = DenseOperator(_spd(rng, n))
    b = torch.zeros(n, dtype=D)
    res = cg(op, b)
    assert torch.equal(res.x, torch.zeros(n, dtype=D))
    assert res.converged and res.iterations == 0 and res.residual_norm == 0.0
    assert op.matvecs == 0


def test_cg_stops_on_non_positive_curvature():
    A = torch.diag(torch.tensor([1.0, -1.0], dtype=D))
    b = torch.tensor([0.0, 1.0], dtype=D)
    res = cg(DenseOperator(A), b)
    assert not res.converged and res.breakdown
    assert torch.equal(res.x, torch.zeros(2, dtype=D))  # last iterate: the start
    # running out of iterations, or converging, is no breakdown
    assert not cg(DenseOperator(torch.eye(2, dtype=D)), b).breakdown
    assert not cg(DenseOperator(torch.diag(torch.tensor([1.0, 1e-8], dtype=D))), torch.ones(2, dtype=D),
                  max_iters=1, rtol=1e-14).breakdown


def test_cg_matches_scipy_through_to_scipy(rng):
    from scipy.sparse.linalg import cg as scipy_cg

    n = 30
    A = _spd(rng, n)
    b = torch.randn(n, generator=rng, dtype=D)
    op = DenseOperator(A)
    x_sp, info = scipy_cg(op.to_scipy(), b.numpy(), rtol=1e-13, atol=0.0, maxiter=10 * n)
    assert info == 0
    res = cg(op, b, rtol=1e-13, max_iters=5 * n)
    np.testing.assert_allclose(res.x.numpy(), x_sp, rtol=0, atol=1e-10 * float(np.linalg.norm(x_sp)))
    np.testing.assert_allclose(x_sp, torch.linalg.solve(A, b).numpy(), rtol=0, atol=1e-10 * float(np.linalg.norm(x_sp)))
