"""Pruning peers of ``sparsify``: one-shot pruning (by magnitude or by the metric's saliency) + fine-tuning,
iterative prune-and-retrain, gradual magnitude pruning, and pruning + distillation (no labels)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from geopath.core.dataset import Dataset
from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.core.targets import HyperplaneTarget, MagnitudeTarget, StructuredTarget
from geopath.core.train import TrainStats, train
from geopath.core.step import PASS_FORWARD
from geopath.peers._budget import Record, record_every, train_steps
from geopath.peers.task import PeerTask


def prune_finetune(model: nn.Module, target: HyperplaneTarget, ds: Dataset, sample_passes: int,
                   batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu",
                   record: Record | None = None, records: int = 20, optimizer: str = "sgd",
                   temperature: float | None = None, spent: int = 0) -> TrainStats:
    """One-shot projection onto ``target``, then masked training for ``sample_passes`` samples.

    ``sample_passes = 0`` is plain one-shot pruning. Training is on the labels (cross-entropy), or with
    ``temperature`` on the dense network's outputs alone: distillation, ``T²·KL(p_T(dense) ‖ p_T(w))``,
    whose teacher forward pass costs 1/3 of a sample pass (so it takes fewer steps for the same
    budget). ``spent`` passes (choosing the mask) are counted first. With ``record``, the dense start
    (step 0), the pruned network and about ``records`` networks along the fine-tuning are written,
    the last as ``final``.
    """
    space = ParamSpace.of(model)
    w0 = model_vector(model, space)
    d0 = target.distance(w0)
    if record:
        record(0, model, spent, t=0.0, distance=d0)
    teacher = loss_fn = None
    if temperature is not None:
        teacher = copy.deepcopy(model).to(device).eval()
        loss_fn = distillation_loss(teacher, temperature)
    load_vector(model, space, target.project(w0))
    per_sample = 1.0 + (PASS_FORWARD if teacher is not None else 0.0)
    budget = int(max(sample_passes - spent, 0) / per_sample)
    steps = train_steps(budget, batch_size)
    if steps == 0:
        if record:
            record(0, model, spent, t=1.0, distance=0.0, final=True)
        return TrainStats(0.0, 0, float("nan"))
    if record:
        record(0, model, spent, t=1.0, distance=0.0, name="step_00000_pruned")
    every = record_every(steps, records)

    def on_step(step, passes):
        if record and step % every == 0 and step < steps:
            record(step, model, spent + passes * per_sample, t=1.0, distance=0.0)

    stats = train(model, ds, epochs=budget / len(ds), batch_size=batch_size, lr=lr, seed=seed,
                  mask=target.mask, device=device, max_passes=budget, on_step=on_step, optimizer=optimizer,
                  loss_fn=loss_fn)
    if record:
        record(steps, model, spent + stats.sample_passes * per_sample, t=1.0, distance=0.0, final=True)
    return stats


def distillation_loss(teacher: nn.Module, temperature: float):
    """``loss(logits, x, y) = T²·KL(softmax(teacher(x)/T) ‖ softmax(logits/T))``, batch mean; ``y`` unused."""
    def loss(logits, x, y):
        with torch.no_grad():
            t = torch.log_softmax(teacher(x) / temperature, -1)
        s = torch.log_softmax(logits / temperature, -1)
        return temperature ** 2 * nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")

    return loss


def cubic_sparsity(final: float, progress: float) -> float:
    """Zhu & Gupta's schedule: ``s_f (1 − (1 − progress)³)`` for ``progress`` in [0, 1] (then ``s_f``)."""
    p = min(max(progress, 0.0), 1.0)
    return final * (1.0 - (1.0 - p) ** 3)


GRADUAL_UPDATES = 40  # mask updates along the schedule


def gradual_prune(model: nn.Module, target: MagnitudeTarget | StructuredTarget, ds: Dataset, sample_passes: int,
                  prune_until: float = 0.75, batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu",
                  record: Record | None = None, records: int = 20, optimizer: str = "sgd") -> HyperplaneTarget:
    """Gradual magnitude pruning (Zhu & Gupta 2018) within one training run of ``sample_passes``.

    Over the first ``prune_until`` of the steps the sparsity grows on the cubic schedule
    (:func:`cubic_sparsity`), the mask re-chosen by the current magnitudes :data:`GRADUAL_UPDATES`
    times (structured: that fraction of each layer's units); the rest of the run trains at the
    target's sparsity. Pruned weights are zero, hence the smallest, so the masks are nested.
    Returns the final target (its mask is chosen along the way).
    """
    space = ParamSpace.of(model)
    d0 = target.distance(model_vector(model, space))
    if record:
        record(0, model, 0, t=0.0, distance=d0)
    steps = train_steps(sample_passes, batch_size)
    ramp = min(max(1, int(round(prune_until * steps))), max(steps, 1))
    every_update = max(1, -(-ramp // GRADUAL_UPDATES))

    def remask(step):  # at steps 0, Δ, 2Δ, … until the schedule reaches the target's sparsity
        if step % every_update or step > ramp + every_update - 1:
            return None
        fraction = cubic_sparsity(1.0, step / ramp)
        return _stage_at(target, model_vector(model, space), fraction).mask

    every = record_every(steps, records)

    def on_step(step, passes):
        if record and step % every == 0 and step < steps:
            w = model_vector(model, space)
            record(step, model, passes, t=1.0 - target.distance(w) / d0 if d0 else 1.0, distance=target.distance(w))

    stats = train(model, ds, epochs=sample_passes / len(ds), batch_size=batch_size, lr=lr, seed=seed, device=device,
                  max_passes=sample_passes, on_step=on_step, optimizer=optimizer, remask=remask)
    final = target.stage(model_vector(model, space), 1.0)
    load_vector(model, space, final.project(model_vector(model, space)))
    if record:
        record(steps, model, stats.sample_passes, t=1.0, distance=0.0, final=True)
    return final


def _stage_at(target, w: torch.Tensor, fraction: float):
    """``target`` re-chosen at ``w`` with ``fraction`` of its removals: unstructured, sparsity ``fraction·s``
    (:meth:`MagnitudeTarget.stage` is geometric in ``fraction``); structured, that fraction of each layer's units."""
    if fraction < 1.0 and isinstance(target, MagnitudeTarget):
        return target.rechosen(w, fraction * target.sparsity)
    return target.stage(w, fraction)


def iterative_prune(model: nn.Module, target: MagnitudeTarget | StructuredTarget, ds: Dataset, sample_passes: int,
                    rounds: int = 5, batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu",
                    record: Record | None = None, records: int = 20, optimizer: str = "sgd") -> HyperplaneTarget:
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
    total_steps = train_steps(sample_passes, batch_size)  # (split by steps: flooring each round's passes lost up
    every = record_every(total_steps, records)            # to a batch a round)
    done_steps, done_passes = 0, 0
    current = target
    for r in range(1, rounds + 1):
        steps_per_round = total_steps // rounds + (1 if r > rounds - total_steps % rounds else 0)
        per_round = steps_per_round * batch_size
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
                      mask=current.mask, device=device, max_passes=per_round, on_step=on_step, optimizer=optimizer)
        done_steps += steps_per_round
        done_passes += stats.sample_passes
    if record:
        record(done_steps, model, done_passes, t=1.0, distance=0.0, final=True)
    return current


def _training(task: PeerTask) -> dict:
    o = task.options
    return dict(batch_size=o.batch_size, lr=o.lr, seed=o.seed, device=task.device, record=task.record,
                records=task.records, optimizer=getattr(o.optimizer, "value", o.optimizer))


def run_prune_finetune(task: PeerTask) -> None:
    """``--method prune-finetune`` and ``--method obd`` (the job ranked the weights by saliency): ``--finetune-epochs``
    of masked training after one-shot pruning; the passes the job spent ranking the weights count first."""
    prune_finetune(task.model, task.target, task.data, task.passes(task.options.finetune_epochs), spent=task.spent,
                   **_training(task))


def run_distill(task: PeerTask) -> None:
    """``--method distill``: one-shot pruning, then ``--finetune-epochs`` of distillation (labels unused)."""
    prune_finetune(task.model, task.target, task.data, task.passes(task.options.finetune_epochs),
                   temperature=task.options.temperature, spent=task.spent, **_training(task))


def run_gradual(task: PeerTask) -> HyperplaneTarget:
    """``--method gradual``: ``--finetune-epochs`` of training while the sparsity grows; returns the masks reached."""
    return gradual_prune(task.model, task.target, task.data, task.passes(task.options.finetune_epochs),
                         prune_until=task.options.prune_until, **_training(task))


def run_iterative_prune(task: PeerTask) -> HyperplaneTarget:
    """``--method iterative-prune``: ``--rounds`` rounds sharing ``--finetune-epochs``; returns the masks reached."""
    o = task.options
    return iterative_prune(task.model, task.target, task.data, task.passes(o.finetune_epochs), rounds=o.rounds,
                           **_training(task))
