"""What a job hands a peer: the network to move, its data, its goal and budget, and where to record.

A peer's runner (``run_NAME(task) -> Target | None``, declared in :mod:`geopath.peers.registry`)
reads its own options off ``task.options`` (the job's resolved options) and reports every network
it wants in the trace through ``task.record`` (:class:`geopath.core.record.PeerRecorder`), so its
run directory has the geodesic's files and columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from geopath.core.dataset import Dataset
from geopath.core.targets import Target
from geopath.peers._budget import Record


@dataclass
class PeerTask:
    model: nn.Module  # moved in place; it starts as the job's start network (merge, connect: A)
    data: Dataset  # the inputs a training peer learns from (merge: task B's)
    record: Record
    options: Any  # the job's resolved options, the peers' own included
    device: torch.device
    records: int = 20  # about how many trace rows a training peer writes
    target: Target | None = None  # sparsify: the hyperplane
    w_a: torch.Tensor | None = None  # merge, connect: the endpoints
    w_b: torch.Tensor | None = None
    model_a: nn.Module | None = None  # merge: both networks and task A's inputs (each task's Fisher)
    model_b: nn.Module | None = None
    data_a: Dataset | None = None
    spent: int = 0  # sample passes the job spent before the peer runs (sparsify: ranking the weights)

    def passes(self, epochs: float, data: Dataset | None = None) -> int:
        """A budget of ``epochs`` over ``data`` (default: the training inputs) in sample passes."""
        return int(round(epochs * len(data if data is not None else self.data)))
