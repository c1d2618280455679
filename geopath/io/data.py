"""Data sets as in-memory tensors.

``--data`` accepts ``mnist``, ``fashion-mnist``, ``cifar10``, a ``PATH.npz`` (arrays
``x`` and ``y``; uint8 images NHWC or NCHW, other integers as token ids, or float arrays), an image folder
(torchvision ``ImageFolder`` layout), or a folder laid out by split (``train/`` and ``test/``
image folders, or ``train.npz`` and ``test.npz``). A named set or a folder laid out by split has
a train and a test split; a ``PATH.npz`` or a plain image folder is one set (:func:`has_splits`),
so a job needs ``--eval-data`` for its test accuracy. Named sets are looked for, in order, under
``--data-root`` (or ``$GEOPATH_DATA_ROOT``) alone when given, otherwise ``./data``,
``../shared/data`` and ``~/.cache/geopath/data``, in torchvision's layout (``MNIST/raw/…``,
``FashionMNIST/raw/…``) or, for CIFAR-10, as ``cifar10/{train,train_20k,test}.npz``.
Nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from geopath.core.dataset import Dataset

from geopath.errors import DataError
from geopath.io.preprocess import parse_preprocess

NAMED = {
    "mnist": {"folder": "MNIST", "mean": (0.1307,), "std": (0.3081,)},
    "fashion-mnist": {"folder": "FashionMNIST", "mean": (0.2860,), "std": (0.3530,)},
    "cifar10": {"folder": "cifar10", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
}
ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}
SPLITS = ("train", "test")
AS_STORED = "as stored"  # float or integer arrays: no preprocessing


def _stats(preprocess: str, channels: int, mean, std) -> tuple[tuple, tuple] | None:
    """(mean, std) per channel for ``preprocess`` (None: x/255 only); ``mean``, ``std``: the set's own."""
    if preprocess == "none":
        return None
    if preprocess == AS_STORED:
        raise DataError("the network's inputs were arrays used as stored; these are uint8 images: pass --normalize")
    if preprocess == "dataset":
        return (tuple(mean) if mean else (0.5,) * channels), (tuple(std) if std else (0.5,) * channels)
    m, s = (tuple(float(v) for v in part.split(",")) for part in preprocess.split("/"))
    if len(m) == 1 and channels > 1:
        m, s = m * channels, s * channels
    if len(m) != channels:
        raise DataError(f"--normalize {preprocess}: {len(m)} channel(s) of mean/std for images with {channels}")
    return m, s


def _stated(stats: tuple[tuple, tuple] | None) -> str:
    """How a run records the preprocessing it applied."""
    if stats is None:
        return "none"
    return ",".join(f"{v:g}" for v in stats[0]) + "/" + ",".join(f"{v:g}" for v in stats[1])


def candidate_roots(data_root: str | os.PathLike | None = None) -> list[Path]:
    """Where named data sets are looked for: an explicit root (flag, else environment) alone,
    otherwise the default locations."""
    explicit = data_root or os.environ.get("GEOPATH_DATA_ROOT")
    if explicit:
        return [Path(explicit).expanduser()]
    roots = [Path("data"), Path("../shared/data"), Path.home() / ".cache" / "geopath" / "data"]
    seen, out = set(), []
    for r in roots:
        key = str(r.expanduser().resolve())
        if key not in seen:
            seen.add(key)
            out.append(r.expanduser())
    return out


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: unsupported IDX element type 0x{dtype_code:02x}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file")
    return arr.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (folder / "raw" / stem, folder / "raw" / (stem + ".gz"), folder / stem, folder / (stem + ".gz")):
        if cand.is_file():
            return cand
    return None


def _normalise(x: np.ndarray, preprocess: str, mean=None, std=None) -> tuple[torch.Tensor, str]:
    """uint8 images (N×H×W, NHWC or NCHW) → float N×C×H×W: x/255, then ``preprocess``'s mean and std
    (``mean``, ``std``: the set's own, for ``dataset``). Returns the inputs and the preprocessing applied."""
    t = torch.from_numpy(np.array(x, copy=True)).float().div_(255.0)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2).contiguous()
    stats = _stats(preprocess, int(t.shape[1]), mean, std)
    if stats is not None:
        t = (t - torch.tensor(stats[0]).view(1, -1, 1, 1)) / torch.tensor(stats[1]).view(1, -1, 1, 1)
    return t, _stated(stats)


def _load_named(name: str, split: str, roots: list[Path], download: bool, preprocess: str = "dataset") -> Dataset:
    spec = NAMED[name]
    for root in roots:
        folder = root / spec["folder"]
        if name == "cifar10":
            files = ["test.npz"] if split == "test" else ["train.npz", "train_20k.npz"]
            for fname in files:
                if (folder / fname).is_file():
                    ds = load_npz(folder / fname, split, preprocess, mean=spec["mean"], std=spec["std"])
                    ds.name = name
                    return ds
            continue
        prefix = "t10k" if split == "test" else "train"
        img = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        lab = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            x, y = _read_idx(img), _read_idx(lab)
            if len(x) != len(y):
                raise DataError(f"{folder}: {len(x)} images but {len(y)} labels")
            xt, stated = _normalise(x, preprocess, spec["mean"], spec["std"])
            return Dataset(xt, torch.from_numpy(y.astype(np.int64)), name, split, stated)
    if download and name != "cifar10":
        return _download(name, split, roots[0], spec, preprocess)
    searched = ", ".join(str(r) for r in roots)
    raise DataError(
        f"data set {name!r} ({split}) not found offline; searched {searched} "
        f"(set --data-root or GEOPATH_DATA_ROOT to a folder holding {spec['folder']}/)"
    )


def _download(name: str, split: str, root: Path, spec, preprocess: str) -> Dataset:
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    try:
        cls(str(root), train=(split == "train"), download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"could not download {name!r} into {root}: {str(e).splitlines()[0]}") from None
    return _load_named(name, split, [root], download=False, preprocess=preprocess)


def load_npz(path: Path, split: str = "train", preprocess: str = "dataset", mean=None, std=None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path}: an .npz data set needs arrays 'x' and 'y' (found {sorted(f.files)})")
            x, y = f["x"], f["y"]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz file ({str(e).splitlines()[0]})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} labels")
    if x.dtype == np.uint8:
        xt, stated = _normalise(x, preprocess, mean, std)
    else:
        if preprocess not in ("dataset", AS_STORED):
            raise DataError(f"{path}: --normalize applies to uint8 images; this file holds {x.dtype} arrays, "
                            "used as stored (pass --normalize dataset or leave it out)")
        stated = AS_STORED
        if np.issubdtype(x.dtype, np.integer):  # token ids (an embedding's inputs): kept whole
            xt = torch.from_numpy(np.ascontiguousarray(x).astype(np.int64))
        else:
            xt = torch.from_numpy(np.ascontiguousarray(x)).float()
    return Dataset(xt, torch.from_numpy(np.asarray(y).astype(np.int64)).reshape(-1), str(path), split, stated)


def split_layout(path: Path) -> str | None:
    """How a folder holds its splits: ``"folders"`` (``train/`` and ``test/`` image folders), ``"npz"``
    (``train.npz`` and ``test.npz``), or None (the folder is one set)."""
    if not path.is_dir():
        return None
    if all((path / s).is_dir() for s in SPLITS):
        return "folders"
    if all((path / f"{s}.npz").is_file() for s in SPLITS):
        return "npz"
    return None


def has_splits(name: str) -> bool:
    """Whether data set ``name`` has its own train and test splits (a named set, or a folder laid out
    by split); a ``PATH.npz`` or a plain image folder is one set, whatever split is asked for."""
    if canonical_name(name) in NAMED:
        return True
    return split_layout(Path(name).expanduser()) is not None


def one_set(name: str) -> bool:
    """Whether ``name`` is an existing ``PATH.npz`` or plain image folder: one set, with no test split
    (what does not exist is left for :func:`load_dataset` to report)."""
    return not has_splits(name) and Path(name).expanduser().exists()


def recorded_name(name: str) -> str:
    """How a run records data set ``name``: a named set by its name, a path absolute (readable from
    any directory)."""
    key = canonical_name(name)
    return key if key in NAMED else str(Path(name).expanduser().resolve())


def _load_image_folder(path: Path, split: str, preprocess: str = "dataset") -> Dataset:
    import torchvision
    from torchvision import transforms

    classes = sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    if set(SPLITS) & set(classes):
        missing = [s for s in SPLITS if s not in classes]
        raise DataError(f"{path}: holds {', '.join(c for c in classes if c in SPLITS)}/ but not "
                        f"{', '.join(missing)}/: a folder laid out by split needs train/ and test/ "
                        "(each an image folder); a folder of classes must not name a class train or test")
    try:
        ds = torchvision.datasets.ImageFolder(str(path), transform=transforms.ToTensor())
    except Exception as e:
        raise DataError(f"{path}: not a usable image folder ({str(e).splitlines()[0]})") from None
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    x = torch.stack(xs)
    stats = _stats(preprocess, int(x.shape[1]), None, None)
    if stats is not None:
        x = (x - torch.tensor(stats[0]).view(1, -1, 1, 1)) / torch.tensor(stats[1]).view(1, -1, 1, 1)
    return Dataset(x, torch.tensor(ys, dtype=torch.int64), str(path), split, _stated(stats))


def load_dataset(name: str, split: str = "train", data_root=None, download: bool = False,
                 preprocess: str | None = None) -> Dataset:
    """Load a data set split into memory (see module docstring for accepted names).

    ``preprocess`` (``--normalize``; default ``dataset``) says how stored pixels become inputs; the
    returned set states what was applied (``Dataset.preprocess``: ``M,M/S,S``, ``none`` or
    ``as stored``), which every run records."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (use train or test)")
    preprocess = parse_preprocess(preprocess) or "dataset"
    key = canonical_name(name)
    if key in NAMED:
        return _load_named(key, split, candidate_roots(data_root), download, preprocess)
    path = Path(name).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"{path}: no such .npz data file")
        return load_npz(path, split, preprocess)
    if path.is_dir():
        layout = split_layout(path)
        if layout == "folders":
            return _load_image_folder(path / split, split, preprocess)
        if layout == "npz":
            return load_npz(path / f"{split}.npz", split, preprocess)
        return _load_image_folder(path, split, preprocess)
    known = ", ".join(NAMED)
    raise DataError(f"unknown data set {name!r} (use one of {known}, a PATH.npz or an image folder)")
