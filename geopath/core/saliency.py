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

A network whose every parameter belongs to an ``nn.Linear`` applied once to ``(batch, features)``
inputs (an MLP) needs no per-sample gradients at all: sample ``i``'s gradient of a weight is the
outer product ``δ_i h_iᵀ`` of the layer's output cotangent and input, so the sum of its squares
is ``(δ²)ᵀ(h²)``, one matrix product per layer after one ordinary backward pass (BackPACK's
trick). Same estimate, same probes; it checks itself against the batch gradient of the same backward
pass and falls back to the per-sample pass where the outer-product form does not hold.

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
LINEAR_CHUNK = 256  # samples per backward pass of the Linear-only path (no per-sample copies)
CHECK_SEED = 20261203  # the random direction the Linear-only path checks its batch gradient along


class _NotLinearOnly(Exception):
    """The network is not a stack of ``nn.Linear`` layers on ``(batch, features)`` inputs."""


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
    layers = _linear_layers(model, space)
    with metric_mode(model, bn), torch.enable_grad():  # gradients, also for a caller inside no_grad
        if layers is not None:
            try:
                for start in range(0, len(rows), LINEAR_CHUNK):
                    x = rows[start:start + LINEAR_CHUNK].to(w.device)
                    total += _linear_squares(model, params, buffers, space, layers, x, kind, gen)
                return total / max(len(rows), 1)
            except _NotLinearOnly:  # the shortcut does not describe this network: per-sample gradients
                total.zero_()
                gen.manual_seed(seed)
        for start in range(0, len(rows), CHUNK):
            x = rows[start:start + CHUNK].to(w.device)
            try:
                total += _per_sample_squares(model, params, buffers, space, x, kind, gen)
            except (RuntimeError, NotImplementedError):  # an operation vmap cannot batch
                total += _micro_batch_squares(model, params, buffers, space, x, kind, gen)
            count += len(x)
    return total / max(count, 1)


def _linear_layers(model: nn.Module, space: ParamSpace) -> dict[nn.Module, tuple[str, str | None]] | None:
    """Each ``nn.Linear`` (the class itself, not a subclass) whose weight and bias are ``space``'s parameters,
    with their names, when those are all of ``space``'s parameters; else ``None``."""
    names = set(space.names)
    layers, covered = {}, set()
    for name, m in model.named_modules():
        if type(m) is nn.Linear:
            prefix = f"{name}." if name else ""
            weight = prefix + "weight"
            bias = prefix + "bias" if m.bias is not None else None
            if weight in names and (bias is None or bias in names):
                layers[m] = (weight, bias)
                covered.update(n for n in (weight, bias) if n)
    return layers if layers and covered == names else None


def _linear_squares(model, params, buffers, space, layers, x, kind, gen) -> torch.Tensor:
    """``Σ_i (J_iᵀ u_i)²`` over the samples ``x`` for a Linear-only network: per layer ``(δ²)ᵀ(h²)``.

    Assumes what the outer-product form needs: each layer's output depends on its own sample's input
    alone (no batch statistics, no mixing across the batch). Raises :class:`_NotLinearOnly` when the
    shortcut does not describe the network: a layer called twice or on inputs with more dimensions,
    an output changed in place (``ReLU(inplace=True)``), or — checked on every chunk from the same
    backward pass — a weight whose batch gradient is not ``δᵀh`` (tied weights, a weight used
    outside its layer)."""
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def keep(module, args, out):
        if module in seen or args[0].dim() != 2:
            raise _NotLinearOnly
        seen[module] = (args[0].detach(), out, out._version)

    handles = [m.register_forward_hook(keep) for m in layers]
    try:
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        logits = functional_call(model, (leaves, buffers), (x,))
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(layers) or any(out._version != v for _, out, v in seen.values()):
        raise _NotLinearOnly
    u = _probe_vectors(kind, logits.detach(), gen)
    mods = list(seen)
    names = list(space.names)
    grads = torch.autograd.grad((logits * u).sum(), [seen[m][1] for m in mods] + [leaves[n] for n in names],
                                allow_unused=True)
    deltas, batch = grads[:len(mods)], dict(zip(names, grads[len(mods):]))
    squares = {}
    check = torch.Generator().manual_seed(CHECK_SEED)  # its own stream: the probes stay the per-sample path's
    for m, d in zip(mods, deltas):
        weight, bias = layers[m]
        h = seen[m][0]
        d = torch.zeros_like(seen[m][1]) if d is None else d
        # the batch gradient must be δᵀh: compared along a random direction r, (δᵀh) r = δᵀ(h r), at the
        # cost of two matrix-vector products instead of a third weight-sized matrix product
        r = torch.randn(h.shape[1], generator=check).to(h)
        for name, got, value in ((weight, lambda g: g @ r, d.T @ (h @ r)), (bias, lambda g: g, d.sum(0))):
            if name is None:
                continue
            g = got(batch[name]) if batch[name] is not None else torch.zeros_like(value)
            if float((g - value).norm()) > 1e-3 * float(g.norm()) + 1e-12:
                raise _NotLinearOnly
        d2 = d.pow(2)
        squares[weight] = d2.T @ h.pow(2)
        if bias:
            squares[bias] = d2.sum(0)
    return space.flatten({n: squares[n] for n in names})


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
