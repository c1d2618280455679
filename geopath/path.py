"""The path engine: step → (every K steps) write checkpoint → append trace row.

Job-agnostic: a job supplies the model, a :class:`~geopath.targets.Target`, the
metric inputs, an ``evaluate(model) -> dict`` callback and a
:class:`~geopath.rundir.RunWriter`. Metric batches are drawn from a generator
seeded by ``(seed, step)``, so a resumed run repeats exactly the steps an
uninterrupted one would have taken.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ._params import ParamSpace, load_vector, model_vector
from .data import Dataset
from .errors import NumericalError
from .evaluate import recompute_batchnorm
from .geodesic import PASS_FORWARD, Anchor, StepConfig, geodesic_step
from .rundir import RunWriter
from .targets import Target


@dataclass(frozen=True)
class PathConfig:
    step: StepConfig = field(default_factory=StepConfig)
    max_steps: int = 200
    save_every: int = 10
    batch_size: int = 256
    micro_batch: int | None = None
    tol: float = 0.01  # land (project) when distance ≤ tol · starting distance
    settle_steps: int = 0  # steps taken on the target after landing, restricted to it
    settle_step_size: float | None = None  # ε for those steps (default: the approach ε)
    seed: int = 0


@dataclass
class PathState:
    step: int = 0
    length: float = 0.0
    sample_passes: float = 0.0
    wall_time: float = 0.0
    landed_at: int | None = None  # step at which the path reached the target


def metric_batch(ds: Dataset, step: int, cfg: PathConfig, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The inputs (and labels) of step ``step``, split into micro-batches."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = torch.randperm(len(ds), generator=gen)[: cfg.batch_size]
    mb = cfg.micro_batch or cfg.batch_size
    return list(torch.split(ds.x[idx].to(device), mb)), list(torch.split(ds.y[idx].to(device), mb))


class Interrupted(Exception):
    """Raised between steps after SIGINT/SIGTERM; the run is left resumable."""


class _StopFlag:
    def __init__(self):
        self.hit = False
        self._old = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.hit:  # second signal: stop now
                raise KeyboardInterrupt
            self.hit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def walk(
    model: nn.Module,
    target: Target,
    metric_data: Dataset,
    cfg: PathConfig,
    evaluate: Callable[[nn.Module], dict],
    writer: RunWriter,
    anchor: nn.Module | None = None,
    state: PathState | None = None,
    device: str | torch.device = "cpu",
    on_row: Callable[[dict], None] | None = None,
    bn_data: Dataset | None = None,
) -> tuple[nn.Module, dict]:
    """Walk ``model`` to ``target``; returns the endpoint model and its trace row.

    ``anchor`` is the starting network (its outputs anchor the functional change);
    ``state`` continues a resumed run from a saved step.
    """
    space = ParamSpace.of(model)
    anchor = anchor if anchor is not None else copy.deepcopy(model)
    anchor.eval()
    w = model_vector(model, space).to(device)
    w0 = model_vector(anchor, space).to(device)
    d0 = target.distance(w0)
    state = state or PathState()
    tic = time.perf_counter() - state.wall_time

    def record(step: int, net: nn.Module, path, drift: float = 0.0) -> dict:
        vec = model_vector(net, space)
        dist = target.distance(vec)
        row = {
            "step": step,
            "t": 1.0 if d0 == 0 else max(0.0, 1.0 - dist / d0),
            "distance": dist,
            "length": state.length,
            "drift": drift,
            "sample_passes": state.sample_passes,
            "epochs": state.sample_passes / max(len(metric_data), 1),
            **evaluate(net),
            "wall_time": time.perf_counter() - tic,
            "landed_at": state.landed_at,
            "checkpoint": writer.save_network(path, net, step),
        }
        writer.trace.append(row)
        if on_row:
            on_row(row)
        return row

    if state.step == 0:
        record(0, model, writer.step_path(0))

    last_drift = 0.0
    landed_at = state.landed_at
    with _StopFlag() as stop:
        step = state.step
        while True:
            if landed_at is None:
                target.refresh(w)
                if target.distance(w) <= cfg.tol * d0 or step >= cfg.max_steps:
                    landed_at = step  # land: from here on the path stays on the target
                    w = target.project(w)
            if landed_at is not None and (step - landed_at >= cfg.settle_steps or target.free() is None):
                break
            if stop.hit:
                raise Interrupted(f"interrupted after step {step}")
            step += 1
            x, y = metric_batch(metric_data, step, cfg, device)
            z0 = None
            if cfg.step.anchor is Anchor.START:
                with torch.no_grad():
                    z0 = [anchor(xb) for xb in x]
            keep = target.free() if landed_at is not None else None
            step_cfg = cfg.step
            if landed_at is not None and cfg.settle_step_size:
                step_cfg = dataclasses.replace(step_cfg, step_size=cfg.settle_step_size)
            info = geodesic_step(model, space, w, x, target, step_cfg, anchor_logits=z0, keep=keep, labels=y)
            if not bool(torch.isfinite(info.theta).all()):
                raise NumericalError(f"step {step}: the solver produced a non-finite step (try a smaller --step-size)")
            w = w + info.theta
            last_drift = info.drift
            state.step, state.landed_at = step, landed_at
            state.length += info.metric_length
            state.sample_passes += info.sample_passes + (PASS_FORWARD * sum(len(b) for b in x) if z0 else 0.0)
            if step % cfg.save_every == 0:
                load_vector(model, space, w)
                record(step, model, writer.step_path(step), last_drift)
    # the endpoint: exactly on the target
    load_vector(model, space, target.project(w))
    if bn_data is not None:
        recompute_batchnorm(model, bn_data, device=device)
    state.step = step
    final = record(step, model, writer.out / "final.safetensors", last_drift)
    return model, final
