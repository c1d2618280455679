"""Peer methods: what a user would otherwise pick, on the same data and budget as a path.

Each peer reports through a ``record(step, model, sample_passes, t=..., ...)``
callable (:class:`geopath.jobs.common.Recorder`), so its run directory has the same
checkpoints and trace format as a geodesic run and the two compare row for row.
Budgets are forward+backward *sample passes* (docs/method.md).

sparsify
    :func:`prune_finetune` — one-shot magnitude pruning, then masked SGD;
    :func:`iterative_prune` — prune a little, fine-tune, repeat (iterative prune-and-retrain).
merge
    :func:`interpolate` (weight averaging over α); :func:`fisher_merge` — Fisher-weighted
    averaging (Matena & Raffel, 2022); :func:`ewc` — elastic weight consolidation
    (Kirkpatrick et al., 2017): train A on task B with ``½λ Σ F_A (w − w_A)²``.
connect
    :func:`interpolate` (linear path); :func:`bezier` — a quadratic Bezier curve
    whose middle point is trained (Garipov et al., 2018).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from geopath.core import distributed
from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.core.dataset import Dataset, batches
from geopath.core.targets import HyperplaneTarget, MagnitudeTarget, StructuredTarget
from geopath.core.train import TrainStats, sharded_backward, train

Record = Callable[..., dict]


def _every(total_steps: int, records: int) -> int:
    return max(1, total_steps // max(records, 1))


def _train_steps(passes: int, batch_size: int) -> int:
    """SGD steps :func:`geopath.core.train.train` takes for a budget of ``passes`` samples."""
    return int(passes) // batch_size


# --------------------------------------------------------------------------- sparsify


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
    steps = _train_steps(sample_passes, batch_size)
    if steps == 0:
        if record:
            record(0, model, 0, t=1.0, distance=0.0, final=True)
        return TrainStats(0.0, 0, float("nan"))
    if record:
        record(0, model, 0, t=1.0, distance=0.0, name="step_00000_pruned")
    every = _every(steps, records)

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
    steps_per_round = _train_steps(per_round, batch_size)
    every = _every(steps_per_round * rounds, records)
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


# --------------------------------------------------------------------------- merge and connect


def interpolate(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, alphas: Sequence[float], record: Record,
                passes: float = 0.0) -> None:
    """Record ``(1 − α) w_A + α w_B`` for each α (weight averaging; the linear path)."""
    space = ParamSpace.of(model)
    for i, a in enumerate(alphas):
        load_vector(model, space, (1.0 - a) * w_a + a * w_b)
        record(i, model, passes, t=float(a), distance=float((1.0 - a) * torch.linalg.vector_norm(w_b - w_a)),
               alpha=float(a), final=i == len(alphas) - 1)


def fisher_diag(model: nn.Module, ds: Dataset, samples: int = 2000, chunk: int = 64, seed: int = 0,
                device="cpu") -> torch.Tensor:
    """Diagonal Fisher ``E_x E_{y~p(y|x)} (∂ log p(y|x)/∂w)²`` as a flat vector.

    Labels are sampled from the model's own predictive distribution (the true Fisher,
    not the empirical one); per-sample gradients come from ``vmap(grad(...))``.
    Costs one forward+backward pass per sample. Under ``torchrun`` every rank draws the
    same labels and computes the per-sample gradients of its shard; the sums are all-reduced.
    """
    space = ParamSpace.of(model)
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if n in space.names}
    buffers = {n: b for n, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=gen)[:samples]

    def nll(p, x, y):
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(nll), in_dims=(None, 0, 0))
    total = torch.zeros(space.n, dtype=next(iter(params.values())).dtype, device=device)
    comm = distributed.current()
    for i in range(0, len(idx), chunk):
        x = ds.x[idx[i:i + chunk]].to(device)
        with torch.no_grad():
            probs = torch.softmax(model(x), -1)
        y = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(device)
        mine = comm.shard(len(x))  # under torchrun: this rank's per-sample gradients only
        x, y = x[mine], y[mine]
        if len(y):
            g = per_sample(params, x, y)
            total += torch.cat([g[n].reshape(len(y), -1) for n in space.names], dim=1).pow(2).sum(0)
    return comm.sum_(total) / max(len(idx), 1)


def fisher_merge(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, f_a: torch.Tensor, f_b: torch.Tensor,
                 alphas: Sequence[float], record: Record, passes: float = 0.0) -> None:
    """Record the Fisher-weighted average ``((1−α)F_A w_A + αF_B w_B) / ((1−α)F_A + αF_B)`` for each α.

    A tiny floor (1e-8 of the mean Fisher) keeps coordinates no task cares about at
    the plain average; α = 0 and α = 1 give A and B exactly.
    """
    space = ParamSpace.of(model)
    floor = 1e-8 * float((f_a + f_b).mean()) + 1e-30
    fa, fb = f_a + floor, f_b + floor
    for i, a in enumerate(alphas):
        if a <= 0.0:
            w = w_a
        elif a >= 1.0:
            w = w_b
        else:
            w = ((1.0 - a) * fa * w_a + a * fb * w_b) / ((1.0 - a) * fa + a * fb)
        load_vector(model, space, w)
        record(i, model, passes, t=float(a), distance=float(torch.linalg.vector_norm(w_b - w)), alpha=float(a),
               final=i == len(alphas) - 1)


def ewc(model: nn.Module, w_a: torch.Tensor, f_a: torch.Tensor, ds_b: Dataset, sample_passes: int, lam: float,
        w_b: torch.Tensor | None = None, batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu",
        record: Record | None = None, records: int = 20, passes_before: float = 0.0) -> TrainStats:
    """Train A on task B with the penalty ``½λ Σ F_A (w − w_A)²``; record along the way."""
    space = ParamSpace.of(model)
    anchor_w, fisher = w_a.to(device), f_a.to(device)
    params = [dict(model.named_parameters())[n] for n in space.names]

    def distance() -> float:
        return math.nan if w_b is None else float(torch.linalg.vector_norm(model_vector(model, space) - w_b))

    def penalty():
        w = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * lam * (fisher * (w - anchor_w).pow(2)).sum()

    if record:
        record(0, model, passes_before, t=0.0, distance=distance())
    steps = _train_steps(sample_passes, batch_size)
    every = _every(steps, records)

    def on_step(step, passes):
        if record and step % every == 0 and step < steps:
            record(step, model, passes_before + passes, t=step / steps, distance=distance())

    stats = train(model, ds_b, epochs=sample_passes / len(ds_b), batch_size=batch_size, lr=lr, seed=seed,
                  device=device, max_passes=sample_passes, on_step=on_step, penalty=penalty)
    if record:
        record(steps, model, passes_before + stats.sample_passes, t=1.0, distance=distance(), final=True)
    return stats


def bezier_point(w_a: torch.Tensor, theta: torch.Tensor, w_b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """``(1−t)² w_A + 2t(1−t) θ + t² w_B``."""
    return (1 - t) ** 2 * w_a + 2 * t * (1 - t) * theta + t ** 2 * w_b


def bezier(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, ds: Dataset, sample_passes: int,
           batch_size: int = 128, lr: float = 0.05, seed: int = 0, device="cpu") -> torch.Tensor:
    """Train the middle point ``θ`` of a quadratic Bezier curve from A to B; returns ``θ``.

    Each batch draws ``t ~ U(0, 1)`` and takes an SGD step (momentum 0.9, cosine decay)
    on the cross-entropy of the network at ``bezier_point(t)``; ``θ`` starts at the
    midpoint of A and B. BatchNorm runs in train mode (batch statistics); evaluate
    points of the curve after re-estimating running statistics. Under ``torchrun`` the
    steps are data-parallel (:func:`geopath.core.train.sharded_backward`).
    """
    space = ParamSpace.of(model)
    w_a, w_b = w_a.to(device), w_b.to(device)
    theta = (0.5 * (w_a + w_b)).clone().requires_grad_(True)
    buffers = {n: b for n, b in model.named_buffers()}
    opt = torch.optim.SGD([theta], lr=lr, momentum=0.9)
    steps = int(sample_passes) // batch_size
    if steps == 0:
        return theta.detach()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    comm = distributed.current()
    done = 0
    while done < steps:
        for x, y in batches(ds, batch_size, generator=gen, shuffle=True):
            if done >= steps:
                break
            t = float(torch.rand((), generator=gen))
            w = bezier_point(w_a, theta, w_b, t)
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            if comm.world == 1:
                logits = functional_call(model, (space.unflatten(w), buffers), (x,))
                nn.functional.cross_entropy(logits, y).backward()
            else:  # data-parallel: this rank's shard of the batch, gradients all-reduced

                def shard_loss(s, w=w, x=x, y=y):
                    if not len(y[s]):
                        return None
                    logits = functional_call(model, (space.unflatten(w), buffers), (x[s],))
                    return nn.functional.cross_entropy(logits, y[s], reduction="sum")

                sharded_backward(shard_loss, len(y), [theta], buffers.values(), comm)
            opt.step()
            sched.step()
            done += 1
    model.eval()
    return theta.detach()
