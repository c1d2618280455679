"""The ``sparsify`` job: walk a trained network to a sparse hyperplane.

Glue only: load the checkpoint and data, build the target, hand everything to
the path engine (:func:`geopath.path.walk`), and summarise.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable

import torch

from ._params import ParamSpace, load_vector, model_vector
from .checkpoint import META_PREFIX, load_checkpoint, read_tensors, sparsity_of
from .config import MaskMode, SparsifyConfig
from .data import load_dataset
from .errors import CheckpointError, UsageError
from .evaluate import evaluate, has_batchnorm
from .geodesic import StepConfig
from .path import PathConfig, PathState, walk
from .rundir import RunWriter, prepare_output
from .targets import MagnitudeTarget, StructuredTarget, Target, parse_structured, prunable_parameters


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def sparse_parameters(cfg: SparsifyConfig, model) -> list[str]:
    """The parameters whose sparsity is the goal: ``--layer`` names, or every Linear/Conv weight."""
    return list(cfg.layers) if cfg.layers else prunable_parameters(model)


def build_target(cfg: SparsifyConfig, model, space: ParamSpace, w0: torch.Tensor) -> Target:
    counts = parse_structured(cfg.structured)
    if counts:
        return StructuredTarget(model, space, w0, counts)
    return MagnitudeTarget(space, w0, cfg.sparsity, sparse_parameters(cfg, model), cfg.scope,
                           dynamic=cfg.mask is MaskMode.DYNAMIC)


def _resume_state(writer: RunWriter, parent_sha: str) -> tuple[PathState, dict[str, torch.Tensor]]:
    rows = writer.trace.rows()
    for i in range(len(rows) - 1, -1, -1):
        r = rows[i]
        ck = writer.out / str(r.get("checkpoint") or "")
        if not str(r.get("checkpoint", "")).startswith("steps/") or not ck.is_file():
            continue
        try:
            tensors, meta = read_tensors(ck)
        except CheckpointError:
            continue
        if meta.get(META_PREFIX + "parent_sha256") != parent_sha:
            raise UsageError(f"{writer.out}: the run was started from a different checkpoint file")
        writer.trace.keep(rows[: i + 1])
        state = PathState(step=int(r["step"]), length=float(r["length"]), sample_passes=float(r["sample_passes"]),
                          wall_time=float(r["wall_time"]), landed_at=r.get("landed_at"))
        return state, tensors
    raise UsageError(f"{writer.out}: no complete step to resume from; start again with --overwrite")


def run_sparsify(
    cfg: SparsifyConfig,
    overwrite: bool = False,
    resume: bool = False,
    on_row: Callable[[dict], None] | None = None,
    on_start: Callable[[SparsifyConfig, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a sparsify job; returns the summary also written to ``summary.json``."""
    out = prepare_output(cfg.out, overwrite, resume)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    ck = load_checkpoint(cfg.checkpoint, cfg.arch, cfg.arch_kwargs, cfg.trust_pickle)
    data_name = cfg.data or ck.data
    if not data_name:
        raise UsageError("the checkpoint does not record its data set; pass --data (e.g. --data mnist)")
    metric_data = load_dataset(data_name, "train", cfg.data_root).head(cfg.metric_size)
    test_data = load_dataset(cfg.eval_data or data_name, "test", cfg.data_root).head(cfg.eval_size)
    train_eval = metric_data.head(cfg.train_eval_size) if cfg.train_eval_size else None

    anchor = copy.deepcopy(ck.model).to(device)  # the starting network, kept frozen
    model = ck.model.to(device)
    space = ParamSpace.of(model)
    w0 = model_vector(model, space)
    target = build_target(cfg, model, space, w0)
    d0 = target.distance(w0)
    max_steps = cfg.max_steps or 3 * cfg.steps
    step_size = cfg.step_size or max((4.0 * d0 / cfg.steps) ** 2, 1e-12)
    cfg = dataclasses.replace(cfg, data=data_name, step_size=step_size, max_steps=max_steps,
                              arch=ck.arch, arch_kwargs=ck.arch_kwargs)
    try:
        _ = ck.model(test_data.x[:2].to(device))
    except Exception as e:
        raise UsageError(f"the network cannot take inputs of shape {tuple(test_data.x.shape[1:])} "
                         f"from {test_data.name}: {str(e).splitlines()[0]}") from None

    writer = RunWriter(out, ck.arch, ck.arch_kwargs, ck.sha256, "sparsify", data_name)
    state = None
    if resume:
        state, tensors = _resume_state(writer, ck.sha256)
        model.load_state_dict(tensors)
    else:
        writer.write_config(cfg.to_dict())
        writer.trace.create()
    if on_start:
        on_start(cfg, max_steps + cfg.settle_steps)

    sparse_names = sparse_parameters(cfg, model)

    def evaluate_row(net) -> dict:
        ev = evaluate(net, test_data, device=device)
        row = {"test_accuracy": ev.accuracy, "test_loss": ev.loss, "sparsity": sparsity_of(net, sparse_names)}
        row["train_accuracy"] = evaluate(net, train_eval, device=device).accuracy if train_eval else math.nan
        return row

    pcfg = PathConfig(
        step=StepConfig(beta=cfg.beta, step_size=step_size, cg_iters=cfg.cg_iters, cg_rtol=cfg.cg_rtol,
                        damping=cfg.damping, metric=cfg.metric, method=cfg.method, anchor=cfg.anchor),
        max_steps=max_steps, save_every=cfg.save_every, batch_size=cfg.batch_size,
        micro_batch=cfg.micro_batch, tol=cfg.tol, settle_steps=cfg.settle_steps, seed=cfg.seed,
    )
    model, final = walk(model, target, metric_data, pcfg, evaluate_row, writer, anchor=anchor, state=state,
                        device=device, on_row=on_row, bn_data=metric_data if has_batchnorm(model) else None)
    start = writer.trace.rows()[0]
    summary = {
        "job": "sparsify",
        "out": str(out),
        "final": "final.safetensors",
        "dense_test_accuracy": start["test_accuracy"],
        **{k: final[k] for k in ("step", "test_accuracy", "test_loss", "train_accuracy", "sparsity",
                                  "length", "sample_passes", "epochs", "wall_time")},
        "target": target.describe() if not isinstance(target, MagnitudeTarget) else
        {k: v for k, v in target.describe().items() if k != "parameters"},
        "min_accuracy": cfg.min_accuracy,
        "passed": cfg.min_accuracy is None or final["test_accuracy"] >= cfg.min_accuracy,
    }
    writer.finish(summary)
    return summary
