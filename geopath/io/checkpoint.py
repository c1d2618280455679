"""Reading and writing checkpoints.

``.safetensors`` files describe themselves: the architecture lives in the metadata
header (``geopath.arch``, ``geopath.arch_kwargs`` as JSON). ``.pt``/``.pth`` state
dicts are read with ``torch.load(weights_only=True)``; a file that needs pickle is
refused unless the caller opts in with ``trust_pickle=True`` (``--trust-pickle``).
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geopath import __version__
from geopath.io.atomic import atomic_path, sha256_file
from geopath.core.choices import ARCH_SPECS
from geopath.io.archs import build_model, trusted
from geopath.io.data import implied_preprocess, recorded_name
from geopath.errors import CheckpointError, StorageError, UsageError

META_PREFIX = "geopath."
SAFETENSORS_EXT = {".safetensors"}
TORCH_EXT = {".pt", ".pth", ".bin", ".ckpt"}


@dataclass
class Checkpoint:
    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any]
    path: Path | None = None
    sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> str | None:
        """The data set the network was trained on, if recorded."""
        return self.metadata.get(META_PREFIX + "data")

    @property
    def classes(self) -> list[str] | None:
        """The class folders the network's outputs stand for, in order, where it was trained on an image folder
        (``geopath train`` records them; every network a run saves inherits them)."""
        text = self.metadata.get(META_PREFIX + "classes")
        if not text:
            return None
        try:
            names = json.loads(text)
        except ValueError:
            names = None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise UsageError(f"{self.path}: its recorded classes are not a list of names ({text[:60]!r})")
        return names

    def reading(self, normalize: str | None = None, image_size: str | None = None, channels: int | None = None,
                data: str | None = None) -> tuple[str | None, str | None, int | None]:
        """How to read data set ``data`` (default: its own): ``(preprocess, image_size, channels)``, each the flag if
        given, else what the checkpoint records (None: the data set's default).

        A checkpoint that records a named data set and no preprocessing (the shipped ones, and any written before
        runs recorded it) was trained on that set's default: ``dataset:NAME`` (a named set is read with its own
        statistics, uint8 images without any, such as an ``.npz`` copy, with NAME's; float arrays as stored). A
        merged network records each task's (``data``/``preprocess``, ``data_b``/``preprocess_b``): task B's data is
        read as B's, and other data, where the tasks were read differently, needs ``--normalize``."""
        meta = self.metadata
        recorded_channels = meta.get(META_PREFIX + "channels")
        preprocess = meta.get(META_PREFIX + "preprocess") or implied_preprocess(self.data)
        data_b, preprocess_b = meta.get(META_PREFIX + "data_b"), meta.get(META_PREFIX + "preprocess_b")
        if normalize is None and data is not None and data_b and preprocess_b is not None:
            name = recorded_name(data)
            if name == data_b:
                preprocess = preprocess_b
            elif preprocess_b != preprocess and name != (recorded_name(self.data) if self.data else None):
                raise UsageError(f"{self.path}: a merged network whose tasks read their inputs differently ("
                                 f"{self.data}: {preprocess}; {data_b}: {preprocess_b}); to read {data}, pass "
                                 "--normalize")
        return (normalize or preprocess,
                image_size or meta.get(META_PREFIX + "image_size"),
                channels or (int(recorded_channels) if recorded_channels else None))


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return tensors, meta


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return _unwrap_state_dict(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            # strip the prefix DataParallel / torch.compile add
            for prefix in ("module.", "_orig_mod."):
                if all(k.startswith(prefix) for k in tensors):
                    tensors = {k[len(prefix):]: v for k, v in tensors.items()}
            return tensors
    raise CheckpointError(f"{path}: no state dict of tensors found in this file")


def _torch_format(path: Path) -> None:
    """A one-line error unless ``path`` starts like a file ``torch.save`` writes: a zip archive, or a pickle (the
    legacy format); a file in another format would otherwise be reported as a refused pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return
    if len(head) >= 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        raise CheckpointError(f"{path}: looks like a safetensors file, not a PyTorch one; give it the .safetensors "
                              "suffix")
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; this file "
                          "is neither)")


def _pickled_what(e: Exception) -> str:
    """What a refused pickle holds, from torch's long refusal ("... Unsupported global: GLOBAL argparse.Namespace
    was not an allowed global ..."): the class it names, else torch's first words up to a word's end."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if found:
        return f"it holds {found.group(1)}"
    text = " ".join(str(e).split()) or "unsafe pickle content"
    return text if len(text) <= 120 else text[:120].rsplit(" ", 1)[0] + " …"


def _read_torch(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    _torch_format(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: refused to unpickle arbitrary objects ({_pickled_what(e)}); "
                "re-save it as a plain state dict, or pass --trust-pickle if you trust its source"
            ) from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:
            raise CheckpointError(f"{path}: cannot be read ({type(e2).__name__}: {e2})") from None
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg[:160]})") from None
    return _unwrap_state_dict(obj, path)


def read_tensors(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint file, with one-line errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_EXT:
        return _read_safetensors(path)
    if suffix in TORCH_EXT:
        return _read_torch(path, trust_pickle), {}
    raise CheckpointError(f"{path}: unknown checkpoint extension {suffix!r} (use .safetensors, .pt or .pth)")


def _fit_report(model: nn.Module, tensors: dict[str, torch.Tensor]) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]

    def few(xs):
        return ", ".join(xs[:3]) + (f" (+{len(xs) - 3} more)" if len(xs) > 3 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    if wrong:
        parts.append(f"shape mismatch (checkpoint vs model): {few(wrong)}")
    return "; ".join(parts) or None


def reading_record(image_size: str | None, channels: int | None) -> dict[str, str]:
    """The image options a saved network records (what :meth:`Checkpoint.reading` reads back)."""
    record = {"image_size": str(image_size) if image_size else None, "channels": str(channels) if channels else None}
    return {k: v for k, v in record.items() if v is not None}


def example_input(meta: dict[str, str], n: int = 2) -> torch.Tensor:
    """``n`` zero inputs of the shape and type a checkpoint records (``geopath.input_shape``, ``input_dtype``)."""
    shape = json.loads(meta[META_PREFIX + "input_shape"])
    dtype = torch.long if meta.get(META_PREFIX + "input_dtype", "float32").startswith("int") else torch.float32
    return torch.zeros((n, *shape), dtype=dtype)


def _replay_compact(model: nn.Module, meta: dict[str, str], path: Path) -> nn.Module:
    """Rebuild a compact network from its recipe: the removal history replayed on the architecture."""
    from geopath.core.coupling import replay

    try:
        history = json.loads(meta[META_PREFIX + "compact"])
        example = example_input(meta)
        return replay(model.eval(), history, example)
    except UsageError:
        raise
    except Exception:
        raise CheckpointError(f"{path}: its compact-network metadata (geopath.compact, geopath.input_shape) "
                              "does not describe this architecture") from None


def _layout_hint(tensors: dict[str, torch.Tensor]) -> str:
    """A hint for a plain ``nn.Sequential`` state dict (keys ``0.weight``, ``2.weight``, ...)."""
    if tensors and all(k.split(".", 1)[0].isdigit() for k in tensors):
        return ("; its keys (" + ", ".join(list(tensors)[:2]) + ", ...) are an nn.Sequential's: pass the code that "
                "builds it, e.g. --arch mymodels.py:make_net (a function returning the nn.Sequential)")
    return ""


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where}: tensor {k!r} contains NaN or Inf values")


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    trust_code: bool = False,
) -> Checkpoint:
    """Build the model a checkpoint describes (or ``arch``) and load its weights.

    From the file's metadata alone only geopath's and torchvision's architectures are built; one
    that names other code (``module:NAME``, ``file.py:NAME``) is refused unless ``trust_code``: the
    user names it with ``arch`` instead."""
    path = Path(path)
    tensors, meta = read_tensors(path, trust_pickle=trust_pickle)
    if arch is None:
        arch = meta.get(META_PREFIX + "arch")
        if arch is None:
            raise UsageError(f"{path}: the file does not name its architecture; pass --arch ({ARCH_SPECS})"
                             f"{_layout_hint(tensors)}")
        if not trusted(arch) and ":" not in arch:  # (code is named module:NAME or file.py:NAME)
            raise UsageError(f"{path}: its metadata names architecture {arch!r}, which geopath does not know; pass "
                             f"--arch ({ARCH_SPECS})")
        if not trusted(arch) and not trust_code:
            raise UsageError(f"{path}: its metadata names architecture {arch!r}, code outside geopath and "
                             f"torchvision, which geopath does not run on a file's word; pass --arch {arch} "
                             "to build it (or --trust-code)")
        if arch_kwargs is None:
            try:
                arch_kwargs = json.loads(meta.get(META_PREFIX + "arch_kwargs", "{}"))
            except json.JSONDecodeError:
                raise CheckpointError(f"{path}: metadata geopath.arch_kwargs is not valid JSON") from None
            if not isinstance(arch_kwargs, dict):
                raise CheckpointError(f"{path}: metadata geopath.arch_kwargs is not a JSON object of architecture "
                                      f"options (got {type(arch_kwargs).__name__})")
    arch_kwargs = dict(arch_kwargs or {})
    model = build_model(arch, arch_kwargs)
    if META_PREFIX + "compact" in meta:  # a compact network: the architecture with units removed
        model = _replay_compact(model, meta, path)
    report = _fit_report(model, tensors)
    if report:
        raise CheckpointError(f"{path}: does not fit architecture {arch!r}: {report}{_layout_hint(tensors)}")
    check_finite(tensors, str(path))
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return Checkpoint(model, arch, arch_kwargs, path, sha256_file(path), meta)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    step: int | None = None,
    parent_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a self-describing safetensors file atomically (temp, fsync, rename)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    check_finite(tensors, f"refusing to write {path}")
    meta = {
        META_PREFIX + "arch": arch,
        META_PREFIX + "arch_kwargs": json.dumps(arch_kwargs or {}, sort_keys=True),
        META_PREFIX + "version": __version__,
        META_PREFIX + "format": "1",
    }
    if step is not None:
        meta[META_PREFIX + "step"] = str(int(step))
    if parent_sha256:
        meta[META_PREFIX + "parent_sha256"] = parent_sha256
    for k, v in (extra or {}).items():
        meta[META_PREFIX + k] = v if isinstance(v, str) else json.dumps(v)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
            _canonical_header(tmp)
        except OSError:
            raise
        except Exception as e:  # safetensors reports I/O failures as its own error type
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StorageError(f"{path}: cannot write the checkpoint ({first[:200]})") from None


def _canonical_header(path: str | Path) -> None:
    """Rewrite the JSON header of the safetensors file ``path`` in one form: keys sorted (the tensors' entries, each
    entry's fields and the ``__metadata__`` map), no spaces, padded with spaces to a multiple of 8 bytes as the format
    asks. safetensors writes the header from a Rust ``HashMap``, whose order changes from process to process, so the
    same tensors and metadata gave files with different bytes (and sha256, which manifests and ``parent_sha256``
    record). The data section is left as it is: its ``data_offsets`` count from its own start."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)
        if len(text) == size:
            f.seek(8)
            f.write(text)
        else:  # (a header written with other spacing or escapes): the data follows the new header
            data = f.read()
            f.seek(0)
            f.truncate()
            f.write(len(text).to_bytes(8, "little") + text)
            f.write(data)


def sparsity_of(model: nn.Module, names: list[str] | None = None) -> float:
    """Fraction of exact zeros among the given parameters (default: all weights of Linear/Conv)."""
    from geopath.core.targets import prunable_parameters

    params = dict(model.named_parameters())
    names = names or prunable_parameters(model)
    total = sum(params[n].numel() for n in names)
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    return zeros / total if total else math.nan
