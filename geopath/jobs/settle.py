"""Settling on a hyperplane by training: after a walk lands, masked SGD on the labels (``--settle
finetune``) or on the start network's outputs (``--settle distill``), recorded as the walk's trace goes on.

Shared by ``sparsify`` and by every leg of ``transition``.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from geopath.config import Settle
from geopath.core import distributed
from geopath.core.augment import augmentation
from geopath.core.dataset import Dataset, batches
from geopath.core.evaluate import evaluate, recompute_batchnorm
from geopath.core.path import in_one_go
from geopath.core.step import PASS_FORWARD
from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.core.targets import MagnitudeTarget, Target
from geopath.jobs.common import split_train

SETTLE_TEMPERATURE = 2.0  # --settle distill
SGD_STEPS_PER_STEP = 8  # a geodesic step costs about as many sample passes as 8 SGD steps (docs/method.md)
HELD_OUT_BATCH = 256
AUGMENT_SEED = 7919  # the views' generator is seeded apart from the batch order's (--seed)


def settle_by_training(cfg, model, target: Target, data, reference, result, recorder,
                       device, final_path: str = "final.safetensors", held: torch.Tensor | None = None,
                       grow_to: MagnitudeTarget | None = None) -> dict:
    """``--settle finetune|distill``: masked SGD (Adam with ``--settle-optimizer adam``) on the hyperplane from
    where the walk landed, for ``--settle-epochs`` of sample passes (a distillation step also pays the teacher's forward pass).
    Its networks continue the walk's trace (steps count SGD steps on from the landing), one every
    ``--save-every`` × 8 SGD steps (the passes of ``--save-every`` geodesic steps); the last is
    ``final_path`` (relative to the run). ``held`` are the weights kept at zero (default: the target's
    mask). Returns its trace row; ``result.state`` moves on by the SGD steps and their passes (a chain's
    next leg continues from there).

    With ``--settle-average F`` > 0 the settle ends on the mean of the weights after each of its last
    ``F × steps`` SGD steps (stochastic weight averaging, Izmailov et al. 2018; no extra passes, and the
    recorder re-estimates BatchNorm statistics for it as for every network).

    With ``grow_to`` (``--settle-prune``; ``target`` is then the sparser-kept hyperplane the walk landed on) the
    settle prunes on to ``grow_to``'s sparsity as gradual pruning does: the sparsity grows from ``target``'s on
    the cubic schedule over the first ``cfg.settle_prune_until`` of the SGD steps (as the run resolved it), the
    mask re-chosen by ``grow_to``'s ranking
    :data:`~geopath.peers.pruning.GRADUAL_UPDATES` times; ``grow_to.mask`` ends as the final mask.

    With ``--settle-holdout F`` > 0 the last fraction F of ``data`` is held out of the SGD; the settle's own
    loss on it (the distillation loss, or the cross-entropy with ``finetune``) is measured on the landed
    network and on every recorded one, and the final network is the one where it was lowest (early
    stopping; the forward passes this costs are counted).

    With ``--settle-augment flip|crop|crop-flip`` every SGD batch is replaced by random views of its images
    (:mod:`geopath.core.augment`; the distillation teacher sees the same views); held-out checks see the
    stored inputs."""
    with in_one_go(f"the --settle {cfg.settle.value} training (its optimizer's state is not saved)"):
        return _settle_by_training(cfg, model, target, data, reference, result, recorder, device, final_path, held,
                                   grow_to)


def _settle_by_training(cfg, model, target: Target, data, reference, result, recorder,
                        device, final_path: str, held: torch.Tensor | None, grow_to: MagnitudeTarget | None) -> dict:
    from geopath.core.train import train
    from geopath.peers.pruning import distillation_loss

    state = result.state
    loss_fn, per_sample = None, 1.0
    if cfg.settle is Settle.DISTILL:
        loss_fn, per_sample = distillation_loss(reference, SETTLE_TEMPERATURE), 1.0 + PASS_FORWARD
    budget = int(cfg.settle_epochs * len(data) / per_sample)
    steps = budget // cfg.batch_size
    every = max(1, cfg.save_every * SGD_STEPS_PER_STEP)  # --save-every, in geodesic steps' worth of passes
    tic = time.perf_counter() - state.wall_time
    row_state = {"landed_at": state.landed_at, "milestone": state.milestone, "landing_gap": state.landing_gap,
                 "retries": state.retries}
    holdout = cfg.settle_holdout
    train_data, held_out = data, None
    if holdout > 0 and steps:
        train_data, held_out = split_train(data, min(len(data) - 1, max(1, round(holdout * len(data)))))
    growth = {"done": grow_to is None}  # --settle-prune: whether the mask has reached grow_to's sparsity
    checks = {"passes": 0.0, "best": None}  # held-out forward passes spent; (loss, weights) of the best network

    def check(net: nn.Module) -> None:
        """The settle's loss on the held-out inputs (BatchNorm statistics as the recorder leaves them)."""
        if held_out is None or not growth["done"]:  # (a network still on its way to the sparsity cannot be final)
            return
        loss = _held_out_loss(net, held_out, loss_fn, device)
        checks["passes"] += len(held_out) * PASS_FORWARD * (2 if loss_fn is not None else 1)
        if checks["best"] is None or loss < checks["best"][0]:
            checks["best"] = (loss, {k: v.detach().clone() for k, v in net.state_dict().items()})

    def record(step: int, passes: float, path) -> dict:
        return recorder(state.step + step, model, path, t=1.0, distance=0.0, length=state.length,
                        sample_passes=state.sample_passes + passes * per_sample + checks["passes"],
                        clock=lambda: time.perf_counter() - tic, state=row_state)

    params = [p for p in model.parameters() if p.requires_grad]
    average = {"from": steps - int(cfg.settle_average * steps), "sum": None, "count": 0}  # --settle-average

    def on_step(step, passes):
        if step > average["from"]:
            with torch.no_grad():
                if average["sum"] is None:
                    average["sum"] = [p.detach().clone() for p in params]
                else:
                    for total, p in zip(average["sum"], params):
                        total.add_(p)
            average["count"] += 1
        if step % every == 0 and step < steps:
            record(step, passes, recorder.writer.step_path(state.step + step))
            check(model)

    check(model)  # the landed network, as recorded (its BatchNorm statistics re-estimated)
    passes = 0
    remask = None if grow_to is None else _growing(model, target, grow_to, steps, growth, cfg.settle_prune_until)
    if steps:
        passes = train(model, train_data, epochs=budget / len(train_data), batch_size=cfg.batch_size,
                       lr=cfg.settle_lr, optimizer=cfg.settle_optimizer.value, seed=cfg.seed,
                       mask=target.mask if held is None else held, device=device,
                       max_passes=budget, on_step=on_step, loss_fn=loss_fn, warmup=cfg.settle_warmup,
                       augment=augmentation(cfg.settle_augment, cfg.seed + AUGMENT_SEED),
                       remask=remask).sample_passes
    if average["count"]:  # the average of masked weights is masked too
        with torch.no_grad():
            for p, total in zip(params, average["sum"]):
                p.copy_(total / average["count"])
    if grow_to is not None:  # (the schedule ends at grow_to's sparsity, unless the settle took no step or averaged
        space = ParamSpace.of(model)  # over the growth: then this is where it ends)
        w = model_vector(model, space)
        grow_to.mask = grow_to.rechosen(w, grow_to.sparsity).mask
        load_vector(model, space, grow_to.project(w))
        growth["done"] = True
    if held_out is not None:
        if recorder.bn_data is not None:
            recompute_batchnorm(model, recorder.bn_data, device=device)
        check(model)
        model.load_state_dict(checks["best"][1])  # the network with the lowest held-out loss
    row = record(steps, passes, recorder.writer.out / final_path)
    state.step += steps
    state.sample_passes += passes * per_sample + checks["passes"]
    state.wall_time = time.perf_counter() - tic
    return row


def _growing(model: nn.Module, start: MagnitudeTarget, final: MagnitudeTarget, steps: int, done: dict,
             until: float):
    """``remask(step)`` for :func:`geopath.core.train.train`: gradual pruning from ``start``'s sparsity to
    ``final``'s over the first ``until`` of ``steps``, re-chosen at steps 0, Δ, 2Δ, … by ``final``'s ranking;
    each update is the schedule's value one interval ahead, so the last one (at or before that point) is
    ``final``'s sparsity; then ``done["done"]`` is set."""
    from geopath.peers.pruning import GRADUAL_UPDATES, cubic_sparsity

    space, comm = ParamSpace.of(model), distributed.current()
    ramp = max(1, int(steps * until))
    every = max(1, -(-ramp // GRADUAL_UPDATES))

    def remask(step: int) -> torch.Tensor | None:
        if step % every or step > ramp:
            return None
        s = start.sparsity + (final.sparsity - start.sparsity) * cubic_sparsity(1.0, (step + every) / ramp)
        mask = final.rechosen(model_vector(model, space), s).mask
        if comm.world > 1:  # rank 0's choice is every rank's (a weight at the threshold must not split the ranks)
            mask = comm.broadcast_(mask.to(torch.uint8)).bool()
        final.mask = mask
        if s >= final.sparsity:
            done["done"] = True
        return final.mask
    return remask


@torch.no_grad()
def _held_out_loss(net: nn.Module, ds: Dataset, loss_fn, device) -> float:
    """Mean ``loss_fn`` over ``ds`` in eval mode; without one, the cross-entropy :func:`evaluate` reports."""
    if loss_fn is None:
        return evaluate(net, ds, device=device).loss
    was_training = net.training
    net.eval()
    total = 0.0
    for x, y in batches(ds, HELD_OUT_BATCH):
        x, y = x.to(device), y.to(device)
        total += float(loss_fn(net(x), x, y)) * len(y)
    net.train(was_training)
    return total / len(ds)
