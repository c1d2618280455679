"""Linear operators on flat parameter vectors.

An operator only knows how to multiply a vector (``matvec``). Sums and scalings
are operators too, so damping is algebra (``G + 1e-3 * Identity(n)``), not a
solver flag. Solvers in :mod:`geopath.core.cg` and :mod:`geopath.core.trust_region` see
nothing but these objects and vectors.
"""

from __future__ import annotations

from typing import Callable

import torch


class LinearOperator:
    """A symmetric linear map ``R^n -> R^n`` defined by its product with a vector."""

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device | str):
        self.n = int(n)
        self.dtype = dtype
        self.device = torch.device(device)
        self.matvecs = 0  # number of products taken, for cost accounting

    # --- the one method a subclass implements -------------------------------
    def _matvec(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.n,):
            raise ValueError(f"expected a vector of shape ({self.n},), got {tuple(v.shape)}")
        self.matvecs += 1
        return self._matvec(v)

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    # --- algebra -------------------------------------------------------------
    def __add__(self, other: "LinearOperator") -> "LinearOperator":
        return SumOperator(self, other)

    def __mul__(self, scale: float) -> "LinearOperator":
        return ScaledOperator(self, float(scale))

    __rmul__ = __mul__

    # --- bridges ----------------------------------------------------------------
    def to_dense(self) -> torch.Tensor:
        """Materialise the matrix column by column (tests and tiny models only)."""
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(eye[:, i]) for i in range(self.n)], dim=1)

    def to_scipy(self):
        """A :class:`scipy.sparse.linalg.LinearOperator` view (float64 numpy vectors)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator as ScipyOperator

        def mv(x):
            x = np.asarray(x).reshape(-1)
            t = torch.as_tensor(x, dtype=self.dtype, device=self.device)
            return self.matvec(t).detach().cpu().double().numpy()

        return ScipyOperator((self.n, self.n), matvec=mv, rmatvec=mv, dtype=np.float64)


class Identity(LinearOperator):
    def __init__(self, n: int, dtype=torch.float32, device="cpu"):
        super().__init__(n, dtype, device)

    def _matvec(self, v):
        return v.clone()


class DenseOperator(LinearOperator):
    """Wraps an explicit symmetric matrix (references in tests, tiny problems)."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matvec(self, v):
        return self.matrix @ v


class FunctionOperator(LinearOperator):
    """Wraps a plain ``v -> A v`` callable."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n: int, dtype, device):
        super().__init__(n, dtype, device)
        self.fn = fn

    def _matvec(self, v):
        return self.fn(v)


class SumOperator(LinearOperator):
    def __init__(self, a: LinearOperator, b: LinearOperator):
        if a.n != b.n:
            raise ValueError(f"cannot add operators of sizes {a.n} and {b.n}")
        super().__init__(a.n, torch.promote_types(a.dtype, b.dtype), a.device)  # (float32 + float64: float64)
        self.a, self.b = a, b

    def _matvec(self, v):
        return self.a.matvec(v) + self.b.matvec(v)


class ScaledOperator(LinearOperator):
    def __init__(self, a: LinearOperator, scale: float):
        super().__init__(a.n, a.dtype, a.device)
        self.a, self.scale = a, scale

    def _matvec(self, v):
        return self.scale * self.a.matvec(v)


class RestrictedOperator(LinearOperator):
    """``P A P`` for the coordinate projection ``P = diag(free)``: ``A`` on a subspace.

    Used to walk *within* a hyperplane target (the masked coordinates never move).
    """

    def __init__(self, a: LinearOperator, free: torch.Tensor):
        super().__init__(a.n, a.dtype, a.device)
        self.a, self.free = a, free.to(device=a.device, dtype=a.dtype)

    def _matvec(self, v):
        return self.free * self.a.matvec(self.free * v)
