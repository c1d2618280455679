"""Accuracy, loss and BatchNorm statistics of a model on a data set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from geopath.core import distributed
from geopath.core.dataset import Dataset


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    samples: int


# evaluation batch per device type: on the CPU large batches fall out of cache (a width-0.25 VGG11 scores
# CIFAR-10's 10k test images in 1.4 s at 256, 3.3 s at 2048; an MLP is indifferent); a GPU wants them large
EVAL_BATCH = {"cpu": 256}
EVAL_BATCH_DEFAULT = 2048


def eval_batch_size(device) -> int:
    return EVAL_BATCH.get(torch.device(device).type, EVAL_BATCH_DEFAULT)


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, batch_size: int | None = None, device="cpu") -> Evaluation:
    """Top-1 accuracy and mean cross-entropy, in eval mode, deterministically.

    ``batch_size`` (default: :func:`eval_batch_size` of ``device``) changes the speed, and a float32 loss in its
    last bits (the order of the sums).

    Under ``torchrun`` every rank scores its shard of ``ds`` and the counts are summed, so each
    rank returns the whole data set's figures (every rank must call this together).
    """
    comm = distributed.current()
    batch_size = eval_batch_size(device) if batch_size is None else batch_size
    batch_size = min(batch_size, getattr(ds.x, "max_batch", batch_size))  # streamed inputs: a smaller batch
    mine = comm.shard(len(ds))
    xs, ys = ds.x[mine], ds.y[mine]
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for i in range(0, len(ys), batch_size):
        x = xs[i:i + batch_size].to(device)
        y = ys[i:i + batch_size].to(device)
        logits = model(x)
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        n += len(y)
    model.train(was_training)
    if comm.world > 1:
        totals = comm.sum_(torch.tensor([correct, loss, n], dtype=torch.float64, device=comm.device))
        correct, loss, n = int(totals[0]), float(totals[1]), int(totals[2])
    return Evaluation(correct / max(n, 1), loss / max(n, 1), n)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, ds: Dataset, batch_size: int = 256, max_samples: int | None = None,
                        device="cpu") -> bool:
    """Re-estimate BatchNorm running statistics with the current weights, on all of ``ds`` (or its first
    ``max_samples`` inputs).

    The inputs go through in ⌈n / batch_size⌉ batches of near-equal size (never a short last batch: one
    input alone has no variance, and a BatchNorm over a 1×1 map refuses it), and each batch's statistics
    count by its size (momentum ``b / (seen + b)``), so the running mean is the mean over all ``n`` inputs
    whatever ``batch_size``; the running variance is the size-weighted mean of the batches' variances, as
    PyTorch's cumulative average (``momentum=None``) gives for equal batches. Returns ``False`` (and
    changes nothing) for a model without BatchNorm.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
    was_training = model.training
    model.train()
    n = len(ds) if max_samples is None else min(len(ds), max_samples)
    batch_size = min(batch_size, getattr(ds.x, "max_batch", batch_size))
    k = -(-n // batch_size)
    bounds = [round(i * n / k) for i in range(k + 1)] if n else [0]
    seen = 0
    for lo, hi in zip(bounds, bounds[1:]):
        for m in bns:
            m.momentum = (hi - lo) / (seen + hi - lo)
        model(ds.x[lo:hi].to(device))
        seen += hi - lo
    for m, mom in saved:
        m.momentum = mom
    model.train(was_training)
    model.eval()
    return True
