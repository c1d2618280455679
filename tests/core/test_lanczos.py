"""Lanczos' top eigenvalue against ``torch.linalg.eigvalsh`` of explicit float64 matrices."""

from __future__ import annotations

import pytest
import torch

from geopath.core.lanczos import top_eigenvalue
from geopath.core.operators import DenseOperator

D = torch.float64


def _psd(n: int, spectrum: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(spectrum) Qᵀ with a random orthogonal Q."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=D))
    return q @ torch.diag(spectrum.to(D)) @ q.T


def test_n_products_give_the_exact_top_eigenvalue():
    a = torch.randn(12, 12, generator=torch.Generator().manual_seed(1), dtype=D)
    g = a @ a.T + 0.1 * torch.eye(12, dtype=D)  # (full rank: the Krylov space needs all 12 products)
    op = DenseOperator(g)
    got = top_eigenvalue(op, 12, torch.Generator().manual_seed(0))
    assert got == pytest.approx(float(torch.linalg.eigvalsh(g)[-1]), rel=1e-10)
    assert op.matvecs == 12


def test_ten_products_find_a_separated_top_eigenvalue_of_a_large_matrix_from_below():
    """A network-like spectrum (a few large eigenvalues, a long decaying tail) in 300 dimensions: 10 products are
    within 1e-5 of the top one and never above it; power iteration with as many products is 1 % off."""
    spectrum = torch.cat([torch.tensor([50.0, 46.0, 40.0]), 30.0 * 0.97 ** torch.arange(297, dtype=D)])
    g = _psd(300, spectrum)
    got = top_eigenvalue(DenseOperator(g), 10, torch.Generator().manual_seed(3))
    assert got <= 50.0 + 1e-9 and got == pytest.approx(50.0, rel=1e-5)
    v = torch.randn(300, generator=torch.Generator().manual_seed(3), dtype=D)
    for _ in range(10):
        v = g @ v / (g @ v).norm()
    assert float(v @ g @ v) < 50.0 * (1 - 5e-3)  # (what Lanczos is for)


def test_a_low_rank_operator_ends_early_with_the_exact_value():
    """Rank 2: the Krylov space is exhausted after two products; the remaining ones are not taken."""
    u = torch.randn(40, 2, generator=torch.Generator().manual_seed(2), dtype=D)
    g = u @ u.T
    op = DenseOperator(g)
    got = top_eigenvalue(op, 20, torch.Generator().manual_seed(0))
    assert got == pytest.approx(float(torch.linalg.eigvalsh(g)[-1]), rel=1e-10)
    assert op.matvecs <= 3


def test_the_start_is_drawn_from_the_generator():
    g = _psd(50, torch.linspace(1.0, 10.0, 50))
    a = top_eigenvalue(DenseOperator(g), 4, torch.Generator().manual_seed(0))
    b = top_eigenvalue(DenseOperator(g), 4, torch.Generator().manual_seed(0))
    c = top_eigenvalue(DenseOperator(g), 4, torch.Generator().manual_seed(1))
    assert a == b and a != c and a < 10.0


def test_fewer_than_one_product_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        top_eigenvalue(DenseOperator(torch.eye(3, dtype=D)), 0)
