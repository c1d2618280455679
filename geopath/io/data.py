"""Data sets as in-memory tensors.

``--data`` accepts a named set (``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``), a
``PATH.npz`` (arrays ``x`` and ``y``; uint8 images NHWC or NCHW, other integers as token ids, or
float arrays), an image folder (torchvision ``ImageFolder`` layout), a folder laid out by split
(``train/`` and ``test/`` image folders, or ``train.npz`` and ``test.npz``), or torchvision's CIFAR
folder itself (``cifar-10-batches-py/``, ``cifar-100-python/``). A named set or a folder laid out
by split has a train and a test split; a ``PATH.npz`` or a plain image folder is one set
(:func:`has_splits`), so a job needs ``--eval-data`` for its test accuracy.

Named sets are looked for under ``--data-root`` (or ``$GEOPATH_DATA_ROOT``) alone when given,
otherwise ``./data``, ``../shared/data`` and ``~/.cache/geopath/data``: MNIST and Fashion-MNIST
through torchvision's dataset classes (``MNIST/raw/…``, ``FashionMNIST/raw/…``); CIFAR as offline
copies ``cifar10/{train,train_20k,test}.npz`` (``cifar100/…``) or in torchvision's layout
(``cifar-10-batches-py/``, ``cifar-100-python/``), whose pickled batches are read by an
unpickler that admits numpy arrays and nothing else (no code from the file runs). Nothing is
downloaded unless ``download=True`` (``--download``: torchvision's downloader, into the first root).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from geopath.core.dataset import Dataset

from geopath.errors import DataError
from geopath.io.images import ImageFiles, image_mode, standardise
from geopath.io.preprocess import DATASET_OF, parse_image_size, parse_preprocess

NAMED = {
    "mnist": {"folder": "MNIST", "mean": (0.1307,), "std": (0.3081,)},
    "fashion-mnist": {"folder": "FashionMNIST", "mean": (0.2860,), "std": (0.3530,)},
    "cifar10": {"folder": "cifar10", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "cifar100": {"folder": "cifar100", "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)},
}
ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
           "cifar-10": "cifar10", "cifar-100": "cifar100"}
CIFAR_BATCHES = {  # torchvision's CIFAR layouts: folder, training files, test files, label key
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}
SPLITS = ("train", "test")
AS_STORED = "as stored"  # float or integer arrays: no preprocessing


def _stats(preprocess: str, channels: int, mean, std) -> tuple[tuple, tuple] | None:
    """(mean, std) per channel for ``preprocess`` (None: x/255 only); ``mean``, ``std``: the set's own."""
    if preprocess == "none":
        return None
    if preprocess == AS_STORED:
        raise DataError("the network's inputs were arrays used as stored; these are uint8 images: pass --normalize")
    if preprocess == "dataset" or (preprocess.startswith(DATASET_OF) and mean):
        return (tuple(mean) if mean else (0.5,) * channels), (tuple(std) if std else (0.5,) * channels)
    if preprocess.startswith(DATASET_OF):  # images with no statistics of their own: the named set's
        name = canonical_name(preprocess[len(DATASET_OF):])
        if name not in NAMED:
            raise DataError(f"--normalize {preprocess}: {name} is not a named data set ({', '.join(NAMED)})")
        preprocess = named_stats(name)
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


def _restricted_unpickle(path: Path) -> dict:
    """A CIFAR batch file (a pickled dict of numpy arrays) read with an unpickler that admits numpy's
    array reconstruction and nothing else: no code from the file runs (as torch.load(weights_only))."""
    import pickle

    allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    class Arrays(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in allowed:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not an array")

    try:
        with open(path, "rb") as f:
            return Arrays(f, encoding="latin1").load()
    except Exception as e:
        raise DataError(f"{path}: not a readable CIFAR batch ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                        ) from None


def cifar_batches(folder: Path) -> str | None:
    """Which torchvision CIFAR layout ``folder`` is (``cifar10``, ``cifar100``), if any."""
    for name, (_, train, test, _) in CIFAR_BATCHES.items():
        if all((folder / f).is_file() for f in train[:1] + test):
            return name
    return None


def _read_cifar_batches(folder: Path, kind: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    _, train, test, key = CIFAR_BATCHES[kind]
    xs, ys = [], []
    for fname in (train if split == "train" else test):
        if not (folder / fname).is_file():
            continue  # a partial copy (e.g. two training batches) is fine
        batch = _restricted_unpickle(folder / fname)
        try:
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[key], dtype=np.int64))
        except Exception:
            raise DataError(f"{folder / fname}: not a CIFAR batch (a dict of 'data' and {key!r})") from None
    return np.concatenate(xs), np.concatenate(ys)


def _normalise(x: np.ndarray, preprocess: str, mean=None, std=None) -> tuple[torch.Tensor, str]:
    """uint8 images (N×H×W, NHWC or NCHW) → float N×C×H×W: x/255, then ``preprocess``'s mean and std
    (``mean``, ``std``: the set's own, for ``dataset``). Returns the inputs and the preprocessing applied."""
    x = np.asarray(x)
    t = torch.from_numpy(x if x.flags.writeable else x.copy()).to(torch.float32, copy=True).div_(255.0)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2).contiguous()
    stats = _stats(preprocess, int(t.shape[1]), mean, std)
    return standardise(t, stats, inplace=True), _stated(stats)


def _mnist_like(name: str, split: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """MNIST or Fashion-MNIST through torchvision's dataset class (its IDX reader, its downloader)."""
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as e:
        if download:
            raise DataError(f"could not download {name!r} into {root}: {str(e).splitlines()[0]}") from None
        return None  # not in this root
    except Exception as e:  # network errors come in many types
        raise DataError(f"could not read or download {name!r} in {root}: {str(e).splitlines()[0]}") from None
    return ds.data.numpy(), ds.targets.numpy()


def _cifar(name: str, split: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """CIFAR from an offline ``.npz`` copy, else torchvision's layout (downloaded there with ``download``)."""
    folder = root / NAMED[name]["folder"]
    for fname in (["test.npz"] if split == "test" else ["train.npz", "train_20k.npz"]):
        if (folder / fname).is_file():
            return _npz_arrays(folder / fname)
    batches = root / CIFAR_BATCHES[name][0]
    if not cifar_batches(batches) and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(root), train=split == "train", download=True)
        except Exception as e:
            raise DataError(f"could not download {name!r} into {root}: {str(e).splitlines()[0]}") from None
    if cifar_batches(batches) == name:
        return _read_cifar_batches(batches, name, split)
    return None


def _load_named(name: str, split: str, roots: list[Path], download: bool, preprocess: str = "dataset") -> Dataset:
    spec = NAMED[name]
    for i, root in enumerate(roots):
        get = _cifar if name.startswith("cifar") else _mnist_like
        arrays = get(name, split, root, download and i == 0)
        if arrays is not None:
            x, y = arrays
            if len(x) != len(y):
                raise DataError(f"{root}: {name} has {len(x)} images but {len(y)} labels")
            xt, stated = _normalise(x, preprocess, spec["mean"], spec["std"])
            return Dataset(xt, torch.from_numpy(np.asarray(y).astype(np.int64)).reshape(-1), name, split, stated)
    searched = ", ".join(str(r) for r in roots)
    layout = f"{spec['folder']}/" + (f" or {CIFAR_BATCHES[name][0]}/" if name in CIFAR_BATCHES else "")
    raise DataError(f"data set {name!r} ({split}) not found offline; searched {searched} (set --data-root or "
                    f"GEOPATH_DATA_ROOT to a folder holding {layout}, or pass --download on a machine with a network)")


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
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
    if len(x) == 0:
        raise DataError(f"{path}: holds no inputs")
    return x, class_indices(y, path)


def class_indices(y: np.ndarray, where) -> np.ndarray:
    """Labels as one whole class index per input (an N×1 column is read as N), or a one-line data error: a
    one-hot or soft label matrix, fractions or NaN would otherwise be flattened or truncated into wrong labels."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = "; one-hot labels? store their argmax" if y.ndim == 2 else ""
        raise DataError(f"{where}: labels must be one class index per input, got an array of shape {y.shape}{hint}")
    if not np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_ and not (
            np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError(f"{where}: labels must be whole class indices, got {y.dtype} values"
                        + (f" such as {y[0]!r}" if len(y) else ""))
    return y


def load_npz(path: Path, split: str = "train", preprocess: str = "dataset", mean=None, std=None) -> Dataset:
    x, y = _npz_arrays(path)
    if x.dtype == np.uint8:
        if x.ndim < 3:
            raise DataError(f"{path}: uint8 arrays are read as images (N×H×W, N×H×W×C or N×C×H×W), this one has "
                            f"shape {x.shape}; store flat features as float32")
        xt, stated = _normalise(x, preprocess, mean, std)
    else:
        if preprocess not in ("dataset", AS_STORED) and not preprocess.startswith(DATASET_OF):
            raise DataError(f"{path}: the preprocessing {preprocess} (--normalize, or what the checkpoint records) "
                            f"applies to uint8 images; this file holds {x.dtype} arrays, used as stored (pass "
                            "--normalize dataset)")
        stated = AS_STORED
        if np.issubdtype(x.dtype, np.integer):  # token ids (an embedding's inputs): kept whole
            xt = torch.from_numpy(np.ascontiguousarray(x).astype(np.int64))
        else:
            xt = torch.from_numpy(np.ascontiguousarray(x)).float()
    return Dataset(xt, torch.from_numpy(np.asarray(y).astype(np.int64)).reshape(-1), str(path), split, stated)


def split_layout(path: Path) -> str | None:
    """How a folder holds its splits: ``"folders"`` (``train/`` and ``test/`` image folders), ``"npz"``
    (``train.npz`` and ``test.npz``), ``"cifar10"``/``"cifar100"`` (torchvision's CIFAR folder), or None
    (the folder is one set)."""
    if not path.is_dir():
        return None
    cifar = cifar_batches(path)
    if cifar:
        return cifar
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


def named_stats(name: str | None) -> str | None:
    """How a network trained on named set ``name`` with the default preprocessing read its inputs (``M/S`` per
    channel, as a run records it); None where ``name`` is no named set."""
    key = canonical_name(name) if name else None
    return _stated((NAMED[key]["mean"], NAMED[key]["std"])) if key in NAMED else None


def implied_preprocess(name: str | None) -> str | None:
    """What a checkpoint that records named set ``name`` and no preprocessing was trained with, for reading any
    data (``dataset:NAME``, see :func:`geopath.io.preprocess.parse_preprocess`); None where ``name`` is no named
    set."""
    key = canonical_name(name) if name else None
    return DATASET_OF + key if key in NAMED else None


def reads_images(name: str) -> bool:
    """Whether data set ``name`` is read from image files (a plain image folder, or one laid out by split with
    ``train/`` and ``test/`` folders): the ones ``--image-size`` and ``--channels`` apply to."""
    if canonical_name(name) in NAMED:
        return False
    path = Path(name).expanduser()
    return path.is_dir() and split_layout(path) in (None, "folders")


def recorded_name(name: str) -> str:
    """How a run records data set ``name``: a named set by its name, a path absolute (readable from
    any directory)."""
    key = canonical_name(name)
    return key if key in NAMED else str(Path(name).expanduser().resolve())


SIZE_PROBE = 64  # images whose size and mode are read up front (the rest are checked as they are decoded)
FOLDER_ORDER_SEED = 0  # an image folder's fixed order: its files shuffled once, the same for every run


def _visible(name: str) -> bool:
    """Not a hidden entry (``.ipynb_checkpoints/``, macOS ``._x.png``, ``.DS_Store``)."""
    return not name.startswith(".")


def class_folders(path: Path) -> list[str]:
    """The class folders of an image folder: its visible sub-folders, sorted (their labels 0, 1, …)."""
    return sorted(p.name for p in path.iterdir() if p.is_dir() and _visible(p.name))


def _load_image_folder(path: Path, split: str, preprocess: str = "dataset", image_size: str | None = None,
                       channels: int | None = None, classes: list[str] | None = None) -> Dataset:
    """An image folder, streamed: file names and labels now, pixels a batch at a time (io/images.py).

    ``classes`` (a folder laid out by split: the training folder's) fixes the label of each class
    folder, so a test folder that lacks a class does not shift the others. Hidden entries are skipped. The
    files come in a fixed shuffled order (the same in every run), so that the first N (``--metric-size``,
    ``--eval-size``, BatchNorm data) and the last N (a validation split) hold every class, as in the named
    sets; sorted by class, they held the first or the last classes alone. Without ``channels`` the folder is
    colour (3) if any of the first :data:`SIZE_PROBE` images is, else grayscale (1)."""
    import torchvision
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    folders = class_folders(path) if path.is_dir() else []
    if set(SPLITS) & set(folders):
        missing = [s for s in SPLITS if s not in folders]
        raise DataError(f"{path}: holds {', '.join(c for c in folders if c in SPLITS)}/ but not "
                        f"{', '.join(missing)}/: a folder laid out by split needs train/ and test/ "
                        "(each an image folder); a folder of classes must not name a class train or test")

    class Visible(torchvision.datasets.ImageFolder):
        def find_classes(self, directory):
            found = class_folders(Path(directory))
            if not found:
                raise FileNotFoundError(f"no class folder in {directory}")
            return found, {c: i for i, c in enumerate(found)}

    def readable(f: str) -> bool:
        return (has_file_allowed_extension(f, IMG_EXTENSIONS)
                and all(_visible(part) for part in Path(f).relative_to(path).parts))
    try:  # lists the files; decodes nothing
        folder = Visible(str(path), is_valid_file=readable)
    except Exception as e:
        raise DataError(f"{path}: not a usable image folder ({str(e).splitlines()[0]})") from None
    samples = folder.samples
    if classes is not None:
        unknown = sorted(set(folder.classes) - set(classes))
        if unknown:
            raise DataError(f"{path}: class folder(s) {', '.join(unknown)} have no counterpart in the training "
                            "folder")
        samples = [(f, classes.index(folder.classes[c])) for f, c in samples]
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(FOLDER_ORDER_SEED)).tolist()
    samples = [samples[i] for i in order]
    files = [Path(f) for f, _ in samples]
    if channels is not None and channels not in (1, 3):
        raise DataError(f"--channels must be 1 or 3, got {channels}")
    probed = [(f, *image_mode(f)) for f in files[:SIZE_PROBE]]
    size = parse_image_size(image_size)
    first, first_size = files[0], probed[0][2]
    if size is None:
        for f, _, other in probed[1:]:
            if other != first_size:
                raise DataError(f"{path}: images differ in size ({first.name} {first_size[0]}×{first_size[1]}, "
                                f"{f.name} {other[0]}×{other[1]}): pass --image-size to resize them all")
    ch = channels or max(c for _, c, _ in probed)
    stats = _stats(preprocess, ch, None, None)
    x = ImageFiles(files, ch, size or first_size, stats, resize=size is not None)
    return Dataset(x, torch.tensor([c for _, c in samples], dtype=torch.int64), str(path), split, _stated(stats))


def training_classes(name: str | None) -> list[str] | None:
    """The class folders of ``name``'s training images where it is an image folder (a plain one, or ``train/`` of
    one laid out by split) that exists here; else None. An image folder scored apart from the folder a network
    trained on takes its labels from these (``load_dataset``'s ``classes``)."""
    if not name or canonical_name(name) in NAMED:
        return None
    path = Path(name).expanduser()
    if path.suffix == ".npz" or not path.is_dir():
        return None
    layout = split_layout(path)
    root = path / "train" if layout == "folders" else path if layout is None else None
    return class_folders(root) if root is not None else None


def load_dataset(name: str, split: str = "train", data_root=None, download: bool = False,
                 preprocess: str | None = None, image_size: str | None = None, channels: int | None = None,
                 classes: list[str] | None = None) -> Dataset:
    """Load a data set split into memory (see module docstring for accepted names).

    ``preprocess`` (``--normalize``; default ``dataset``) says how stored pixels become inputs; the
    returned set states what was applied (``Dataset.preprocess``: ``M,M/S,S``, ``none`` or
    ``as stored``), which every run records. Image folders are streamed (``Dataset.x`` is an
    :class:`geopath.io.images.ImageFiles`), their images converted to ``channels`` (default: the
    first image's, 1 for grayscale) and resized to ``image_size`` (``S`` or ``H,W``) when given. ``classes``
    (:func:`training_classes` of the data a network trained on) labels a plain image folder's class folders as
    training labelled them: a folder lacking a class would otherwise shift the labels of the others."""
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
        if layout in CIFAR_BATCHES:
            x, y = _read_cifar_batches(path, layout, split)
            xt, stated = _normalise(x, preprocess, NAMED[layout]["mean"], NAMED[layout]["std"])
            return Dataset(xt, torch.from_numpy(y), str(path), split, stated)
        if layout == "folders":  # labelled by the network's classes where given, else by train/'s
            if split == "train" or image_size is not None:
                return _load_image_folder(path / split, split, preprocess, image_size, channels,
                                          classes or class_folders(path / "train"))
            train = _load_image_folder(path / "train", "train", preprocess, None, channels)  # (its size, channels)
            test = _load_image_folder(path / "test", split, preprocess, None, channels or train.x.channels,
                                      classes or class_folders(path / "train"))
            if test.x.size != train.x.size:  # (a network that takes any size would score images it never saw)
                raise DataError(f"{path}: test/ images are {test.x.size[0]}×{test.x.size[1]}, train/ images "
                                f"{train.x.size[0]}×{train.x.size[1]}: pass --image-size to resize them all")
            return test
        if layout == "npz":
            return load_npz(path / f"{split}.npz", split, preprocess)
        return _load_image_folder(path, split, preprocess, image_size, channels, classes)
    known = ", ".join(NAMED)
    raise DataError(f"unknown data set {name!r} (use one of {known}, a PATH.npz, an image folder or a folder laid "
                    "out by split)")
