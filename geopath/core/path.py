"""The path engine: step → (every K steps) write checkpoint → append trace row.

Job-agnostic: a job supplies the model, a :class:`~geopath.core.targets.Target`, one or
more :class:`MetricSource` (the inputs whose function the path keeps, each with
the reference network whose outputs anchor it) and a :class:`~geopath.core.record.Recorder`
(how a network is evaluated and written: the engine opens no file itself). Metric batches are drawn from a generator
seeded by ``(seed, step, source)``, so a resumed run repeats exactly the steps an
uninterrupted one would have taken.

Every trace row carries the engine's state (step, length, passes, wall time,
landing step, milestone), so :meth:`PathState.from_row` resumes any job from
any row that has a checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from geopath.core import distributed
from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.core.dataset import Dataset
from geopath.errors import NumericalError
from geopath.core.record import Recorder
from geopath.core.step import PASS_FORWARD, Anchor, MetricBatch, StepConfig, geodesic_step, step_fault
from geopath.core.metric import metric_mode
from geopath.core.targets import Target
from geopath.core.choices import Combine


@dataclass
class MetricSource:
    """Inputs whose function the path keeps, and the reference network whose outputs anchor them."""

    data: Dataset
    reference: nn.Module | None = None  # None: the walk's reference (the starting network)
    name: str = "a"
    weight: float = 1.0


@dataclass(frozen=True)
class PathConfig:
    step: StepConfig = field(default_factory=StepConfig)
    max_steps: int = 200
    save_every: int = 10
    batch_size: int = 256
    micro_batch: int | None = None
    tol: float = 0.01  # reach the target when distance ≤ tol · starting distance
    land: bool = True  # on reaching it (or at max_steps) project onto the target; False: stop where the path is
    settle_steps: int = 0  # steps taken on the target after landing, restricted to it
    combine: Combine = Combine.SUM
    milestones: int = 0  # also record when progress t first reaches k/milestones (k = 1..milestones-1)
    beta_growth: float = 1.0  # after step grow_after, β grows by this factor every grow_every approach steps
    grow_after: int = 0
    grow_every: int = 1
    settle_anchor: Anchor | None = None  # the anchor of the steps on the target (None: the approach's)
    seed: int = 0

    def __post_init__(self):  # accept plain strings from library callers
        object.__setattr__(self, "combine", Combine(self.combine))
        if self.settle_anchor is not None:
            object.__setattr__(self, "settle_anchor", Anchor(self.settle_anchor))


@dataclass
class PathState:
    step: int = 0
    length: float = 0.0
    sample_passes: float = 0.0
    wall_time: float = 0.0
    landed_at: int | None = None  # step at which the path reached the target
    milestone: int = 0  # last milestone recorded
    landing_gap: float | None = None  # distance to the target when the approach ended
    retries: int = 0  # steps solved again with a smaller radius after a numerical fault

    @classmethod
    def from_row(cls, row: dict) -> "PathState":
        return cls(step=int(row["step"]), length=float(row["length"]), sample_passes=float(row["sample_passes"]),
                   wall_time=float(row["wall_time"]), landed_at=row.get("landed_at"),
                   milestone=int(row.get("milestone") or 0), landing_gap=row.get("landing_gap"),
                   retries=int(row.get("retries") or 0))


@dataclass
class WalkResult:
    model: nn.Module
    final: dict  # the endpoint's trace row
    state: PathState
    d0: float  # distance from the start to the target
    approach_end: torch.Tensor | None = None  # where the approach ended, before landing projected it

    @property
    def landing_gap(self) -> float:
        """Distance to the target when the approach ended (the jump a landing made)."""
        return float(self.state.landing_gap or 0.0)


def micro_batches(t: torch.Tensor, micro_batch: int | None) -> list[torch.Tensor]:
    """``t`` split along its first dimension into ⌈n / micro_batch⌉ micro-batches of near-equal size (no short last
    one: with BatchNorm's batch statistics one input alone has no variance); whole where ``micro_batch`` is None.
    Inputs and their labels split alike."""
    k = 1 if micro_batch is None else max(1, -(-len(t) // micro_batch))
    return list(torch.tensor_split(t, k))


def metric_batch(ds: Dataset, step: int, cfg: PathConfig, device, source: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The inputs (and labels) of step ``step`` from source ``source``, in :func:`micro_batches`."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 7_919 * source)
    idx = torch.randperm(len(ds), generator=gen)[: cfg.batch_size]
    idx = idx[distributed.current().shard(len(idx))]  # under torchrun: this rank's share of the batch
    return micro_batches(ds.x[idx].to(device), cfg.micro_batch), micro_batches(ds.y[idx].to(device), cfg.micro_batch)


class Interrupted(Exception):
    """Raised between steps after SIGINT/SIGTERM; the run is left resumable (``resumable`` False: raised by
    :func:`in_one_go`, where nothing is left that ``--resume`` continues)."""

    def __init__(self, message: str = "interrupted", resumable: bool = True, ended: bool = False):
        super().__init__(message)
        self.resumable, self.ended = resumable, ended  # (ended: the walk had finished, its last network written)


@contextmanager
def walk_before(what: str, trains: bool = True):
    """Around a walk that ``what`` (training in one go) follows where ``trains``: an interruption as the walk ended
    leaves a landed run that ``--resume`` cannot take up (the training restarts from nothing)."""
    try:
        yield
    except Interrupted as e:
        if trains and e.ended:
            raise Interrupted(f"interrupted as the walk landed, before {what}, which --resume cannot continue",
                              resumable=False) from None
        raise


@contextmanager
def in_one_go(what: str):
    """Around what trains in one go (a training settle, a peer, connect's relaxation): an interruption there is
    an :class:`Interrupted` that says so, not resumable."""
    try:
        yield
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(f"interrupted in {what}, which --resume cannot continue", resumable=False) from None


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

    def __exit__(self, exc_type, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self.hit and exc_type is None:  # a signal after the last step must not be swallowed
            raise Interrupted("interrupted as the walk ended", ended=True)


def _step_batches(sources: list[MetricSource], step: int, cfg: PathConfig, device,
                  anchor: Anchor | None = None) -> tuple[list[MetricBatch], float]:
    """The metric batches of one step and the forward passes spent on reference outputs."""
    chosen = list(enumerate(sources))
    if cfg.combine is Combine.ALTERNATE:
        chosen = [chosen[(step - 1) % len(chosen)]]
    out, passes = [], 0.0
    for i, src in chosen:
        x, y = metric_batch(src.data, step, cfg, device, source=i)
        z0 = None
        if (anchor or cfg.step.anchor).keeps_reference:
            with torch.no_grad(), metric_mode(src.reference, cfg.step.bn_stats):  # the metric's function
                z0 = [src.reference(xb) for xb in x]
            passes += PASS_FORWARD * min(cfg.batch_size, len(src.data))  # the whole batch, over all ranks
        out.append(MetricBatch(x, z0, y, src.weight))
    return out, passes


SHRINKS = 4  # a faulty step is solved again with radius /2, /4, /8, /16 before giving up


def _safe_step(model, space, w, batches, target, cfg: StepConfig, free, step: int, state: PathState):
    """One step, solved again with a smaller trust radius after a numerical fault.

    Faults: the solver breaks down (non-finite curvature), the step is not finite, or it
    changes the function far more than its local model allows (:func:`step_fault`).
    Returns the accepted step and the sample passes of every attempt.
    """
    passes, comm = 0.0, distributed.current()
    for attempt in range(SHRINKS + 1):
        try:
            info = geodesic_step(model, space, w, batches, target, cfg, free=free)
            passes += info.sample_passes
            reason = step_fault(model, space, w, info, cfg.metric, cfg.bn_stats)
        except FloatingPointError as e:
            info, reason = None, str(e)
        if not comm.broadcast_flag(reason is not None):  # rank 0's check decides for all ranks
            if info is None:
                raise NumericalError(f"step {step}: rank {comm.rank}: {reason}")
            comm.broadcast_(info.theta)  # and its step is everyone's: the ranks never drift apart
            return info, passes
        reason = reason or "rank 0 found a numerical fault in the step"
        if attempt < SHRINKS:
            state.retries += 1
            cfg = dataclasses.replace(cfg, step_size=cfg.step_size / 4.0)
    raise NumericalError(f"step {step}: {reason}, also with a {2 ** SHRINKS}× smaller radius; nothing was "
                         "written for it (start again with a smaller --step-size)")


def walk(
    model: nn.Module,
    target: Target,
    sources: Dataset | list[MetricSource],
    cfg: PathConfig,
    recorder: Recorder,
    *,
    reference: nn.Module | None = None,
    state: PathState | None = None,
    device: str | torch.device = "cpu",
    free: torch.Tensor | None = None,
    before_step: Callable[[torch.Tensor, float], None] | None = None,
    record_start: bool | None = None,
    origin: torch.Tensor | None = None,
    final_path: str = "final.safetensors",
) -> WalkResult:
    """Walk ``model`` to ``target``; returns the endpoint model, its trace row and the state.

    Every ``cfg.save_every``-th network goes through ``recorder`` (:class:`~geopath.core.record.Recorder`:
    evaluated, saved, a trace row; its ``epoch_size``, when not set, is the sources' inputs together).
    ``reference`` is the network whose outputs anchor the functional change on sources that name no
    reference of their own (default: a copy of the starting ``model``); ``state`` continues a resumed
    run or the previous leg of a chain. ``free`` (bool) marks the coordinates that may move before
    landing (default: all; on the target, the target's own :meth:`~Target.free`). ``before_step(w, t)``
    is called before each step with the current weights and progress ``t = 1 − distance/d0``
    (references that depend on progress update themselves there). A step-0 row is written when
    ``record_start`` (default: when no ``state`` is given). Progress is measured from ``origin``
    (default: the reference's weights); a leg of a chain passes the point where the leg began. The
    endpoint is saved as ``final_path`` (relative to the run). ``model`` and the references are moved
    to ``device`` in place.
    """
    space = ParamSpace.of(model)
    model.to(device)
    reference = reference.to(device) if reference is not None else copy.deepcopy(model)
    reference.eval()
    if isinstance(sources, Dataset):
        sources = [MetricSource(sources)]
    sources = [dataclasses.replace(s, reference=s.reference if s.reference is not None else reference)
               for s in sources]
    for s in sources:
        s.reference.to(device).eval()
    if recorder.epoch_size is None:
        recorder = recorder.replace(epoch_size=max(sum(len(s.data) for s in sources), 1))
    writer = recorder.writer
    w = model_vector(model, space).to(device)
    d0 = target.distance((origin if origin is not None else model_vector(reference, space)).to(device))
    record_start = state is None if record_start is None else record_start
    state = dataclasses.replace(state) if state is not None else PathState()
    tic = time.perf_counter() - state.wall_time

    def _clock() -> float:
        state.wall_time = time.perf_counter() - tic
        return state.wall_time

    def progress(vec: torch.Tensor) -> float:
        return 1.0 if d0 == 0 else max(0.0, 1.0 - target.distance(vec) / d0)

    def record(step: int, net: nn.Module, path, drift: float = 0.0) -> dict:
        vec = model_vector(net, space)
        free = target.free() if cfg.land and state.landed_at is not None else None
        if free is not None:  # on the target, the coordinates it frees (a transition's restored units) are not
            vec = torch.where(free.to(vec.device), target.project(vec), vec)  # off it, whatever they settle to
        return recorder(step, net, path, t=progress(vec), distance=target.distance(vec), length=state.length,
                        drift=drift, sample_passes=state.sample_passes, clock=_clock, state={
                            "landed_at": state.landed_at, "milestone": state.milestone,
                            "landing_gap": state.landing_gap, "retries": state.retries})

    if record_start:
        record(state.step, model, writer.step_path(state.step))

    last_drift = 0.0
    landed_at = state.landed_at
    approach_end = None
    with _StopFlag() as stop:
        step = state.step
        while True:
            if landed_at is None:
                target.refresh(w)
                dist = target.distance(w)
                if dist <= cfg.tol * d0 or step >= cfg.max_steps:
                    landed_at = step  # land: from here on the path stays on the target
                    state.landing_gap = dist
                    approach_end = w.clone()
                    if cfg.land:
                        w = target.project(w)
            if landed_at is not None and (not cfg.land or step - landed_at >= cfg.settle_steps
                                          or target.free() is None):
                break
            if stop.hit:
                raise Interrupted(f"interrupted after step {step}")
            step += 1
            if before_step is not None:
                before_step(w, progress(w))
            step_cfg = cfg.step
            if landed_at is not None and cfg.settle_anchor is not None:
                step_cfg = dataclasses.replace(step_cfg, anchor=cfg.settle_anchor)
            batches, reference_passes = _step_batches(sources, step, cfg, device, step_cfg.anchor)
            step_free = target.free() if landed_at is not None else free
            if landed_at is None and cfg.beta_growth != 1.0:
                over = max(0.0, (step - cfg.grow_after) / cfg.grow_every)
                step_cfg = dataclasses.replace(step_cfg, beta=step_cfg.beta * cfg.beta_growth ** over)
            info, passes = _safe_step(model, space, w, batches, target, step_cfg, step_free, step, state)
            w = w + info.theta
            last_drift = info.drift
            state.step, state.landed_at = step, landed_at
            state.length += info.metric_length
            state.sample_passes += passes + reference_passes
            due = step % cfg.save_every == 0
            if cfg.milestones > 1 and landed_at is None:
                k = int(progress(w) * cfg.milestones + 1e-9)
                if state.milestone < k < cfg.milestones:
                    state.milestone = k
                    due = True
            if due:
                load_vector(model, space, w)
                record(step, model, writer.step_path(step), last_drift)
    # the endpoint: on the target when landing (coordinates the target frees keep their settled
    # values), else where the path stopped
    if cfg.land:
        free = target.free()
        w = target.project(w) if free is None else torch.where(free.to(w.device), w, target.project(w))
    load_vector(model, space, w)
    state.step, state.landed_at = step, landed_at
    if cfg.milestones > 1:
        state.milestone = cfg.milestones
    final = record(step, model, writer.out / final_path, last_drift)
    return WalkResult(model, final, state, d0, approach_end)
