"""Averaging peers: weight averaging / the linear path (merge, connect) and Fisher-weighted averaging (merge)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from geopath.core import distributed
from geopath.core.dataset import Dataset
from geopath.core.metric import math_attention
from geopath.core.params import ParamSpace, load_vector
from geopath.core.step import PASS_FORWARD
from geopath.peers._budget import Record
from geopath.peers.task import PeerTask


def interpolate(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, alphas: Sequence[float], record: Record,
                passes: float = 0.0) -> None:
    """Record ``(1 − α) w_A + α w_B`` for each α (weight averaging; the linear path)."""
    space = ParamSpace.of(model)
    for i, a in enumerate(alphas):
        load_vector(model, space, (1.0 - a) * w_a + a * w_b)
        record(i, model, passes, t=float(a), distance=float((1.0 - a) * torch.linalg.vector_norm(w_b - w_a)),
               alpha=float(a), final=i == len(alphas) - 1)


# sample passes per input of fisher_diag: a forward to draw the labels, then the per-sample forward+backward
FISHER_PASSES = 1.0 + PASS_FORWARD


def fisher_diag(model: nn.Module, ds: Dataset, samples: int = 2000, chunk: int = 64, seed: int = 0,
                device="cpu") -> torch.Tensor:
    """Diagonal Fisher ``E_x E_{y~p(y|x)} (∂ log p(y|x)/∂w)²`` as a flat vector.

    Labels are sampled from the model's own predictive distribution (the true Fisher,
    not the empirical one); per-sample gradients come from ``vmap(grad(...))``.
    Costs :data:`FISHER_PASSES` sample passes per input (the labels' forward, then a forward+backward). Under
    ``torchrun`` every rank draws the same labels and computes the per-sample gradients of its shard; the sums
    are all-reduced.
    """
    space = ParamSpace.of(model)
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if n in space.names}
    buffers = {n: b for n, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=gen)[:samples]

    def nll(p, x, y):
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(nll), in_dims=(None, 0, 0))
    total = torch.zeros(space.n, dtype=next(iter(params.values())).dtype, device=device)
    comm = distributed.current()
    for i in range(0, len(idx), chunk):
        x = ds.x[idx[i:i + chunk]].to(device)
        with torch.no_grad():
            probs = torch.softmax(model(x), -1)
        y = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(device)
        mine = comm.shard(len(x))  # under torchrun: this rank's per-sample gradients only
        x, y = x[mine], y[mine]
        if len(y):
            with math_attention():  # vmap(grad) has no rule for fused attention kernels either
                g = per_sample(params, x, y)
            total += torch.cat([g[n].reshape(len(y), -1) for n in space.names], dim=1).pow(2).sum(0)
    return comm.sum_(total) / max(len(idx), 1)


def fisher_merge(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, f_a: torch.Tensor, f_b: torch.Tensor,
                 alphas: Sequence[float], record: Record, passes: float = 0.0) -> None:
    """Record the Fisher-weighted average ``((1−α)F_A w_A + αF_B w_B) / ((1−α)F_A + αF_B)`` for each α.

    A tiny floor (1e-8 of the mean Fisher) keeps coordinates no task cares about at
    the plain average; α = 0 and α = 1 give A and B exactly.
    """
    space = ParamSpace.of(model)
    floor = 1e-8 * float((f_a + f_b).mean()) + 1e-30
    fa, fb = f_a + floor, f_b + floor
    for i, a in enumerate(alphas):
        if a <= 0.0:
            w = w_a
        elif a >= 1.0:
            w = w_b
        else:
            w = ((1.0 - a) * fa * w_a + a * fb * w_b) / ((1.0 - a) * fa + a * fb)
        load_vector(model, space, w)
        record(i, model, passes, t=float(a), distance=float(torch.linalg.vector_norm(w_b - w)), alpha=float(a),
               final=i == len(alphas) - 1)


def _sweep(points: int) -> list[float]:
    return [i / (points - 1) for i in range(points)]


def run_average(task: PeerTask) -> None:
    """``merge --method average``: ``--points`` values of α from 0 to 1."""
    interpolate(task.model, task.w_a, task.w_b, _sweep(task.options.points), task.record)


def run_linear(task: PeerTask) -> None:
    """``connect --method linear``: the ``--points`` networks of the straight line."""
    interpolate(task.model, task.w_a, task.w_b, _sweep(task.options.points), task.record)


def run_fisher_merge(task: PeerTask) -> None:
    """``merge --method fisher``: each task's diagonal Fisher (``--fisher-samples``), then the α sweep."""
    o = task.options
    f_a = fisher_diag(task.model_a, task.data_a, o.fisher_samples, seed=o.seed, device=task.device)
    f_b = fisher_diag(task.model_b, task.data, o.fisher_samples, seed=o.seed + 1, device=task.device)
    passes = FISHER_PASSES * (min(o.fisher_samples, len(task.data_a)) + min(o.fisher_samples, len(task.data)))
    fisher_merge(task.model, task.w_a, task.w_b, f_a, f_b, _sweep(o.points), task.record, passes=passes)
