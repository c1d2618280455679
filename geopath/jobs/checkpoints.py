"""The commands on one checkpoint: ``eval``, ``train`` and ``inspect`` (``export`` has its own module).

The command line only parses their flags and prints what these return; the same functions serve a
Python caller.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from geopath.core.evaluate import evaluate
from geopath.config import check_seed
from geopath.errors import UsageError
from geopath.io.checkpoint import load_checkpoint, read_tensors, reading_record, save_checkpoint, sparsity_of
from geopath.io.data import load_dataset, one_set, reads_images, recorded_name, training_classes
from geopath.io.outfile import check_output_file
from geopath.jobs.common import check_inputs, classes_record, eval_set, label_offset, network_classes, resolve_device


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, split: str = "test",
                        normalize: str | None = None, image_size: str | None = None, channels: int | None = None,
                        download: bool = False, data_root=None, size: int | None = None, arch: str | None = None,
                        arch_kwargs: dict | None = None, trust_pickle: bool = False, trust_code: bool = False,
                        device: str = "cpu") -> dict[str, Any]:
    """Accuracy, loss and sparsity of a network on ``data`` (default: the test split of the data set it
    records, read as it records: preprocessing, image size, channels)."""
    if size is not None and size < 1:
        raise UsageError(f"--size must be ≥ 1, got {size}")
    dev = resolve_device(device)
    ck = load_checkpoint(checkpoint, arch, arch_kwargs, trust_pickle, trust_code)
    name = data or ck.data
    if not name:
        raise UsageError("the checkpoint does not record its data set; pass --data")
    single = one_set(name)  # a PATH.npz or a plain image folder: scored as it is
    if single and data is None:
        raise UsageError(f"{checkpoint} records its training data {name}, one set with no test split; pass "
                         "--data with labelled test data")
    if single and split != "test":
        raise UsageError(f"{name} is one set with no splits, scored whole: --split {split} does not apply")
    # an image folder scored apart from the one the network trained on: labelled as training labelled them
    offset = label_offset(ck, name)  # (task B of a split-head merged network: its own folders, then shifted)
    classes = network_classes(ck) if data is not None and recorded_name(data) != ck.data and not offset else None
    ds = load_dataset(name, split, data_root, download, *ck.reading(normalize, image_size, channels, data=name),
                      classes=classes).head(size).shifted(offset)
    if len(ds) == 0:
        raise UsageError(f"{name}: no {split} samples to evaluate on")
    model = ck.model.to(dev)
    check_inputs(model, ds, dev)
    ev = evaluate(model, ds, device=dev)
    return {"checkpoint": str(checkpoint), "data": name, "split": None if single else split,
            "preprocess": ds.preprocess, "samples": ev.samples, "accuracy": ev.accuracy, "loss": ev.loss,
            "sparsity": sparsity_of(ck.model)}


def train_checkpoint(out: str | Path, arch: str = "mlp", arch_kwargs: dict | None = None, data: str = "mnist",
                     eval_data: str | None = None, normalize: str | None = None, image_size: str | None = None,
                     channels: int | None = None, download: bool = False, data_root=None, size: int | None = None,
                     epochs: float = 5.0, batch_size: int = 128, lr: float = 0.05, weight_decay: float = 0.0,
                     seed: int = 0, device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Train a network from scratch and save it as self-describing safetensors (its data set, the
    preprocessing and image options it was trained with, its test accuracy)."""
    from geopath.core.train import train
    from geopath.io.archs import build_model

    out = check_output_file(out, overwrite, (".safetensors",))
    if not (math.isfinite(epochs) and epochs > 0 and math.isfinite(lr) and lr > 0) or batch_size < 1:
        raise UsageError("--epochs and --lr must be finite and > 0, and --batch-size ≥ 1")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UsageError(f"--weight-decay must be finite and ≥ 0, got {weight_decay}")
    if size is not None and size < 1:
        raise UsageError(f"--size must be ≥ 1, got {size}")
    if (image_size is not None or channels is not None) and not any(reads_images(n) for n in (data, eval_data) if n):
        raise UsageError(f"--image-size and --channels resize and convert image folders; {data} is not one "
                         "(its inputs are read as stored)")
    check_seed(seed)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    kwargs = dict(arch_kwargs or {})
    model = build_model(arch, kwargs)
    test_name = eval_set(data, eval_data)
    tr = load_dataset(data, "train", data_root, download, normalize, image_size, channels).head(size)
    if len(tr) == 0:
        raise UsageError(f"{data}: no training samples")
    te = load_dataset(test_name, "test", data_root, download, tr.preprocess, image_size, channels,
                      classes=training_classes(data) if test_name != recorded_name(data) else None)
    for ds in (tr, te):  # (a shape error from inside the first batch, or a label beyond the outputs, otherwise)
        check_inputs(model.to(dev), ds, dev, f"--arch {arch}")
    stats = train(model, tr, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                  device=dev)
    ev = evaluate(model, te, device=dev)
    test_data = recorded_name(test_name)
    # (training takes whole steps, at least one, so the epochs trained are not always those asked: the file records
    # those trained, as the shipped checkpoints do)
    save_checkpoint(out, model.cpu(), arch, kwargs, step=0,
                    extra={"data": recorded_name(data), "preprocess": tr.preprocess,
                           "test_accuracy": f"{ev.accuracy:.4f}", "test_data": test_data,
                           "train_epochs": f"{stats.epochs:.6g}",
                           **reading_record(image_size, channels), **classes_record(data)})
    return {"out": str(out), "arch": arch, "data": data, "test_data": test_data, "epochs": stats.epochs,
            "epochs_asked": epochs, "test_accuracy": ev.accuracy, "test_loss": ev.loss,
            "sample_passes": stats.sample_passes}


def inspect_checkpoint(checkpoint: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """A checkpoint's tensors (shape, dtype, zeros, NaN or Inf values) and metadata (sorted: safetensors keeps no
    order); builds no network, so it runs no code. ``values`` counts every stored number, buffers (BatchNorm
    statistics) included: which tensors are parameters only the built network knows."""
    tensors, meta = read_tensors(checkpoint, trust_pickle)
    rows = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
             "zeros": int((v == 0).sum()), "nonfinite": int((~torch.isfinite(v)).sum()) if v.is_floating_point()
             else 0} for k, v in tensors.items()]
    return {"checkpoint": str(checkpoint), "metadata": dict(sorted(meta.items())), "tensors": rows,
            "values": sum(v.numel() for v in tensors.values()), "nonfinite": sum(r["nonfinite"] for r in rows)}
