"""Shared fixtures for the numerical-core tests: tiny float64 models and dense references.

Every model here has fewer than ~60 parameters, so explicit Jacobians, metrics and
eigendecompositions are cheap and exact to float64 round-off. Nothing in this file
changes torch's global default dtype (other test modules share this conftest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from geopath.io.archs import MLP

DTYPE = torch.float64


class TinyBNNet(nn.Module):
    """Conv2d(1→2, 3×3) → BatchNorm2d(2) → ReLU → flatten → Linear(8→3), for 1×4×4 inputs."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 2 * 2, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _mlp() -> nn.Module:
    return MLP(in_features=5, hidden=(4,), num_classes=3)


def _bn_net() -> nn.Module:
    m = TinyBNNet()
    with torch.no_grad():
        # non-trivial running statistics and affine parameters (eval-mode BN is not the identity)
        m.bn.running_mean.copy_(torch.tensor([0.15, -0.1]))
        m.bn.running_var.copy_(torch.tensor([0.45, 0.7]))
        m.bn.num_batches_tracked.fill_(7)
        m.bn.weight.copy_(torch.tensor([1.3, 0.8]))
        m.bn.bias.copy_(torch.tensor([0.1, -0.05]))
    return m


@dataclass(frozen=True)
class Case:
    """A tiny model as plain data: how to build it, what to feed it, and the seed."""

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # per-sample shape
    seed: int
    num_samples: int = 4
    num_classes: int = 3

    def make_model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return self.factory().to(DTYPE)

    @property
    def inputs(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + self.seed)
        return torch.randn((self.num_samples, *self.input_shape), generator=g, dtype=DTYPE)


CASES = {
    "mlp": Case("mlp", _mlp, (5,), seed=0),
    "cnn_bn": Case("cnn_bn", _bn_net, (1, 4, 4), seed=1),
    # torchvision models are skipped on purpose: even the smallest has ~10^6 parameters.
}


@pytest.fixture(params=sorted(CASES), ids=sorted(CASES))
def case(request) -> Case:
    return CASES[request.param]


@pytest.fixture
def mlp_case() -> Case:
    return CASES["mlp"]


@pytest.fixture
def bn_case() -> Case:
    return CASES["cnn_bn"]


# --------------------------------------------------------------------------- dense references


def _dense_jacobian(model: nn.Module, space, w: torch.Tensor, x: torch.Tensor, bn_stats: str = "batch",
                    chunks: list[int] | None = None) -> torch.Tensor:
    """Jacobians ``J[i] = d logits_i / d w``, shape ``(N, C, n)``, Dropout off.

    BatchNorm as in the operator: ``batch`` normalises with the statistics of each micro-batch
    (``chunks``: their sizes; default one micro-batch), ``running`` with the stored ones. With
    batch statistics an output depends on its whole micro-batch; ``J[i]`` is still the
    derivative of output ``i`` alone.
    """
    from geopath.core.metric import bn_statistics

    sizes = chunks or [x.shape[0]]
    parts, start = [], 0
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    params = space.unflatten(w.detach().clone())
    for size in sizes:
        xb = x[start:start + size]
        start += size

        def f(p, xb=xb):
            return functional_call(model, (p, buffers), (xb,))

        with bn_statistics(model, bn_stats):
            out = f(params)
            jac = jacrev(f)(params)
        N, C = out.shape
        parts.append(torch.cat([jac[name].reshape(N, C, -1) for name in space.names], dim=2))
    return torch.cat(parts)


def _output_hessians(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """``H_i`` per sample, shape ``(N, C, C)``."""
    N, C = logits.shape
    if str(getattr(kind, "value", kind)) == "logits":
        return torch.eye(C, dtype=logits.dtype).expand(N, C, C).clone()
    p = torch.softmax(logits, dim=-1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def _dense_metric(J: torch.Tensor, logits: torch.Tensor, kind: str) -> torch.Tensor:
    """``mean_i J_iᵀ H_i J_i``."""
    H = _output_hessians(kind, logits)
    return torch.einsum("nci,ncd,ndj->ij", J, H, J) / J.shape[0]


def _dense_tr(A: torch.Tensor, b: torch.Tensor, radius: float) -> tuple[torch.Tensor, float]:
    """Exact ``argmin ½θᵀAθ − bᵀθ s.t. ‖θ‖ ≤ radius`` by eigendecomposition + brentq on λ.

    Returns ``(θ, λ)``. The 'hard case' is not handled (asserted absent).
    """
    from scipy.optimize import brentq

    A_np = A.detach().double().cpu().numpy()
    A_np = 0.5 * (A_np + A_np.T)
    b_np = b.detach().double().cpu().numpy()
    d, Q = np.linalg.eigh(A_np)
    bt = Q.T @ b_np
    scale = max(float(np.abs(d).max()), 1.0)
    if d.min() > 1e-10 * scale:
        theta = Q @ (bt / d)
        if np.linalg.norm(theta) <= radius:
            return torch.as_tensor(theta, dtype=b.dtype), 0.0

    def excess(lam):
        return float(np.linalg.norm(bt / (d + lam))) - radius

    lo = max(0.0, -float(d.min())) + 1e-13 * scale
    hi = float(np.linalg.norm(b_np)) / radius + max(0.0, -float(d.min())) + 1.0
    assert excess(lo) > 0, "hard case: the reference solver does not handle it"
    assert excess(hi) < 0
    lam = brentq(excess, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=1000)
    theta = Q @ (bt / (d + lam))
    return torch.as_tensor(theta, dtype=b.dtype), float(lam)


@pytest.fixture
def dense_jacobian():
    return _dense_jacobian


@pytest.fixture
def dense_metric():
    return _dense_metric


@pytest.fixture
def output_hessians():
    return _output_hessians


@pytest.fixture
def dense_tr():
    return _dense_tr


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread, restoring the previous setting afterwards.

    The models are tiny: a thread pool buys nothing and, on a loaded machine, makes a
    conv backward pass ~100× slower. Test modules opt in with ``pytestmark``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def rng():
    """A seeded torch generator for test data (float64 tensors are drawn explicitly)."""
    return torch.Generator().manual_seed(12345)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tests marked ``slow`` run whole jobs on the real MNIST: skipped where it is absent."""
    from ._helpers import DATA_ROOT, MNIST_PRESENT

    if item.get_closest_marker("slow") is not None and not MNIST_PRESENT:
        pytest.skip(f"MNIST not found under {DATA_ROOT}")
