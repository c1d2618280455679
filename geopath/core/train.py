"""Plain supervised training (to make checkpoints, and for the prune + fine-tune baseline).

An optional ``mask`` (flat bool over the model's parameters, ``True`` = held at zero)
keeps pruned weights exactly zero after every update.

Under ``torchrun`` (:mod:`geopath.core.distributed`) training is data-parallel: every rank draws
the same batches, runs its shard of each, and the gradients are all-reduced, so the ranks
take the single process's steps (to rounding) at a K-th of the cost each. As in PyTorch's
DistributedDataParallel, BatchNorm normalises each shard with its own statistics and every
rank takes rank 0's running statistics after each step.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from geopath.core import distributed
from geopath.core.params import ParamSpace
from geopath.core.dataset import Dataset, batches
from geopath.errors import NumericalError


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
    seed: int = 0,
    mask: torch.Tensor | None = None,
    device="cpu",
    max_passes: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    optimizer: str = "sgd",
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    remask: Callable[[int], torch.Tensor | None] | None = None,
    warmup: float = 0.0,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrainStats:
    """Train with cross-entropy; cosine learning-rate decay over the whole run (after a linear warm-up
    over the first ``warmup`` fraction of the steps, from ``lr``/W to ``lr`` in W steps).

    ``optimizer``: ``sgd`` (with ``momentum``) or ``adam``. ``loss_fn(logits, x, y)`` replaces the
    cross-entropy (e.g. distillation from a teacher's outputs on ``x``). ``remask(step)`` is called
    before every step and may return a new ``mask`` (gradual pruning); newly masked weights are
    zeroed. ``on_step(step, passes)`` is called after every optimizer step (the model is in
    train mode; a caller that evaluates must restore it). ``penalty()`` is added to
    every batch's loss (e.g. an EWC term). ``augment(x)`` replaces each batch's inputs by random views
    (:mod:`geopath.core.augment`) before the forward pass and ``loss_fn`` see them.
    """
    if len(ds) == 0:  # (no batch would ever come, and the loop below would wait for one forever)
        raise ValueError("train: no training samples")
    model.to(device)
    comm = distributed.current()
    space = ParamSpace.of(model)
    named = dict(model.named_parameters())
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, its 0/1 keep factors) where some are masked

    def set_mask(new_mask: torch.Tensor) -> None:
        """The weights that must stay zero (read once per mask: no per-step scan of the whole mask)."""
        kept.clear()
        for name, keep in zip(space.names, torch.split((~new_mask.bool()).to(device), space.numels)):
            if not bool(keep.all()):
                p = named[name]
                kept.append((p, keep.view_as(p).to(p.dtype)))

    @torch.no_grad()
    def apply_mask() -> None:
        """Masked weights to zero, parameter by parameter in place (no flat copy of the whole network); nothing
        without a mask."""
        for p, keep in kept:
            p.mul_(keep)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r} (sgd or adam)")
    loss_of = loss_fn or (lambda logits, x, y: nn.functional.cross_entropy(logits, y))
    total_steps = max(1, int(round(epochs * len(ds) / batch_size)))
    if max_passes is not None:  # (a budget under one batch takes no step: it would spend passes it does not have)
        total_steps = min(total_steps, max_passes // batch_size)
    gen = torch.Generator().manual_seed(seed)
    step, passes, last_loss = 0, 0, float("nan")
    if mask is not None:
        set_mask(mask)
        apply_mask()
    if total_steps == 0:
        model.eval()
        return TrainStats(0.0, 0, last_loss)
    sched = _schedule(opt, total_steps, warmup)
    while step < total_steps:
        model.train()
        for x, y in batches(ds, batch_size, generator=gen, shuffle=True):
            if step >= total_steps:
                break
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x = augment(x)
            if remask is not None:
                new_mask = remask(step)
                if new_mask is not None:
                    set_mask(new_mask)
                    apply_mask()
            opt.zero_grad(set_to_none=True)
            if comm.world == 1:
                loss = loss_of(model(x), x, y)
                total = loss + penalty() if penalty is not None else loss
                _check_finite(float(total.detach()), step)
                total.backward()
                loss = float(loss.detach())
            else:
                def shard_loss(s, x=x, y=y):
                    return loss_of(model(x[s]), x[s], y[s]) * len(y[s]) if len(y[s]) else None

                loss, total = sharded_backward(shard_loss, len(y), params, model.buffers(), comm, penalty)
                _check_finite(total, step)
            opt.step()
            sched.step()
            apply_mask()
            step += 1
            passes += len(y)
            last_loss = loss
            if on_step is not None:
                on_step(step, passes)
                model.train()
    model.eval()
    return TrainStats(passes / len(ds), passes, last_loss)


def _schedule(opt: torch.optim.Optimizer, total_steps: int, warmup: float):
    """Cosine decay to zero over ``total_steps``; with ``warmup`` > 0, a linear rise over its first W =
    ⌈warmup · total_steps⌉ steps (step s at (s + 1)/W of the rate), then cosine decay over the rest."""
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    if warmup == 0.0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    w = max(1, math.ceil(warmup * total_steps))

    def factor(s: int) -> float:
        if s < w:
            return (s + 1) / w
        return 0.5 * (1.0 + math.cos(math.pi * (s - w) / max(1, total_steps - w)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _check_finite(total: float, step: int) -> None:
    if not math.isfinite(total):
        raise NumericalError(f"training diverged at step {step + 1} (the loss is {total}); try a smaller --lr")


def sharded_backward(shard_loss: Callable[[slice], torch.Tensor | None], n: int, params: list[torch.Tensor],
                     buffers, comm, penalty: Callable[[], torch.Tensor] | None = None) -> tuple[float, float]:
    """Data-parallel backward pass of one batch of ``n`` samples; returns ``(loss, loss with penalty)``.

    ``shard_loss(s)`` is the summed loss of the batch's samples ``s`` (this rank's shard;
    ``None`` when it is empty). Each rank back-propagates its shard's sum over ``n`` plus a
    share ``1/world`` of the penalty, and the gradients are all-reduced, so every rank holds
    the single process's gradient in ``p.grad``. The losses travel with the gradients: every
    rank sees the same values (and stops together when they are not finite). The floating
    ``buffers`` (BatchNorm running statistics) are then rank 0's, as DistributedDataParallel does.
    """
    dtype = params[0].dtype
    local = shard_loss(comm.shard(n))
    local = torch.zeros((), device=params[0].device, dtype=dtype) if local is None else local / n
    total = local + penalty() / comm.world if penalty is not None else local
    if total.requires_grad:
        total.backward()
    flat = torch.cat([torch.stack([local.detach().to(dtype), total.detach().to(dtype)])]
                     + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    comm.sum_(flat)
    offset = 2
    for p in params:
        g = flat[offset:offset + p.numel()].view_as(p)
        p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
        offset += p.numel()
    for b in buffers:
        if b.is_floating_point():
            comm.broadcast_(b)
    return float(flat[0]), float(flat[1])
