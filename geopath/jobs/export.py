"""``geopath export``: the smaller network a structured run stands for.

A structured path (``sparsify --structured``; a transition's units on networks without residual
coupling) zeroes whole units with everything that produces their channels, so the channels are
exactly zero everywhere; export removes only units whose whole coupled group is zero. Export removes them physically (Torch-Pruning's surgery, through
:mod:`geopath.core.coupling`), checks that the compact network computes what the zeroed one did,
and writes safetensors that rebuild without pickle: the architecture, the removal history
(``geopath.compact``) and the input shape to trace it on. ``geopath eval`` and every job read it
back like any checkpoint. Parameters, MACs and CPU latency before and after go into the report. A compact
network pruned again (a structured run from an exported network) exports too: its history is the recorded one
followed by the new removals, and the report counts the new ones.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from geopath.core.coupling import compact
from geopath.errors import NumericalError, UsageError
from geopath.io.checkpoint import META_PREFIX, load_checkpoint, save_checkpoint
from geopath.io.data import load_dataset
from geopath.io.outfile import check_output_file
from geopath.jobs.common import carried, check_inputs

LATENCY_BATCH = 64
LATENCY_REPEATS = 20


def source_file(source: str | Path) -> Path:
    """A checkpoint, or a finished run directory (its ``final.safetensors``)."""
    source = Path(source)
    if source.is_dir():
        if not (source / "final.safetensors").is_file():
            raise UsageError(f"{source}: a run directory without final.safetensors (the run did not finish)")
        return source / "final.safetensors"
    return source


def _cost(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Parameters, multiply-accumulates per sample and CPU latency of one batch (median, one thread)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, x[:1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.no_grad():
            model(x)
            for _ in range(LATENCY_REPEATS):
                tic = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - tic)
    finally:
        torch.set_num_threads(threads)
    return {"parameters": int(params), "macs": float(macs), "latency_ms": 1000 * statistics.median(times)}


def export(source: str | Path, out: str | Path, data: str | None = None, data_root=None, arch: str | None = None,
           arch_kwargs: dict | None = None, trust_code: bool = False, overwrite: bool = False,
           normalize: str | None = None, image_size: str | None = None, channels: int | None = None) -> dict[str, Any]:
    """Write the compact network of ``source`` to ``out``; returns the report."""
    path = source_file(source)
    out = check_output_file(out, overwrite, (".safetensors",), inputs=(path,))
    ck = load_checkpoint(path, arch, arch_kwargs, trust_code=trust_code)
    # a compact network (or a run's from one) pruned again: its units go after the recorded ones, which rebuild it
    earlier = json.loads(ck.metadata.get(META_PREFIX + "compact", "[]"))
    name = data or ck.data
    if not name:
        raise UsageError(f"{path} does not record its data set; pass --data (its inputs' shape is needed)")
    preprocess, image_size, channels = ck.reading(normalize, image_size, channels, data=name)
    ds = load_dataset(name, "test", data_root, preprocess=preprocess, image_size=image_size, channels=channels)
    model = ck.model.eval()
    check_inputs(model, ds, "cpu")  # (a network that cannot take them: one line, not a shape error from inside)
    x = ds.x[:LATENCY_BATCH]
    x = x if isinstance(x, torch.Tensor) else x.to("cpu")
    with torch.no_grad():
        zeroed = model(x)
    before = _cost(model, x)
    history = compact(model, x[:2])
    if not history:
        raise UsageError(f"{path}: no unit is zero with everything coupled to it; nothing to remove (export "
                         "follows a structured run: sparsify --structured, or a transition)"
                         + ("; it is already compact" if earlier else ""))
    with torch.no_grad():
        diff = float((model(x) - zeroed).abs().max())
    scale = float(zeroed.abs().max()) or 1.0
    if not diff <= 1e-4 * scale:
        raise NumericalError(f"the compact network's outputs differ from the zeroed one's by {diff:.3g}; "
                             "nothing was written")
    after = _cost(model, x)
    extra = {k[len(META_PREFIX):]: v for k, v in ck.metadata.items()
             if k.startswith(META_PREFIX) and k[len(META_PREFIX):] in ("data", "preprocess", "job", "image_size",
                                                                       "channels")}
    extra.update(carried(ck))  # (its classes, and a merged network's task B: how B is read and labelled)
    extra.update({"compact": earlier + history,
                  "input_shape": list(x.shape[1:]),
                  "input_dtype": str(x.dtype).replace("torch.", "")})
    save_checkpoint(out, model, ck.arch, ck.arch_kwargs, parent_sha256=ck.sha256, extra=extra)
    return {"source": str(path), "out": str(out), "removed": {layer: len(units) for layer, units in history},
            "before": before, "after": after, "max_output_difference": diff,
            "ratios": {k: after[k] / before[k] for k in before if before[k]}}


def text(r: dict[str, Any]) -> list[str]:
    b, a = r["before"], r["after"]
    removed = ", ".join(f"{layer}: {n}" for layer, n in r["removed"].items())
    return [f"wrote {r['out']} (units removed: {removed})",
            f"parameters:  {b['parameters']:,} -> {a['parameters']:,} ({a['parameters'] / b['parameters']:.1%})",
            f"MACs/sample: {b['macs']:,.0f} -> {a['macs']:,.0f} ({a['macs'] / b['macs']:.1%})",
            f"CPU latency: {b['latency_ms']:.2f} ms -> {a['latency_ms']:.2f} ms per batch of {LATENCY_BATCH} "
            f"(one thread, median of {LATENCY_REPEATS})",
            f"outputs:     max difference to the zeroed network {r['max_output_difference']:.2e}"]

