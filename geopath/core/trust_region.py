"""The trust-region step ``argmin_θ ½θᵀAθ − bᵀθ  s.t.  ‖θ‖² ≤ ε``.

geopath's step ``argmin θᵀgθ − βθᵀv`` is this problem with ``A = 2g`` and
``b = βv`` (plus ``−2Jᵀr`` when anchored; see :mod:`geopath.core.step`). Because
``g`` has rank at most (outputs × samples) it is rank-deficient for any real
network, and the constraint is active whenever ``b`` reaches its null space.

Two methods, both matrix-free:

* ``steihaug`` (default): CG that stops on the boundary (Steihaug–Toint). One
  operator product per iteration; exact for an interior solution, an
  approximation on the boundary.
* ``multiplier``: solves for the Lagrange multiplier ``λ ≥ 0`` with
  ``‖(A + λI)⁻¹b‖ = √ε`` by safeguarded secant iterations on ``1/‖θ(λ)‖``, each
  a CG solve with the damped operator ``A + λI``. Exact (to CG tolerance) but
  several times dearer; a reference and a choice for small models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from geopath.core.cg import cg
from geopath.core.operators import Identity, LinearOperator
from geopath.core.choices import TRMethod


@dataclass
class TRResult:
    theta: torch.Tensor
    A_theta: torch.Tensor  # A θ, so θᵀAθ costs no further product
    iterations: int  # operator products spent
    on_boundary: bool
    multiplier: float = 0.0

    @property
    def curvature(self) -> float:
        """``θᵀAθ``."""
        return float(torch.dot(self.theta, self.A_theta))


def _to_boundary(x: torch.Tensor, p: torch.Tensor, radius: float) -> float:
    """Positive ``τ`` with ``‖x + τp‖ = radius`` (``‖x‖ ≤ radius``)."""
    pp = float(torch.dot(p, p))
    xp = float(torch.dot(x, p))
    xx = float(torch.dot(x, x))
    disc = max(xp * xp + pp * (radius * radius - xx), 0.0)
    return (-xp + math.sqrt(disc)) / pp


def steihaug_cg(
    A: LinearOperator, b: torch.Tensor, radius: float, max_iters: int = 20, rtol: float = 1e-6
) -> TRResult:
    if radius <= 0:
        raise ValueError("the trust radius must be positive")
    x = torch.zeros_like(b)
    Ax = torch.zeros_like(b)
    r = b.clone()
    tol = rtol * float(torch.linalg.vector_norm(b))
    rs = torch.dot(r, r)
    if float(rs.sqrt()) <= tol or float(rs) == 0.0:
        return TRResult(x, Ax, 0, False)
    p = r.clone()
    for k in range(1, max_iters + 1):
        Ap = A.matvec(p)
        pAp = torch.dot(p, Ap)
        if not torch.isfinite(pAp):
            raise FloatingPointError("non-finite curvature in the trust-region solve")
        if pAp <= 0:
            tau = _to_boundary(x, p, radius)
            return TRResult(x + tau * p, Ax + tau * Ap, k, True)
        alpha = rs / pAp
        x_new = x + alpha * p
        if float(torch.linalg.vector_norm(x_new)) >= radius:
            tau = _to_boundary(x, p, radius)
            return TRResult(x + tau * p, Ax + tau * Ap, k, True)
        x, Ax = x_new, Ax + alpha * Ap
        r = r - alpha * Ap
        rs_new = torch.dot(r, r)
        if float(rs_new.sqrt()) <= tol:
            return TRResult(x, Ax, k, False)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return TRResult(x, Ax, max_iters, False)


def multiplier_step(
    A: LinearOperator,
    b: torch.Tensor,
    radius: float,
    max_iters: int = 50,
    rtol: float = 1e-8,
    newton_iters: int = 30,
    radius_rtol: float = 1e-6,
) -> TRResult:
    """Exact trust-region step via the multiplier ``λ`` (see module docstring)."""
    if radius <= 0:
        raise ValueError("the trust radius must be positive")
    products = 0
    eye = Identity(A.n, A.dtype, A.device)

    def solve(lam: float):
        nonlocal products
        op = A + lam * eye if lam > 0 else A
        res = cg(op, b, max_iters=max_iters, rtol=rtol)
        products += res.iterations
        return res

    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0.0:
        z = torch.zeros_like(b)
        return TRResult(z, z, 0, False)
    # Interior candidate: λ = 0 is the answer when A θ = b is solved inside the ball.
    res0 = solve(0.0)
    x0 = res0.x
    Ax0 = A.matvec(x0)
    products += 1
    resid = float(torch.linalg.vector_norm(Ax0 - b))
    if float(torch.linalg.vector_norm(x0)) <= radius and not res0.breakdown:
        # inside the ball: the (possibly truncated) CG iterate is a descent step, since CG
        # from 0 decreases the quadratic monotonically; converged, it is the exact answer. (Not after a
        # breakdown: then b reaches a direction of zero curvature, the quadratic falls without bound along
        # it, and the answer is on the boundary, however short the iterate CG stopped at.)
        return TRResult(x0, Ax0, products, False)

    # φ(λ) = 1/‖θ(λ)‖ − 1/radius is increasing in λ; φ(λ_hi) ≥ 0 for λ_hi = ‖b‖/radius.
    def phi(lam):
        x = solve(lam).x
        return 1.0 / max(float(torch.linalg.vector_norm(x)), 1e-300) - 1.0 / radius, x

    lo, hi = 0.0, bnorm / radius
    x0norm = float(torch.linalg.vector_norm(x0))
    unsolved = res0.breakdown or resid > 1e3 * rtol * bnorm  # (θ(λ) grows without bound as λ → 0)
    f_lo = -1.0 / radius if unsolved else 1.0 / x0norm - 1.0 / radius
    f_hi, x_hi = phi(hi)
    lam, x = hi, x_hi
    side = 0
    for _ in range(newton_iters):
        if abs(f_hi - f_lo) < 1e-300:
            break
        lam = hi - f_hi * (hi - lo) / (f_hi - f_lo)  # regula falsi (Illinois variant)
        lam = min(max(lam, lo), hi)
        f, x = phi(lam)
        if abs(float(torch.linalg.vector_norm(x)) - radius) <= radius_rtol * radius:
            break
        if f > 0:
            hi, f_hi = lam, f
            if side == 1:
                f_lo /= 2
            side = 1
        else:
            lo, f_lo = lam, f
            if side == -1:
                f_hi /= 2
            side = -1
    # never leave the ball. Shrinking a descent iterate of a convex quadratic with q(0) = 0
    # is always safe (q(sx) ≤ s·q(x) < 0 for 0 < s ≤ 1); growing it is done only when the
    # search converged onto the boundary, to remove the CG tolerance's tiny mismatch
    xnorm = float(torch.linalg.vector_norm(x))
    if xnorm > radius or abs(xnorm - radius) <= 1e-3 * radius:
        x = x * (radius / xnorm)
        xnorm = radius
    Ax = A.matvec(x)
    products += 1
    return TRResult(x, Ax, products, abs(xnorm - radius) <= 1e-6 * radius, multiplier=lam)


def trust_region_step(
    A: LinearOperator,
    b: torch.Tensor,
    radius: float,
    method: TRMethod | str = TRMethod.STEIHAUG,
    max_iters: int = 20,
    rtol: float = 1e-6,
) -> TRResult:
    method = TRMethod(method)
    if method is TRMethod.STEIHAUG:
        return steihaug_cg(A, b, radius, max_iters=max_iters, rtol=rtol)
    return multiplier_step(A, b, radius, max_iters=max_iters, rtol=rtol)
