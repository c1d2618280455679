"""Peer methods, measured on the same data and budget as geopath's paths."""

from __future__ import annotations

from torch import nn

from ._params import ParamSpace, load_vector, model_vector
from .data import Dataset
from .targets import HyperplaneTarget
from .train import TrainStats, train


def prune_finetune(model: nn.Module, target: HyperplaneTarget, ds: Dataset, sample_passes: int,
                   batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu") -> TrainStats:
    """One-shot projection onto ``target`` then masked SGD fine-tuning for ``sample_passes`` samples.

    ``sample_passes = 0`` is plain one-shot magnitude pruning.
    """
    space = ParamSpace.of(model)
    load_vector(model, space, target.project(model_vector(model, space)))
    if sample_passes < batch_size:
        return TrainStats(0.0, 0, float("nan"))
    return train(model, ds, epochs=sample_passes / len(ds), batch_size=batch_size, lr=lr, seed=seed,
                 mask=target.mask, device=device, max_passes=sample_passes)
