"""Pruning peers of ``sparsify``: one-shot magnitude pruning + fine-tuning, and iterative prune-and-retrain."""

from __future__ import annotations

from torch import nn

from geopath.core.dataset import Dataset
from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.core.targets import HyperplaneTarget, MagnitudeTarget, StructuredTarget
from geopath.core.train import TrainStats, train
from geopath.peers._budget import Record, record_every, train_steps
from geopath.peers.task import PeerTask


def prune_finetune(model: nn.Module, target: HyperplaneTarget, ds: Dataset, sample_passes: int,
                   batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu",
                   record: Record | None = None, records: int = 20) -> TrainStats:
    """One-shot projection onto ``target``, then masked SGD for ``sample_passes`` samples.

    ``sample_passes = 0`` is plain one-shot magnitude pruning. With ``record``, the
    dense start (step 0), the pruned network and about ``records`` networks along the
    fine-tuning are written, the last as ``final``.
    """
    space = ParamSpace.of(model)
    w0 = model_vector(model, space)
    d0 = target.distance(w0)
    if record:
        record(0, model, 0, t=0.0, distance=d0)
    load_vector(model, space, target.project(w0))
    steps = train_steps(sample_passes, batch_size)
    if steps == 0:
        if record:
            record(0, model, 0, t=1.0, distance=0.0, final=True)
        return TrainStats(0.0, 0, float("nan"))
    if record:
        record(0, model, 0, t=1.0, distance=0.0, name="step_00000_pruned")
    every = record_every(steps, records)

    def on_step(step, passes):
        if record and step % every == 0 and step < steps:
            record(step, model, passes, t=1.0, distance=0.0)

    stats = train(model, ds, epochs=sample_passes / len(ds), batch_size=batch_size, lr=lr, seed=seed,
                  mask=target.mask, device=device, max_passes=sample_passes, on_step=on_step)
    if record:
        record(steps, model, stats.sample_passes, t=1.0, distance=0.0, final=True)
    return stats


def iterative_prune(model: nn.Module, target: MagnitudeTarget | StructuredTarget, ds: Dataset, sample_passes: int,
                    rounds: int = 5, batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu",
                    record: Record | None = None, records: int = 20) -> HyperplaneTarget:
    """Iterative pruning with fine-tuning: ``rounds`` rounds, budget split evenly.

    Round ``r`` prunes by the *current* weights to ``target.stage(w, r / rounds)`` —
    unstructured: sparsity ``1 − (1 − s)^{r/R}`` of the same parameters and scope;
    structured: ``round(r/R × count)`` units of each layer, smallest norm first — and
    fine-tunes with the pruned weights held at zero, so the last round removes exactly
    as much as ``target``. Returns the final target (its mask is chosen along the way,
    not from the start).
    """
    space = ParamSpace.of(model)
    d0 = target.distance(model_vector(model, space))
    if record:
        record(0, model, 0, t=0.0, distance=d0)
    per_round = sample_passes // rounds
    steps_per_round = train_steps(per_round, batch_size)
    every = record_every(steps_per_round * rounds, records)
    done_steps, done_passes = 0, 0
    current = target
    for r in range(1, rounds + 1):
        current = target.stage(model_vector(model, space), r / rounds)
        load_vector(model, space, current.project(model_vector(model, space)))
        t_r = 1.0 - target.distance(model_vector(model, space)) / d0 if d0 else 1.0
        if record:
            record(done_steps, model, done_passes, t=t_r, distance=target.distance(model_vector(model, space)),
                   name=f"step_{done_steps:05d}_pruned{r}")
        if steps_per_round == 0:
            continue
        offset_steps, offset_passes = done_steps, done_passes

        def on_step(step, passes):
            if record and (offset_steps + step) % every == 0 and step < steps_per_round:
                record(offset_steps + step, model, offset_passes + passes, t=t_r,
                       distance=target.distance(model_vector(model, space)))

        stats = train(model, ds, epochs=per_round / len(ds), batch_size=batch_size, lr=lr, seed=seed + r,
                      mask=current.mask, device=device, max_passes=per_round, on_step=on_step)
        done_steps += steps_per_round
        done_passes += stats.sample_passes
    if record:
        record(done_steps, model, done_passes, t=1.0, distance=0.0, final=True)
    return current


def run_prune_finetune(task: PeerTask) -> None:
    """``--method prune-finetune``: ``--finetune-epochs`` of masked SGD after one-shot pruning."""
    o = task.options
    prune_finetune(task.model, task.target, task.data, task.passes(o.finetune_epochs), batch_size=o.batch_size,
                   lr=o.lr, seed=o.seed, device=task.device, record=task.record, records=task.records)


def run_iterative_prune(task: PeerTask) -> HyperplaneTarget:
    """``--method iterative-prune``: ``--rounds`` rounds sharing ``--finetune-epochs``; returns the masks reached."""
    o = task.options
    return iterative_prune(task.model, task.target, task.data, task.passes(o.finetune_epochs), rounds=o.rounds,
                           batch_size=o.batch_size, lr=o.lr, seed=o.seed, device=task.device, record=task.record,
                           records=task.records)
