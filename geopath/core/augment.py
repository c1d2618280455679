"""Random views of image batches for SGD: shifts with a zero border and left-right mirroring.

The views are drawn from their own generator, so the batches (and every other random draw) are
the same with and without them; a whole batch is transformed before any data-parallel sharding,
so every rank sees the same views. Zero is the border value in the stored (normalised) space:
the data set's mean colour for the usual mean/std normalisation.
"""

from __future__ import annotations

from typing import Callable

import torch

from geopath.core.choices import Augment
from geopath.errors import UsageError


def shift_pad(height: int, width: int) -> int:
    """The largest shift: an eighth of the shorter side, at least one pixel (4 on 32×32, 3 on 28×28)."""
    return max(1, min(height, width) // 8)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N×C×H×W) shifted by independent offsets in [−pad, pad] on both axes, the
    uncovered border zero: the H×W window at a random position of the image zero-padded by ``pad``."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # N×H×1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # N×1×W
    picked = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]  # N×H×W×C
    return picked.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N×C×H×W) mirrored left to right with probability ½."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augmentation(kind: Augment | str, seed: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The batch transform ``x ↦ view`` for ``kind`` (None for ``none``), drawing from a generator seeded
    with ``seed``. It takes image batches (N×C×H×W) only; :func:`check_images` says so up front."""
    kind = Augment(kind)
    if kind is Augment.NONE:
        return None
    generator = torch.Generator().manual_seed(seed)

    def view(x: torch.Tensor) -> torch.Tensor:
        if kind is not Augment.FLIP:
            x = random_crop(x, shift_pad(x.shape[-2], x.shape[-1]), generator)
        return random_flip(x, generator) if kind in (Augment.FLIP, Augment.CROP_FLIP) else x

    return view


def check_images(kind: Augment | str, sample_shape: tuple[int, ...], flag: str = "--settle-augment") -> None:
    """A one-line error unless ``kind`` is ``none`` or the inputs are images (C×H×W per sample)."""
    if Augment(kind) is not Augment.NONE and len(sample_shape) != 3:
        raise UsageError(f"{flag} {Augment(kind).value} needs image inputs (C×H×W); these are "
                         f"{'×'.join(map(str, sample_shape)) or 'scalars'} per sample")
