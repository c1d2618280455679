"""A data set as two in-memory tensors, and its mini-batches (what the core computes on).

Reading data sets from disk is :mod:`geopath.io.data`'s job; the core only sees these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dataset:
    """Inputs ``x`` (float N×C×H×W or N×D, or integer token ids N×L) and integer labels ``y``.

    ``x`` is a tensor, or anything that slices and indexes like one (``len``, ``shape``, ``x[a:b]``,
    ``x[index_tensor]``, ``x[a:b].to(device)``): :class:`geopath.io.images.ImageFiles` streams an image
    folder that way. Readers that choose their own batch size cap it at ``x.max_batch`` when present."""

    x: torch.Tensor
    y: torch.Tensor
    name: str
    split: str
    preprocess: str | None = None  # how stored data became x (geopath.io.data records it)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def head(self, n: int | None) -> "Dataset":
        if n is None or n >= len(self):
            return self
        return Dataset(self.x[:n], self.y[:n], self.name, self.split, self.preprocess)

    def shifted(self, offset: int) -> "Dataset":
        """The same inputs with ``offset`` added to every label (task B of a split-head network: its classes
        follow task A's)."""
        if offset == 0:
            return self
        return Dataset(self.x, self.y + offset, self.name, self.split, self.preprocess)


def batches(ds: Dataset, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False):
    """Yield (x, y) mini-batches; a permutation from ``generator`` when shuffling."""
    n = len(ds)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield ds.x[idx], ds.y[idx]
