"""Settling on a hyperplane by training: after a walk lands, masked SGD on the labels (``--settle
finetune``) or on the start network's outputs (``--settle distill``), recorded as the walk's trace goes on.

Shared by ``sparsify`` and by every leg of ``transition``.
"""

from __future__ import annotations

import time

import torch

from geopath.config import Settle
from geopath.core.step import PASS_FORWARD
from geopath.core.targets import Target

SETTLE_TEMPERATURE = 2.0  # --settle distill
SGD_STEPS_PER_STEP = 8  # a geodesic step costs about as many sample passes as 8 SGD steps (docs/method.md)


def settle_by_training(cfg, model, target: Target, data, reference, result, recorder,
                       device, final_path: str = "final.safetensors", held: torch.Tensor | None = None) -> dict:
    """``--settle finetune|distill``: masked SGD on the hyperplane from where the walk landed, for
    ``--settle-epochs`` of sample passes (a distillation step also pays the teacher's forward pass).
    Its networks continue the walk's trace (steps count SGD steps on from the landing), one every
    ``--save-every`` × 8 SGD steps (the passes of ``--save-every`` geodesic steps); the last is
    ``final_path`` (relative to the run). ``held`` are the weights kept at zero (default: the target's
    mask). Returns its trace row; ``result.state`` moves on by the SGD steps and their passes (a chain's
    next leg continues from there)."""
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

    def record(step: int, passes: float, path) -> dict:
        return recorder(state.step + step, model, path, t=1.0, distance=0.0, length=state.length,
                        sample_passes=state.sample_passes + passes * per_sample,
                        clock=lambda: time.perf_counter() - tic, state=row_state)

    def on_step(step, passes):
        if step % every == 0 and step < steps:
            record(step, passes, recorder.writer.step_path(state.step + step))

    passes = 0
    if steps:
        passes = train(model, data, epochs=budget / len(data), batch_size=cfg.batch_size, lr=cfg.settle_lr,
                       seed=cfg.seed, mask=target.mask if held is None else held, device=device, max_passes=budget,
                       on_step=on_step, loss_fn=loss_fn, warmup=cfg.settle_warmup).sample_passes
    row = record(steps, passes, recorder.writer.out / final_path)
    state.step += steps
    state.sample_passes += passes * per_sample
    state.wall_time = time.perf_counter() - tic
    return row
