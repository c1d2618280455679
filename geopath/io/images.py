"""Image folders read from disk a batch at a time: memory O(batch), not O(data set).

:class:`ImageFiles` stands where a data set's input tensor would: ``len``, ``shape``, slicing (a
lazy view) and indexing by an index tensor (decodes just those images) are what the core uses
(:mod:`geopath.core.dataset`, :mod:`geopath.core.path`, :mod:`geopath.core.evaluate`), so a path,
an evaluation or a peer holds one batch of decoded images at a time (merge's BatchNorm data, the
first ``--bn-samples`` of both tasks together, is decoded whole). Each image is converted
to the folder's channel count (grayscale ``L`` or ``RGB``), resized when ``size`` is given, scaled
to [0, 1] and normalised by ``stats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from geopath.errors import DataError

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # (16-bit: either byte order)


def _sixteen_bit(im) -> bool:
    """Whether an opened (not yet loaded) image holds 16-bit grayscale pixels: mode ``I;16*``, or mode ``I`` decoded
    from 16-bit raw data (how Pillow opens a 16-bit PGM, and before 10.3 a 16-bit PNG)."""
    if im.mode.startswith("I;16"):
        return True
    if im.mode != "I":
        return False
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and raw.startswith("I;16"):
            return True
    return False


def _pixels(im, channels: int, pil_to_tensor) -> torch.Tensor:
    """An image's pixels in [0, 1], ``channels``×H×W: 8-bit modes through PIL's conversion, 16-bit grayscale
    scaled by 65535 (PIL's conversion to 8 bits would clip it at 255, not scale it); 32-bit integer or float
    pixels, of no fixed range, are refused."""
    import numpy as np

    if _sixteen_bit(im):
        t = torch.from_numpy(np.asarray(im).astype(np.float32) / 65535.0)[None]
        return t.expand(channels, -1, -1).clone()
    if im.mode in ("I", "F"):
        raise DataError(f"{im.mode!r} pixels ({'32-bit integers' if im.mode == 'I' else 'floats'} of no fixed "
                        "range): geopath reads 8- and 16-bit images; convert the folder to 8-bit")
    return pil_to_tensor(im.convert("L" if channels == 1 else "RGB")).float().div_(255.0)


def image_mode(path: Path) -> tuple[int, tuple[int, int]]:
    """(channels, (height, width)) of an image file, from its header: 1 for grayscale modes, else 3."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return (1 if im.mode in GRAY_MODES else 3), (im.height, im.width)
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({str(e).splitlines()[0] if str(e) else ''})") from None


def standardise(x: torch.Tensor, stats: tuple[tuple, tuple] | None, inplace: bool = False) -> torch.Tensor:
    """``(x − mean) / std`` per channel of an ``N×C×H×W`` batch (``stats``: (mean, std); None: ``x``).

    ``inplace`` overwrites ``x`` (the same numbers, without two more copies of a whole data set)."""
    if stats is None:
        return x
    mean, std = torch.tensor(stats[0]).view(1, -1, 1, 1), torch.tensor(stats[1]).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std) if inplace else (x - mean) / std


class ImageFiles:
    """A lazily decoded ``[N, C, H, W]`` float tensor of image files.

    ``max_batch`` bounds how many images a reader that picks its own batch size (evaluation,
    BatchNorm re-estimation) decodes at once."""

    max_batch = 64

    def __init__(self, files: Sequence[Path], channels: int, size: tuple[int, int],
                 stats: tuple[tuple, tuple] | None, resize: bool):
        self.files, self.channels, self.size, self.stats, self.resize = list(files), channels, size, stats, resize

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.channels, *self.size))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __len__(self) -> int:
        return len(self.files)

    def _view(self, files) -> "ImageFiles":
        return ImageFiles(files, self.channels, self.size, self.stats, self.resize)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._view(self.files[index])
        if isinstance(index, int):
            return self._decode([self.files[index]])[0]
        idx = torch.as_tensor(index).reshape(-1).tolist()
        return self._decode([self.files[i] for i in idx])

    def to(self, *args, **kwargs) -> torch.Tensor:
        """All images of this view, decoded (used on small views: a batch, a probe)."""
        return self._decode(self.files).to(*args, **kwargs)

    def _decode(self, files) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor, resize

        out = torch.empty(len(files), self.channels, *self.size)
        for i, f in enumerate(files):
            try:
                with Image.open(f) as im:
                    t = _pixels(im, self.channels, pil_to_tensor)
            except DataError as e:
                raise DataError(f"{f}: {e}") from None
            except Exception as e:
                raise DataError(f"{f}: not a readable image ({str(e).splitlines()[0] if str(e) else ''})") from None
            if tuple(t.shape[1:]) != self.size:
                if not self.resize:
                    raise DataError(f"{f}: {t.shape[1]}×{t.shape[2]} pixels, other images of the folder "
                                    f"{self.size[0]}×{self.size[1]}: pass --image-size to resize them all")
                t = resize(t, list(self.size), antialias=True)
            out[i] = t
        return standardise(out, self.stats)
