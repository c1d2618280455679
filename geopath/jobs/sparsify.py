"""The ``sparsify`` job: walk a trained network to a sparse hyperplane.

Glue only: load the checkpoint and data, build the target, hand everything to
the path engine (:func:`geopath.core.path.walk`) — or, with ``--method``, to a peer
from :mod:`geopath.peers` — and summarise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch

from geopath import peers

from geopath.jobs import common as job
from geopath.core.params import ParamSpace, model_vector
from geopath.io.checkpoint import sparsity_of
from geopath.config import MaskMode, SparsifyConfig, SparsifyMethod
from geopath.core.evaluate import evaluate, has_batchnorm
from geopath.errors import UsageError
from geopath.core.path import walk
from geopath.core.targets import MagnitudeTarget, StructuredTarget, Target, parse_structured, prunable_parameters
from geopath.io.trace import columns

COLUMNS = columns("train_accuracy", "test_accuracy", "test_loss", "sparsity")
HEADLINE = ["test_accuracy", "sparsity", "epochs", "wall_time"]
DEFAULT_FINETUNE_EPOCHS = 5.0
STEP_SCALE = 4.0  # default ε = (STEP_SCALE · d0 / steps)²


def sparse_parameters(cfg: SparsifyConfig, model) -> list[str]:
    """The parameters whose sparsity is the goal: ``--layer`` names, or every Linear/Conv weight."""
    return list(cfg.layers) if cfg.layers else prunable_parameters(model)


def build_target(cfg: SparsifyConfig, model, space: ParamSpace, w0: torch.Tensor) -> Target:
    counts = parse_structured(cfg.structured)
    if counts:
        return StructuredTarget(model, space, w0, counts)
    return MagnitudeTarget(space, w0, cfg.sparsity, sparse_parameters(cfg, model), cfg.scope,
                           dynamic=cfg.mask is MaskMode.DYNAMIC)


def run_sparsify(
    cfg: SparsifyConfig,
    overwrite: bool = False,
    resume: bool = False,
    on_row: Callable[[dict], None] | None = None,
    on_start: Callable[[Any, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a sparsify job; returns the summary also written to ``summary.json``."""
    out, device = job.open_run(cfg, overwrite, resume)
    ck = job.load(cfg, cfg.checkpoint)
    data_name, metric_data, test_data, train_eval = job.single_task_data(cfg, ck, device)

    anchor = job.frozen_copy(ck.model, device)  # the starting network, kept frozen
    model = ck.model.to(device)
    space = ParamSpace.of(model)
    w0 = model_vector(model, space)
    target = build_target(cfg, model, space, w0)
    d0 = target.distance(w0)
    max_steps = cfg.max_steps or 3 * cfg.steps
    step_size = cfg.step_size or job.default_step_size(d0, cfg.steps, STEP_SCALE)
    finetune_epochs = DEFAULT_FINETUNE_EPOCHS if cfg.finetune_epochs is None else cfg.finetune_epochs
    cfg = dataclasses.replace(cfg, data=data_name, step_size=step_size, max_steps=max_steps,
                              finetune_epochs=finetune_epochs, arch=ck.arch, arch_kwargs=ck.arch_kwargs)

    writer = job.open_writer(out, overwrite, resume, ck.arch, ck.arch_kwargs, ck.sha256, "sparsify", data_name, COLUMNS)
    sparse_names = sparse_parameters(cfg, model)

    def evaluate_row(net) -> dict:
        ev = evaluate(net, test_data, device=device)
        row = {"test_accuracy": ev.accuracy, "test_loss": ev.loss, "sparsity": sparsity_of(net, sparse_names)}
        row["train_accuracy"] = evaluate(net, train_eval, device=device).accuracy if train_eval else math.nan
        return row

    bn_data = metric_data.head(cfg.bn_samples) if has_batchnorm(model) else None
    state = job.begin(writer, cfg, model, ck.sha256, resume, resumable=cfg.method is SparsifyMethod.GEODESIC)
    if cfg.method is SparsifyMethod.GEODESIC:
        if on_start:
            on_start(cfg, max_steps + cfg.settle_steps)
        pcfg = job.path_config(cfg, step_size, max_steps, settle_steps=cfg.settle_steps)
        result = walk(model, target, metric_data, pcfg, evaluate_row, writer, anchor=anchor, state=state,
                      device=device, on_row=on_row, bn_data=bn_data)
        final = result.final
    else:
        record = job.Recorder(writer, evaluate_row, len(metric_data), on_row, bn_data, device)
        if on_start:
            on_start(cfg, 0)
        passes = int(round(finetune_epochs * len(metric_data)))
        if cfg.method is SparsifyMethod.PRUNE_FINETUNE:
            peers.prune_finetune(model, target, metric_data, passes, batch_size=cfg.batch_size, lr=cfg.lr,
                                     seed=cfg.seed, device=device, record=record, records=_records(cfg))
        else:
            if isinstance(target, MagnitudeTarget) and target.dynamic:
                raise UsageError("--method iterative-prune chooses its own masks; it does not take --mask dynamic")
            target = peers.iterative_prune(model, target, metric_data, passes, rounds=cfg.rounds,
                                               batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=device,
                                               record=record, records=_records(cfg))
        final = record.rows[-1]
    start = writer.trace.rows()[0]
    summary = {
        "job": "sparsify",
        "method": cfg.method.value,
        "out": str(out),
        "final": "final.safetensors",
        "headline": HEADLINE,
        "dense_test_accuracy": start["test_accuracy"],
        **{k: final[k] for k in ("step", "test_accuracy", "test_loss", "train_accuracy", "sparsity",
                                  "length", "sample_passes", "epochs", "wall_time")},
        "target": target.describe() if not isinstance(target, MagnitudeTarget) else
        {k: v for k, v in target.describe().items() if k != "parameters"},
    }
    job.gate(summary, final["test_accuracy"], cfg.min_accuracy, "test_accuracy")
    writer.finish(summary)
    return summary


def _records(cfg: SparsifyConfig) -> int:
    """How many trace rows a training-based peer writes (about as many as a geodesic run)."""
    return max(2, (3 * cfg.steps + cfg.settle_steps) // cfg.save_every)
