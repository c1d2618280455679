"""Plain supervised training (to make checkpoints, and for the prune + fine-tune baseline).

An optional ``mask`` (flat bool over the model's parameters, ``True`` = held at zero)
keeps pruned weights exactly zero after every update.

Under ``torchrun`` (:mod:`geopath.distributed`) training is data-parallel: every rank draws
the same batches, runs its shard of each, and the gradients are all-reduced, so the ranks
take the single process's steps (to rounding) at a K-th of the cost each. As in PyTorch's
DistributedDataParallel, BatchNorm normalises each shard with its own statistics and every
rank takes rank 0's running statistics after each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import distributed
from ._params import ParamSpace, load_vector, model_vector
from .data import Dataset, batches
from .errors import NumericalError


@dataclass
class TrainStats:
    epochs: float
    sample_passes: int  # forward+backward sample passes spent
    final_loss: float


def train(
    model: nn.Module,
    ds: Dataset,
    epochs: float = 1.0,
    batch_size: int = 128,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    optimizer: str = "sgd",
    seed: int = 0,
    mask: torch.Tensor | None = None,
    device="cpu",
    on_epoch: Callable[[int, float], None] | None = None,
    max_passes: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> TrainStats:
    """Train with cross-entropy; cosine learning-rate decay over the whole run.

    ``on_step(step, passes)`` is called after every optimizer step (the model is in
    train mode; a caller that evaluates must restore it). ``penalty()`` is added to
    every batch's loss (e.g. an EWC term).
    """
    model.to(device)
    comm = distributed.current()
    space = ParamSpace.of(model)
    keep = None if mask is None else (~mask.bool()).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    total_steps = max(1, int(round(epochs * len(ds) / batch_size)))
    if max_passes is not None:
        total_steps = max(1, min(total_steps, max_passes // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    gen = torch.Generator().manual_seed(seed)
    step, passes, last_loss, epoch = 0, 0, float("nan"), 0
    if keep is not None:
        load_vector(model, space, model_vector(model, space) * keep)
    while step < total_steps:
        model.train()
        for x, y in batches(ds, batch_size, generator=gen, shuffle=True):
            if step >= total_steps:
                break
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            if comm.world == 1:
                loss = nn.functional.cross_entropy(model(x), y)
                total = loss + penalty() if penalty is not None else loss
                _check_finite(total, step)
                total.backward()
            else:
                loss = _data_parallel_backward(model, params, x, y, penalty, comm, step)
            opt.step()
            sched.step()
            if keep is not None:
                load_vector(model, space, model_vector(model, space) * keep)
            step += 1
            passes += len(y)
            last_loss = float(loss.detach())
            if on_step is not None:
                on_step(step, passes)
                model.train()
        epoch += 1
        if on_epoch:
            on_epoch(epoch, last_loss)
    model.eval()
    return TrainStats(passes / len(ds), passes, last_loss)


def _check_finite(total: torch.Tensor, step: int) -> None:
    if not bool(torch.isfinite(total)):
        raise NumericalError(f"training diverged at step {step + 1} (the loss is {float(total.detach())}); "
                             "try a smaller --lr")


def _data_parallel_backward(model, params, x, y, penalty, comm, step: int) -> torch.Tensor:
    """Gradients of the whole batch's loss from this rank's shard, all-reduced; returns the batch's loss.

    Each rank's loss is its shard's summed cross-entropy over the whole batch size (plus a
    share ``1/world`` of the penalty), so the all-reduced gradient is the single process's.
    The loss travels with the gradients: every rank sees the same value and stops together
    if it is not finite.
    """
    mine = comm.shard(len(y))
    local = nn.functional.cross_entropy(model(x[mine]), y[mine], reduction="sum") / len(y) if len(y[mine]) else None
    total = local if local is not None else torch.zeros((), device=x.device)
    if penalty is not None:
        total = total + penalty() / comm.world
    if total.requires_grad:
        total.backward()
    flat = torch.cat([torch.zeros(2, device=x.device, dtype=params[0].dtype)]
                     + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    flat[0] = float(local.detach()) if local is not None else 0.0
    flat[1] = float(total.detach())
    comm.sum_(flat)
    _check_finite(flat[1], step)  # the batch's loss with the penalty: the same on every rank
    loss = flat[0].clone()
    offset = 2
    for p in params:
        g = flat[offset:offset + p.numel()].view_as(p)
        p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
        offset += p.numel()
    for b in model.buffers():  # BatchNorm running statistics: rank 0's, as DistributedDataParallel does
        if b.is_floating_point():
            comm.broadcast_(b)
    return loss
