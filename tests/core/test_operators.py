"""Operator algebra and bridges agree with the same algebra on explicit dense matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geopath.core.operators import (
    DenseOperator,
    FunctionOperator,
    Identity,
    RestrictedOperator,
    ScaledOperator,
    SumOperator,
)

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64
N = 7


def _sym(rng, n=N):
    m = torch.randn(n, n, generator=rng, dtype=D)
    return m + m.T


def test_dense_operator_to_dense_is_the_matrix(rng):
    M = _sym(rng)
    op = DenseOperator(M)
    assert torch.equal(op.to_dense(), M)
    assert op.matvecs == N  # one product per column


def test_function_operator_to_dense(rng):
    M = _sym(rng)
    op = FunctionOperator(lambda v: M @ v, N, D, "cpu")
    torch.testing.assert_close(op.to_dense(), M, rtol=0, atol=1e-15)


def test_identity_to_dense():
    I = Identity(N, D)
    assert torch.equal(I.to_dense(), torch.eye(N, dtype=D))


def test_sum_scale_identity_algebra_equals_dense_algebra(rng):
    A, B = _sym(rng), _sym(rng)
    a, b = DenseOperator(A), DenseOperator(B)
    I = Identity(N, D)
    op = a + 2.5 * b + I * 0.3 + (-1.25) * a
    assert isinstance(op, SumOperator)
    expected = A + 2.5 * B + 0.3 * torch.eye(N, dtype=D) - 1.25 * A
    torch.testing.assert_close(op.to_dense(), expected, rtol=0, atol=1e-13)
    v = torch.randn(N, generator=rng, dtype=D)
    torch.testing.assert_close(op @ v, expected @ v, rtol=0, atol=1e-13)


def test_damping_a_float64_operator_with_the_default_identity_stays_float64(rng):
    """``1e-3 * Identity(n) + G`` (the Identity float32 by default) is a float64 operator when ``G`` is: it
    took the left operand's dtype, and ``to_dense`` then failed on mixed dtypes."""
    A = _sym(rng)
    for op in (1e-3 * Identity(N) + DenseOperator(A), DenseOperator(A) + 1e-3 * Identity(N)):
        assert op.dtype == D
        torch.testing.assert_close(op.to_dense(), A + 1e-3 * torch.eye(N, dtype=D), rtol=0, atol=1e-15)


def test_scaling_both_sides_and_nesting(rng):
    A = _sym(rng)
    a = DenseOperator(A)
    left, right = 3.0 * a, a * 3.0
    assert isinstance(left, ScaledOperator) and isinstance(right, ScaledOperator)
    torch.testing.assert_close(left.to_dense(), 3.0 * A, rtol=0, atol=1e-14)
    torch.testing.assert_close(right.to_dense(), 3.0 * A, rtol=0, atol=1e-14)
    nested = 2.0 * (a + 0.5 * Identity(N, D))  # the damping pattern of geodesic.py
    torch.testing.assert_close(nested.to_dense(), 2.0 * A + torch.eye(N, dtype=D), rtol=0, atol=1e-14)


def test_sum_counts_products_of_its_parts(rng):
    a, b = DenseOperator(_sym(rng)), DenseOperator(_sym(rng))
    s = a + b
    s.matvec(torch.ones(N, dtype=D))
    assert (s.matvecs, a.matvecs, b.matvecs) == (1, 1, 1)


def test_sum_rejects_mismatched_sizes(rng):
    with pytest.raises(ValueError):
        DenseOperator(_sym(rng, 3)) + DenseOperator(_sym(rng, 4))


@pytest.mark.parametrize("shape", [(N + 1,), (N - 1,), (N, 1), (1, N), ()])
def test_matvec_rejects_wrong_shapes(rng, shape):
    op = DenseOperator(_sym(rng))
    with pytest.raises(ValueError):
        op.matvec(torch.zeros(shape, dtype=D))
    assert op.matvecs == 0


def test_to_scipy_matvec_equals_torch(rng):
    A = _sym(rng)
    op = DenseOperator(A) + 0.7 * Identity(N, D)
    sp = op.to_scipy()
    assert sp.shape == (N, N)
    assert sp.dtype == np.float64
    x = torch.randn(N, generator=rng, dtype=D)
    expected = (A + 0.7 * torch.eye(N, dtype=D)) @ x
    got = sp.matvec(x.numpy())
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got.reshape(-1), expected.numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(sp.rmatvec(x.numpy()).reshape(-1), expected.numpy(), rtol=0, atol=1e-13)
    # a column vector and a block of vectors go through too
    np.testing.assert_allclose(sp.matvec(x.numpy()[:, None]).reshape(-1), expected.numpy(), rtol=0, atol=1e-13)
    X = torch.randn(N, 3, generator=rng, dtype=D)
    np.testing.assert_allclose(sp.matmat(X.numpy()), ((A + 0.7 * torch.eye(N, dtype=D)) @ X).numpy(),
                               rtol=0, atol=1e-13)


def test_restricted_operator_equals_PAP(rng):
    A = _sym(rng)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    P = torch.diag(keep.to(D))
    op = RestrictedOperator(DenseOperator(A), keep)
    dense = op.to_dense()
    torch.testing.assert_close(dense, P @ A @ P, rtol=0, atol=1e-14)
    # the masked rows and columns are exactly zero, the rest untouched
    assert torch.all(dense[~keep] == 0) and torch.all(dense[:, ~keep] == 0)
    assert torch.equal(dense[keep][:, keep], A[keep][:, keep])
    v = torch.randn(N, generator=rng, dtype=D)
    out = op @ v
    assert torch.all(out[~keep] == 0)
    torch.testing.assert_close(out, P @ A @ P @ v, rtol=0, atol=1e-13)
