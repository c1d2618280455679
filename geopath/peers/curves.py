"""A quadratic Bezier curve whose middle point is trained (Garipov et al., 2018), a peer of ``connect``."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from geopath.core import distributed
from geopath.core.dataset import Dataset, batches
from geopath.core.params import ParamSpace, load_vector
from geopath.core.train import sharded_backward
from geopath.peers._budget import samples_seen
from geopath.peers.task import PeerTask


def bezier_point(w_a: torch.Tensor, theta: torch.Tensor, w_b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """``(1−t)² w_A + 2t(1−t) θ + t² w_B``."""
    return (1 - t) ** 2 * w_a + 2 * t * (1 - t) * theta + t ** 2 * w_b


def bezier(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, ds: Dataset, sample_passes: int,
           batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu") -> torch.Tensor:
    """Train the middle point ``θ`` of a quadratic Bezier curve from A to B; returns ``θ``.

    Each batch draws ``t ~ U(0, 1)`` and takes an SGD step (momentum 0.9, cosine decay)
    on the cross-entropy of the network at ``bezier_point(t)``; ``θ`` starts at the
    midpoint of A and B. BatchNorm runs in train mode (batch statistics); evaluate
    points of the curve after re-estimating running statistics. Under ``torchrun`` the
    steps are data-parallel (:func:`geopath.core.train.sharded_backward`).
    """
    space = ParamSpace.of(model)
    w_a, w_b = w_a.to(device), w_b.to(device)
    theta = (0.5 * (w_a + w_b)).clone().requires_grad_(True)
    buffers = {n: b for n, b in model.named_buffers()}
    opt = torch.optim.SGD([theta], lr=lr, momentum=0.9)
    steps = int(sample_passes) // batch_size
    if steps == 0:
        return theta.detach()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    comm = distributed.current()
    done = 0
    while done < steps:
        for x, y in batches(ds, batch_size, generator=gen, shuffle=True):
            if done >= steps:
                break
            t = float(torch.rand((), generator=gen))
            w = bezier_point(w_a, theta, w_b, t)
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            if comm.world == 1:
                logits = functional_call(model, (space.unflatten(w), buffers), (x,))
                nn.functional.cross_entropy(logits, y).backward()
            else:  # data-parallel: this rank's shard of the batch, gradients all-reduced

                def shard_loss(s, w=w, x=x, y=y):
                    if not len(y[s]):
                        return None
                    logits = functional_call(model, (space.unflatten(w), buffers), (x[s],))
                    return nn.functional.cross_entropy(logits, y[s], reduction="sum")

                sharded_backward(shard_loss, len(y), [theta], buffers.values(), comm)
            opt.step()
            sched.step()
            done += 1
    model.eval()
    return theta.detach()


def run_bezier(task: PeerTask) -> None:
    """``connect --method bezier``: train the middle point for ``--epochs``, then record ``--points``
    networks evenly spaced in ``t`` (the last one as the run's final network)."""
    o = task.options
    passes = task.passes(o.epochs)
    theta = bezier(task.model, task.w_a, task.w_b, task.data, passes, batch_size=o.batch_size, lr=o.lr,
                   seed=o.seed, device=task.device)
    space = ParamSpace.of(task.model)
    spent = samples_seen(passes, len(task.data), o.batch_size)  # (whole steps, an epoch's last batch short)
    ts = [i / (o.points - 1) for i in range(o.points)]
    for i, t in enumerate(ts):
        w = bezier_point(task.w_a, theta, task.w_b, t)
        load_vector(task.model, space, w)
        task.record(i, task.model, spent, t=t, distance=float(torch.linalg.vector_norm(task.w_b - w)), alpha=t,
                    final=i == len(ts) - 1)
