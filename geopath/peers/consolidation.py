"""Elastic weight consolidation (Kirkpatrick et al., 2017), a peer of ``merge``."""

from __future__ import annotations

import math

import torch
from torch import nn

from geopath.core.dataset import Dataset
from geopath.core.params import ParamSpace, model_vector
from geopath.core.train import TrainStats, train
from geopath.peers._budget import Record, record_every, train_steps
from geopath.peers.task import PeerTask


def ewc(model: nn.Module, w_a: torch.Tensor, f_a: torch.Tensor, ds_b: Dataset, sample_passes: int, lam: float,
        w_b: torch.Tensor | None = None, batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu",
        record: Record | None = None, records: int = 20, passes_before: float = 0.0) -> TrainStats:
    """Train A on task B with the penalty ``½λ Σ F_A (w − w_A)²``; record along the way."""
    space = ParamSpace.of(model)
    anchor_w, fisher = w_a.to(device), f_a.to(device)
    params = [dict(model.named_parameters())[n] for n in space.names]

    def distance() -> float:
        return math.nan if w_b is None else float(torch.linalg.vector_norm(model_vector(model, space) - w_b))

    def penalty():
        w = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * lam * (fisher * (w - anchor_w).pow(2)).sum()

    if record:
        record(0, model, passes_before, t=0.0, distance=distance())
    steps = train_steps(sample_passes, batch_size)
    every = record_every(steps, records)

    def on_step(step, passes):
        if record and step % every == 0 and step < steps:
            record(step, model, passes_before + passes, t=step / steps, distance=distance())

    stats = train(model, ds_b, epochs=sample_passes / len(ds_b), batch_size=batch_size, lr=lr, seed=seed,
                  device=device, max_passes=sample_passes, on_step=on_step, penalty=penalty)
    if record:
        record(steps, model, passes_before + stats.sample_passes, t=1.0, distance=distance(), final=True)
    return stats


def run_ewc(task: PeerTask) -> None:
    """``merge --method ewc``: task A's diagonal Fisher, then ``--epochs`` of task B with the penalty."""
    from geopath.peers.averaging import FISHER_PASSES, fisher_diag

    o = task.options
    f_a = fisher_diag(task.model_a, task.data_a, o.fisher_samples, seed=o.seed, device=task.device)
    ewc(task.model, task.w_a, f_a, task.data, task.passes(o.epochs), o.ewc_lambda, w_b=task.w_b,
        batch_size=o.batch_size, lr=o.lr, seed=o.seed, device=task.device, record=task.record, records=task.records,
        passes_before=FISHER_PASSES * min(o.fisher_samples, len(task.data_a)))
