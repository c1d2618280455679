"""Conjugate gradient on a :class:`~geopath.core.operators.LinearOperator` (never a model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geopath.core.operators import LinearOperator


@dataclass
class CGResult:
    x: torch.Tensor
    iterations: int
    residual_norm: float
    converged: bool
    breakdown: bool = False  # stopped on non-positive curvature: ``b`` reaches where ``A`` has none


def cg(
    A: LinearOperator,
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iters: int | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
) -> CGResult:
    """Solve ``A x = b`` for symmetric positive (semi-)definite ``A``.

    Stops when ``‖b − Ax‖ ≤ max(rtol·‖b‖, atol)``, after ``max_iters`` products,
    or on a breakdown (non-positive curvature), returning the last iterate.
    """
    max_iters = A.n if max_iters is None else max_iters
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - A.matvec(x) if x0 is not None else b.clone()
    tol = max(rtol * float(torch.linalg.vector_norm(b)), atol)
    rs = torch.dot(r, r)
    if float(rs.sqrt()) <= tol:
        return CGResult(x, 0, float(rs.sqrt()), True)
    p = r.clone()
    for k in range(1, max_iters + 1):
        Ap = A.matvec(p)
        pAp = torch.dot(p, Ap)
        if not torch.isfinite(pAp) or pAp <= 0:
            return CGResult(x, k, float(rs.sqrt()), False, breakdown=True)
        alpha = rs / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = torch.dot(r, r)
        if float(rs_new.sqrt()) <= tol:
            return CGResult(x, k, float(rs_new.sqrt()), True)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return CGResult(x, max_iters, float(rs.sqrt()), False)
