"""Plain supervised training (to make checkpoints, and for the prune + fine-tune baseline).

An optional ``mask`` (flat bool over the model's parameters, ``True`` = held at zero)
keeps pruned weights exactly zero after every update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

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
            loss = nn.functional.cross_entropy(model(x), y)
            total = loss + penalty() if penalty is not None else loss
            if not bool(torch.isfinite(total)):
                raise NumericalError(f"training diverged at step {step + 1} (the loss is {float(total.detach())}); "
                                     "try a smaller --lr")
            opt.zero_grad(set_to_none=True)
            total.backward()
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
