"""The metric's diagonal, and the saliency of removing each weight that it gives.

Removing weight ``q`` alone (``θ = −w_q e_q``) changes the function, to second order, by
``θᵀ g θ = w_q² [g]_qq``: Optimal Brain Damage's saliency (LeCun et al. 1990) with the
pull-back metric in place of the loss Hessian, the diagonal member of the OBS / WoodFisher /
OBC family. ``[g]_qq = mean_i Σ_k (∂z_ik/∂w_q)²`` (logits metric) is estimated without
building ``J``: for each sample ``i`` and a random output vector ``u_i`` with
``E[u_i u_iᵀ] = H_i``, ``E[(J_iᵀ u_i)²] = diag(J_iᵀ H_i J_i)``. ``u_i`` is a Rademacher vector
for the logits metric (``H = I``) and ``p_i − onehot(y)``, ``y`` drawn from ``softmax(z_i)``,
for the Fisher metric (``H = diag(p) − ppᵀ``), as in BackPACK's ``DiagGGNMC``. The
per-sample products ``J_iᵀ u_i`` come from one vectorised backward pass
(:func:`torch.func.vmap` of :func:`torch.func.vjp`), so the estimate over ``N`` samples costs
about ``N`` forward+backward sample passes per probe, and its noise shrinks with ``N``.

With BatchNorm, a single sample has no batch statistics: the per-sample products use the
stored running statistics (the network as it was trained). A network :func:`torch.func.vmap`
cannot batch falls back to random signs over micro-batches of :data:`FALLBACK_BATCH` samples
(unbiased, noisier).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from geopath.core.choices import BNStats, MetricKind
from geopath.core.evaluate import has_batchnorm
from geopath.core.metric import metric_mode
from geopath.core.params import ParamSpace, buffers_of

FALLBACK_BATCH = 8
CHUNK = 16  # samples per vectorised backward pass (CHUNK gradient copies; larger chunks measured slower on CPU)


def _probe_vectors(kind: MetricKind, logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random output vectors ``u`` with ``E[u uᵀ] = H`` for each row of ``logits``."""
    if MetricKind(kind) is MetricKind.LOGITS:
        signs = torch.randint(0, 2, logits.shape, generator=gen).to(logits.device, logits.dtype)
        return 2.0 * signs - 1.0
    p = torch.softmax(logits.detach().float().cpu(), -1)
    y = torch.multinomial(p, 1, generator=gen).squeeze(1)
    return (p - nn.functional.one_hot(y, p.shape[-1]).to(p.dtype)).to(logits.device, logits.dtype)


def metric_diagonal(model: nn.Module, space: ParamSpace, w: torch.Tensor, inputs: torch.Tensor,
                    kind: MetricKind | str = MetricKind.LOGITS, probes: int = 1, seed: int = 0) -> torch.Tensor:
    """An unbiased estimate of ``diag g(w)`` over ``inputs`` (``probes`` random vectors per sample)."""
    kind = MetricKind(kind)
    params = space.unflatten(w.detach())
    buffers = buffers_of(model)
    gen = torch.Generator().manual_seed(seed)
    bn = BNStats.RUNNING if has_batchnorm(model) else BNStats.BATCH
    total = torch.zeros_like(w)
    count = 0
    rows = inputs.repeat(probes, *([1] * (inputs.dim() - 1))) if probes > 1 else inputs
    with metric_mode(model, bn):
        for start in range(0, len(rows), CHUNK):
            x = rows[start:start + CHUNK].to(w.device)
            try:
                total += _per_sample_squares(model, params, buffers, space, x, kind, gen)
            except (RuntimeError, NotImplementedError):  # an operation vmap cannot batch
                total += _micro_batch_squares(model, params, buffers, space, x, kind, gen)
            count += len(x)
    return total / max(count, 1)


def _per_sample_squares(model, params, buffers, space, x, kind, gen) -> torch.Tensor:
    def one(xi):
        out, pullback = vjp(lambda p: functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0), params)
        return out.detach(), pullback

    with torch.no_grad():
        logits = functional_call(model, (params, buffers), (x,))
    u = _probe_vectors(kind, logits, gen)

    def grad_of(xi, ui):
        _, pullback = one(xi)
        (g,) = pullback(ui)
        return space.flatten(g)

    return vmap(grad_of)(x, u).pow(2).sum(0)


def _micro_batch_squares(model, params, buffers, space, x, kind, gen) -> torch.Tensor:
    total = None
    for start in range(0, len(x), FALLBACK_BATCH):
        xb = x[start:start + FALLBACK_BATCH]
        logits, pullback = vjp(lambda p: functional_call(model, (p, buffers), (xb,)), params)
        (g,) = pullback(_probe_vectors(kind, logits, gen))
        sq = space.flatten(g).pow(2)
        total = sq if total is None else total + sq
    return total


def saliency(w: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """``w_q² [g]_qq``: the functional cost of removing each weight alone."""
    return w.pow(2) * diagonal
